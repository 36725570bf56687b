"""What every benchmark shares: the machine's description, a model to measure, test
images, timing loops, the encoder-only limit, tables and JSON results.

Absolute speeds on a shared machine drift from minute to minute; every benchmark
therefore measures everything it compares *inside one run*, and reports ratios next to
the raw figures. The machine's load average is recorded at the start and the end of
each run, so a noisy run can be recognised afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
SCRATCH = ROOT / "bench" / ".cache"  # synthetic checkpoints and image folders (git-ignored)


# ---------------------------------------------------------------------- the machine
def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    """CPU, cores, memory, load, library versions and thread settings, for the JSON and the docs."""
    info: dict = {
        "cpu": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    with contextlib.suppress(ValueError, OSError, AttributeError):
        info["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    import PIL

    info["pillow"] = PIL.__version__
    return info


def load_note() -> str:
    """'load 1.23 on 2 CPUs' for the printed header."""
    la = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return f"load average {la:.2f} on {os.cpu_count()} CPUs"


# ---------------------------------------------------------------------- arguments and output
def base_parser(name: str, description: str, checkpoint: bool = True) -> argparse.ArgumentParser:
    """The flags the benchmarks share: --json, --threads and (for those that load a model)
    --checkpoint."""
    p = argparse.ArgumentParser(
        prog=f"python -m bench.{name}", description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    if checkpoint:
        p.add_argument(
            "--checkpoint",
            metavar="DIR",
            help="checkpoint folder to measure (default: weights/default when present, else a synthetic "
            "checkpoint: the real EfficientNet-Lite0 encoder + a random decoder of the default size)",
        )
    p.add_argument("--json", metavar="PATH", help=f"where to write the results (default {RESULTS}/{name}.json)")
    p.add_argument(
        "--threads",
        type=int,
        metavar="N",
        help="torch / ONNX Runtime threads in this process (default: torch's choice, one per core)",
    )
    return p


def apply_threads(args: argparse.Namespace) -> None:
    """--threads: torch's threads, and the ONNX Runtime encoder's unless CAPTIONER_ENCODER_THREADS is set."""
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)
        os.environ.setdefault("CAPTIONER_ENCODER_THREADS", str(args.threads))


def write_json(name: str, payload: dict, path: str | None = None) -> Path:
    out = Path(path) if path else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return out


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]]) -> str:
    """A GitHub-markdown table; ``columns`` are (key, heading). Floats get sensible digits."""

    def cell(v) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 10 else f"{v:.1f}" if abs(v) < 1000 else f"{v:.0f}"
        return str(v)

    head = "| " + " | ".join(h for _, h in columns) + " |"
    sep = "|" + "|".join("---" for _ in columns) + "|"
    body = ["| " + " | ".join(cell(r.get(k)) for k, _ in columns) + " |" for r in rows]
    return "\n".join([head, sep, *body])


# ---------------------------------------------------------------------- the model
def synthetic_checkpoint(vocab_size: int = 1000, max_length: int = 12) -> Path:
    """A checkpoint with the real EfficientNet-Lite0 encoder and a random decoder of the
    default size (embed 256, hidden 512, LSTM), with its exported graphs, built once under
    bench/.cache.

    A random decoder almost never emits ``<end>``, so every caption runs to ``max_length``
    words; 12 is about the length of a real caption, which keeps decoding costs realistic.
    """
    from captioner.checkpoint import GRAPHS
    from captioner.decoder import CaptionDecoder, DecoderConfig
    from captioner.encoders import build_encoder
    from captioner.model import ReferenceCaptioner
    from captioner.model.export import export_graphs
    from captioner.runtime.graphs import MANIFEST
    from captioner.vocab import Vocabulary

    out = SCRATCH / f"synthetic-v{vocab_size}-len{max_length}"
    if (out / GRAPHS / MANIFEST).exists():
        return out
    torch.manual_seed(0)
    vocab = Vocabulary.build([" ".join(f"word{i}" for i in range(vocab_size - 4))])
    encoder = build_encoder("efficientnet_lite0")
    decoder = CaptionDecoder(
        DecoderConfig(vocab_size=len(vocab), feature_dim=encoder.feature_dim, max_length=max_length)
    )
    ReferenceCaptioner(encoder, decoder, vocab, device="cpu", metadata={"model_id": f"synthetic-v{vocab_size}"}).save(
        out
    )
    export_graphs(out)  # what Captioner.load runs
    return out


def resolve_checkpoint(path: str | None) -> Path:
    """--checkpoint, else the shipped weights when they exist, else the synthetic checkpoint."""
    if path:
        return Path(path)
    from captioner.checkpoint import CONFIG
    from captioner.runtime.captioner import default_weights_path

    try:
        default = default_weights_path()
    except Exception:
        default = None
    if default is not None and (default / CONFIG).exists():
        return default
    return synthetic_checkpoint()


# ---------------------------------------------------------------------- images
def photo_like(seed: int, size: tuple[int, int] = (640, 480)) -> Image.Image:
    """A deterministic picture with the texture statistics of a photo (smooth gradients,
    shapes with soft edges, sensor-like noise), so JPEG sizes and decode costs are realistic."""
    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack(
        [rng.uniform(40, 200) + rng.uniform(-60, 60) * (xx / w) + rng.uniform(-60, 60) * (yy / h) for _ in range(3)],
        axis=2,
    )  # (h, w, 3)
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = int(rng.integers(0, w)), int(rng.integers(0, h))
        x1, y1 = x0 + int(rng.integers(20, w // 2)), y0 + int(rng.integers(20, h // 2))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)((x0, y0, x1, y1), fill=colour)
    img = img.filter(ImageFilter.GaussianBlur(1.5))
    noisy = np.asarray(img, dtype=np.float32) + rng.normal(0, 6, (h, w, 3))
    return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))


def make_jpegs(n: int, size: tuple[int, int] = (640, 480), quality: int = 90, seed: int = 0) -> list[bytes]:
    out = []
    for i in range(n):
        buf = io.BytesIO()
        photo_like(seed + i, size).save(buf, format="JPEG", quality=quality)
        out.append(buf.getvalue())
    return out


def jpeg_folder(n: int, size: tuple[int, int] = (640, 480), seed: int = 0) -> Path:
    """A folder of ``n`` synthetic JPEGs under bench/.cache (reused between runs)."""
    folder = SCRATCH / f"jpegs-{n}-{size[0]}x{size[1]}-s{seed}"
    if len(list(folder.glob("*.jpg"))) == n:
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    for i, data in enumerate(make_jpegs(n, size, seed=seed)):
        (folder / f"img{i:05d}.jpg").write_bytes(data)
    return folder


# ---------------------------------------------------------------------- timing
def timed(fn: Callable[[], object], seconds: float, min_runs: int = 3, warmup: int = 1) -> list[float]:
    """Run ``fn`` ``warmup`` times, then repeatedly for about ``seconds`` (at least ``min_runs``
    times); returns the duration of each timed run in seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < min_runs or time.perf_counter() < end:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def rate(items_per_run: int, times: Sequence[float]) -> float:
    """Items per second from the median run (robust to a few preempted runs)."""
    return items_per_run / statistics.median(times)


def percentile(values: Sequence[float], q: float) -> float | None:
    if not values:
        return None
    return float(np.percentile(np.asarray(values, dtype=np.float64), q))


def encoder_limit(model, seconds: float = 3.0, batch_sizes: Sequence[int] = (8, 16, 32)) -> dict:
    """The encoder-only limit: the fastest encoder forward on pre-decoded batches.

    Times the model's encoder (``model.encode``) and, for a :class:`captioner.Captioner`,
    dedicated ONNX Runtime sessions of its encoder graph (the precision it runs) on every
    core and on one thread, on random (B, 3, S, S) batches of each size, and keeps the best
    images/s, whatever thread setting the model itself runs with. This is what the machine
    could do if images arrived decoded and captions cost nothing.
    """
    size = model.input_size
    candidates: dict[str, Callable] = {f"model.encode ({model.runtime_status()['encoder']})": model.encode}
    graphs = getattr(model, "graphs", None)  # the torch-free Captioner's; the reference path has none
    if graphs is not None:
        from captioner.runtime.graphs import OnnxEncoder

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        for threads in sorted({cores, 1}, reverse=True):
            candidates[f"onnxruntime {model.precision} {threads} thread(s)"] = OnnxEncoder(
                graphs, model.precision, threads
            )
    best: dict = {"images_per_s": 0.0}
    table: dict = {}
    per_cell = seconds / (len(batch_sizes) * len(candidates))
    rng = np.random.default_rng(0)
    for name, fn in candidates.items():
        table[name] = {}
        for b in batch_sizes:
            x = rng.standard_normal((b, 3, size, size), dtype=np.float32)  # (B, 3, S, S)
            with torch.inference_mode():
                r = rate(b, timed(functools.partial(fn, x), per_cell))
            table[name][b] = round(r, 1)
            if r > best["images_per_s"]:
                best = {"images_per_s": r, "batch_size": b, "backend": name}
    best["by_backend_and_batch"] = table
    return best


def one_image_s(model, jpeg: bytes) -> float:
    """Median seconds to caption one JPEG in this process (greedy)."""
    return statistics.median(timed(lambda: model.caption(jpeg), 2.0, warmup=2))


def header(title: str, info: dict, extra: str = "") -> None:
    print(f"# {title}", file=sys.stderr)
    print(
        f"# {info['cpu']}, {info['logical_cpus']} logical CPUs, torch {info['torch']} "
        f"({info['torch_threads']} threads), onnxruntime {info.get('onnxruntime')}; {load_note()}"
        + (f"; {extra}" if extra else ""),
        file=sys.stderr,
        flush=True,
    )


# ---------------------------------------------------------------------- serving runs and figures
def serving_start(args: argparse.Namespace, title: str) -> tuple[dict, Path, Path, bytes]:
    """A serving benchmark's start: --threads applied, the machine described (the header
    printed), the checkpoint, a folder of 16 JPEGs for the clients and its first JPEG."""
    apply_threads(args)
    info = machine_info()
    header(title, info)
    ckpt = resolve_checkpoint(args.checkpoint)
    images = jpeg_folder(16)
    return info, ckpt, images, sorted(images.glob("*.jpg"))[0].read_bytes()


def pyplot():
    """matplotlib.pyplot drawing into files (the Agg backend, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
