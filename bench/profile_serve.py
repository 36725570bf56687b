"""Where the service's CPU goes at 32 clients: a py-spy profile, grouped by stage.

    pip install py-spy
    python -m bench.profile_serve                 # 32 clients, greedy, 20 s of samples
    python -m bench.profile_serve --clients 8 --seconds 30 --service-arg=--threads=1

Starts ``captioner serve`` (shipped weights unless ``--checkpoint``), loads it with
``bench/loadgen.py`` (640x480 JPEGs, closed loop) and records the server process and its
decode workers with ``py-spy record --subprocesses --format raw`` (samples of threads that
are running, not waiting). Each sample is put in the first stage whose function it
contains, searched from the innermost frame out, so the shares add up to 100 %:

* ``image decode``: ``load_image`` (the decode workers', in their processes, or a thread's);
* ``decode hand-off``: the pipe to and from the decode workers (both sides);
* ``preprocess``: resize, crop and normalise (``Preprocess``, the workers' crop);
* ``encoder``: the CNN's session call (``Captioner.encode``, ``OnnxEncoder``);
* ``generation (search)``: the search and the decoder step's session calls
  (``captioner/runtime/search.py``, ``OnnxStep``), and ``CaptionerBase.generate`` itself;
* ``trust, labels, finish``: the unsure-word cut, confidence and domain distance
  (``captioner/runtime/results.py``, ``captioner/trust.py``) and the ImageNet labels;
* ``HTTP + multipart``: uvicorn, FastAPI, the upload parsing and JSON responses;
* ``other``: the rest (stacking batches, thread hand-offs, the batcher, logging).

Samples of a waiting thread (innermost frame a ``Condition.wait`` and the like) are left
out of the shares and shown apart as a share of the rest.

The raw profile is kept (``--raw``) for a flame graph (``flamegraph.pl``, speedscope).
"""

from __future__ import annotations

import collections
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import common
from .serve import PY, Server, load

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("image decode", ("load_image (captioner/images.py",)),
    ("decode hand-off", ("_Worker.call ", "_Worker._recv ", "serve (captioner/decode_budget.py")),
    ("preprocess", ("Preprocess.", "_crop (captioner/decode_budget.py", "preprocess (captioner/pipeline.py")),
    ("encoder", ("Captioner.encode ", "OnnxEncoder.")),
    ("generation (search)", ("captioner/runtime/search.py", "OnnxStep.", "CaptionerBase.generate ")),
    ("trust, labels, finish", ("captioner/runtime/results.py", "captioner/trust.py", "CaptionerBase.labels ")),
    ("HTTP + multipart", ("uvicorn/", "fastapi/", "starlette/", "multipart", "service/routers/", "service/app.py")),
)


#: Innermost frames of a thread that waits (py-spy's ``--nonblocking`` cannot always tell an
#: idle thread from a running one): such samples are counted apart, not in the shares.
IDLE = ("Condition.wait (", "Event.wait (", "Semaphore.acquire (", "select (selectors.py", "BaseSelector.select (")


def stage_of(frames: list[str]) -> str:
    """The stage of one sample (frames outermost first); ``idle`` for a waiting thread."""
    if frames and any(frames[-1].startswith(n) for n in IDLE):
        return "idle"
    for frame in reversed(frames):
        for stage, needles in STAGES:
            if any(n in frame for n in needles):
                return stage
    return "other"


def shares(raw: Path) -> dict[str, float]:
    """Share of the samples in each stage, from a py-spy ``--format raw`` file (lines of
    ``frame;frame;... count``, outermost frame first, each ``function (file:line)``)."""
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        m = re.match(r"(.*) (\d+)$", line)
        if m:
            counts[stage_of(m.group(1).split(";"))] += int(m.group(2))
    total = (sum(counts.values()) - counts["idle"]) or 1
    return {stage: counts[stage] / total for stage, _ in (*STAGES, ("other", ()))} | {
        "idle (left out)": counts["idle"] / total
    }


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser("profile_serve", __doc__)
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=20.0, help="seconds of samples (default 20)")
    p.add_argument("--beam", type=int, default=1)
    p.add_argument("--raw", default=str(common.RESULTS / "profile_serve.raw"), help="where the raw profile goes")
    p.add_argument("--service-arg", action="append", default=[], help="extra `captioner serve` argument")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if spy is None:
        print("error: py-spy is not installed (pip install py-spy)", file=sys.stderr)
        return 1
    ckpt = common.resolve_checkpoint(args.checkpoint)
    images = common.jpeg_folder(16)
    cmd = [PY, "-m", "captioner", "serve", "--port", "0", "--checkpoint", str(ckpt), *args.service_arg]
    server = Server("service", cmd)
    try:
        url = f"{server.url}/v1/captions?beam_size={args.beam}"
        result: dict = {}
        loader = threading.Thread(
            target=lambda: result.update(load(url, images, args.clients, args.seconds + 8, 4.0, 60.0))
        )
        loader.start()
        time.sleep(6.0)  # past the warm-up, every client waiting on an answer
        Path(args.raw).parent.mkdir(parents=True, exist_ok=True)
        record = [spy, "record", "--pid", str(server.proc.pid), "--subprocesses", "--nonblocking"]
        record += ["--rate", "100", "--duration", str(int(args.seconds)), "--format", "raw", "--output", args.raw]
        subprocess.run(record, check=True, capture_output=True)
        loader.join()
    finally:
        server.stop()
    split = shares(Path(args.raw))
    rows = [{"stage": k, "share": f"{v:.1%}"} for k, v in split.items()]
    common.header(
        f"captioner serve at {args.clients} clients, beam {args.beam}: where the CPU goes",
        common.machine_info(),
        f"{result.get('images_per_s', 0):.1f} images/s during the profile",
    )
    print(common.format_table(rows, [("stage", "stage"), ("share", "share of CPU samples")]))
    payload = {"machine": common.machine_info(), "load": result, "shares": split, "raw": args.raw}
    out = common.write_json("profile_serve", payload, args.json)
    print(f"\nwritten to {out}; raw profile {args.raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
