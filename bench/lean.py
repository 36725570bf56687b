"""What the torch-free runtime costs a deployment: start-up, memory, install size.

    python -m bench.lean --venv .venv-serve          # the lean install (make serve makes it)

Measured in the given virtual environment, one after another (say the load average beside
the figures, docs/performance.md):

* cold ``captioner caption one.jpg``: wall time and peak memory of the process (median of 5);
* ``captioner serve`` to the first ``/readyz`` 200, and its memory idle (the server and its
  decode worker processes, summed);
* that memory during 32 clients posting a 640x480 photo for 10 s (bench.loadgen), and after;
* the size of the environment's site-packages, and whether torch is in it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
PHOTO = ROOT / "tests" / "data" / "chelsea.jpg"


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants, MB."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            text = Path(f"/proc/{p}/status").read_text()
            m = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
            total += int(m.group(1)) if m else 0
            for task in Path(f"/proc/{p}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return total / 1024


def cold_caption(bin_dir: Path, runs: int = 5) -> tuple[float, float]:
    times, peaks = [], []
    for _ in range(runs):
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        start = time.perf_counter()
        subprocess.run([str(bin_dir / "captioner"), "caption", str(PHOTO)], check=True, capture_output=True)
        times.append(time.perf_counter() - start)
        peaks.append(max(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, before) / 1024)
    return statistics.median(times), max(peaks)


def photos(folder: Path, n: int = 8) -> Path:
    rng = np.random.default_rng(0)
    for i in range(n):
        small = rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)
        Image.fromarray(small).resize((640, 480), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg", quality=90)
    return folder


def serve(bin_dir: Path, tmp: Path) -> dict:
    log = tmp / "serve.log"
    start = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(bin_dir / "captioner"), "serve", "--port", "0", "--log-level", "warning"], stdout=out, stderr=out
        )
    try:
        url = None
        while time.perf_counter() - start < 120:
            m = re.search(r"listening on (http://[\d.]+:\d+)", log.read_text(errors="replace"))
            if m:
                url = m.group(1)
                try:
                    if httpx.get(url + "/readyz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
            time.sleep(0.02)
        ready = time.perf_counter() - start
        time.sleep(2)
        idle = tree_rss_mb(proc.pid)
        load = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "--url", f"{url}/v1/captions", "--images", str(photos(tmp)),
             "--clients", "32", "--seconds", "10"],
            stdout=subprocess.PIPE, cwd=ROOT, text=True,
        )  # fmt: skip
        peak = idle
        while load.poll() is None:
            peak = max(peak, tree_rss_mb(proc.pid))
            time.sleep(0.2)
        result = json.loads(load.stdout.read() if load.stdout else "{}")
        after = tree_rss_mb(proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)
    return {"ready_s": round(ready, 2), "rss_idle_mb": round(idle), "rss_32_clients_peak_mb": round(peak),
            "rss_after_mb": round(after), "images_per_s": result.get("images_per_s")}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--venv", default=".venv-serve", help="the environment to measure")
    args = ap.parse_args()
    venv = Path(args.venv).resolve()
    bin_dir = venv / "bin"
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = int(subprocess.run(["du", "-sm", str(site)], capture_output=True, text=True).stdout.split()[0])
    has_torch = (site / "torch").exists()
    wall, peak = cold_caption(bin_dir)
    with tempfile.TemporaryDirectory() as tmp:
        served = serve(bin_dir, Path(tmp))
    print(json.dumps({
        "venv": str(venv), "site_packages_mb": size, "torch_installed": has_torch,
        "caption_one_jpg_s": round(wall, 2), "caption_one_jpg_peak_rss_mb": round(peak),
        **served, "load_average": os.getloadavg()[0],
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
