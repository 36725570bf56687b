"""``captioner export CHECKPOINT``: write and check the graphs the torch-free runtime serves."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DESCRIPTION = """\
Export a checkpoint's graphs into CHECKPOINT/graphs: the encoder (fp32, and int8 when the
checkpoint has calibration images and the int8 graph passes its gate), the decoder's start
and step, and the ImageNet label head, with a manifest of digests, opset and tool versions.
Each graph is run against PyTorch on fixed inputs and is not written if it disagrees.
Serving (`captioner serve`, `caption`, `explain`, `info`) then needs no PyTorch.
Training writes them at its end; run this after changing a checkpoint's files by hand.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``export`` verb."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint's ONNX graphs (encoder, int8 encoder, decoder step, labels) for serving",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="checkpoint folder (its graphs/ is replaced)")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from ..runtime.graphs import MANIFEST
    from .export import export_graphs

    start = time.monotonic()
    folder = export_graphs(Path(args.checkpoint))
    manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    for name, facts in manifest["files"].items():
        print(f"{folder / name}  {facts['bytes'] / 2**20:.1f} MB")
    reason = manifest["int8"].get("reason")
    if reason:
        print(f"no int8 encoder: {reason}", file=sys.stderr)
    print(f"exported and checked in {time.monotonic() - start:.1f} s", file=sys.stderr)
    return 0
