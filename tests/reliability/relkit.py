"""Helpers of the reliability tests: a small checkpoint and a real server in a subprocess.

* :func:`build_checkpoint` - the real pretrained EfficientNet-Lite0 encoder with a small random
  LSTM decoder and a ten-word vocabulary, saved with ``ReferenceCaptioner.save`` and its graphs
  exported (no training: the tests check that nothing breaks, not what the captions say).
* :func:`launch_server` / :func:`wait_ready` - ``captioner serve`` in a subprocess on a loopback port it picks itself,
  with an API key and small limits (queue of 16 images, 4 files and 4 MiB per request,
  16 megapixels per image), so the limits are reached quickly. ``Server.rss_kb()``
  reads the server's resident memory from /proc.

The fixtures that use them are in conftest.py; bench/overload.py uses them too.
"""

from __future__ import annotations

import io
import os
import pickle
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent):  # hostile.py here, serverkit.py in tests/ (bench/ imports this file too)
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

import serverkit  # noqa: E402
from hostile import MAX_PIXELS  # noqa: E402
from serverkit import Server  # noqa: E402

API_KEY = "reliability-key-6f1c0a9d"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_FILES = 4
QUEUE_SIZE = 16
STARTUP_TIMEOUT_S = 180.0
ROOT = HERE.parent.parent


def build_checkpoint(out: Path) -> Path:
    """Pretrained encoder + small random decoder, saved as a checkpoint folder."""
    import torch

    from captioner import CaptionDecoder, DecoderConfig, Vocabulary
    from captioner.encoders import build_encoder
    from captioner.model import ReferenceCaptioner
    from captioner.model.export import export_graphs

    torch.manual_seed(0)
    encoder = build_encoder("efficientnet_lite0")
    vocab = Vocabulary.build(["a red square on a blue background", "two green circles near a cat"])
    cfg = DecoderConfig(
        vocab_size=len(vocab),
        feature_dim=encoder.feature_dim,
        embed_dim=16,
        hidden_dim=32,
        img_proj_dim=16,
        dropout=0.0,
        max_length=8,
    )
    model = ReferenceCaptioner(
        encoder,
        CaptionDecoder(cfg),
        vocab,
        device="cpu",
        metadata={"model_id": "reliability-random", "training_data": "none (random weights)"},
    )
    model.save(out)
    export_graphs(out)  # what the servers run (their environment has no CAPTIONER_CACHE_DIR)
    return out


def launch_server(
    checkpoint: Path, log: Path, *args: str, api_key: str | None = API_KEY, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """``captioner serve --port 0`` with this module's limits; output to ``log``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("CAPTIONER_")}
    full_env.update(PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1", **(env or {}))
    if api_key:
        full_env["CAPTIONER_API_KEY"] = api_key
    cmd = serverkit.serve_command(
        checkpoint,
        "--max-batch-size",
        "8",
        "--max-wait-ms",
        "5",
        "--queue-size",
        str(QUEUE_SIZE),
        "--max-files",
        str(MAX_FILES),
        "--max-body-bytes",
        str(MAX_BODY_BYTES),
        "--max-pixels",
        str(MAX_PIXELS),
        "--request-timeout",
        "30",
        "--workers",
        "2",
        *args,
    )
    return subprocess.Popen(
        cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=full_env, start_new_session=True, cwd=log.parent
    )


def wait_ready(proc: subprocess.Popen, log: Path) -> Server:
    """Wait for the server to be ready; its clients send the API key."""
    return serverkit.wait_ready(proc, log, STARTUP_TIMEOUT_S, headers=AUTH)


# ---------------------------------------------------------------------------- malicious pickles
class Payload:
    """Unpickling this runs ``touch <marker>``: proof that code ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def plant(path: Path, marker: Path, how: str = "pickle") -> None:
    """Replace ``path`` by a malicious pickle (plain, or in torch.save's zip format)."""
    import torch

    if how == "torch":
        buf = io.BytesIO()
        torch.save({"state_dict": {"w": Payload(marker)}}, buf)
        path.write_bytes(buf.getvalue())
    else:
        path.write_bytes(pickle.dumps({"w": Payload(marker)}))
