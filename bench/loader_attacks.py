"""Loader attacks: time and peak memory of decoding each attack file, before and after.

    python bench/loader_attacks.py [--before REV] [--timeout 60] [--small] [--out FILE]

Each file of ``attack_files(full_size=True)`` (tests/reliability/attacks.py: ICO/ICNS with
an oversized embedded PNG, gzip FITS, QOI, RLE BMP, a TIFF of 2 million strips, a JPEG of
8 million segments, a PNG of 2.5 million chunks, a 16-bit PNG of 6300x6300) is decoded in a
fresh subprocess by ``load_image`` with the service's draft size (224x224): once with this
tree's loader ("after") and once with ``captioner/images.py`` as it was at git revision
REV ("before"). Figures: wall time of the call, peak resident memory growth during it
(VmHWM after the call minus the resident size before it, the peak reset with
/proc/self/clear_refs), and the outcome (decoded size, or the error code and reason).
A decode still running after ``--timeout`` seconds is killed and reported as such.
Results: bench/results/loader_attacks.json (the table in docs/reliability.md).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "reliability"))

from attacks import attack_files  # noqa: E402

PROBE = r"""
import importlib.util, json, sys, time
from captioner.errors import ImageLoadError
loader_path, data_path = sys.argv[1], sys.argv[2]
if loader_path == "-":
    from captioner import images as loader
else:
    spec = importlib.util.spec_from_file_location("loader_before", loader_path)
    loader = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(loader)
data = open(data_path, "rb").read()

def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
rss = status("VmRSS:")
start = time.perf_counter()
try:
    im = loader.load_image(data, name="attack", draft_size=(224, 224))
    outcome = f"decoded {im.size[0]}x{im.size[1]}"
except ImageLoadError as e:
    outcome = f"{e.code}: {e.reason}"
took = time.perf_counter() - start
print(json.dumps({"s": round(took, 3), "peak_mib": round((status("VmHWM:") - rss) / 1024, 1), "outcome": outcome}))
"""


def old_loader(rev: str, folder: Path) -> Path:
    """``captioner/images.py`` at ``rev``, importable on its own (its relative import made absolute)."""
    text = subprocess.run(
        ["git", "show", f"{rev}:captioner/images.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    path = folder / "images_before.py"
    path.write_text(text.replace("from .errors import", "from captioner.errors import"))
    return path


def measure(loader: str, data_path: Path, timeout: float) -> dict:
    try:
        r = subprocess.run(
            [sys.executable, "-c", PROBE, loader, str(data_path)],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
        )
    except subprocess.TimeoutExpired:
        return {"s": None, "peak_mib": None, "outcome": f"still decoding after {timeout:.0f} s (killed)"}
    if r.returncode != 0:
        return {"s": None, "peak_mib": None, "outcome": f"crashed: {r.stderr.strip().splitlines()[-1:]}"}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--before", default="75555c2", help="git revision of the loader before the fixes")
    ap.add_argument("--timeout", type=float, default=60.0, help="seconds before a decode is killed")
    ap.add_argument("--small", action="store_true", help="the test-sized files instead of the issue-sized ones")
    ap.add_argument("--only", default="", help="comma-separated attack names")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "loader_attacks.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        before = old_loader(args.before, folder)
        for sample in attack_files(full_size=not args.small):
            if args.only and sample.name not in args.only.split(","):
                continue
            path = folder / sample.filename
            path.write_bytes(sample.data)
            row = {
                "attack": sample.name,
                "note": sample.note,
                "bytes": len(sample.data),
                "expected": sorted(sample.outcomes),
            }
            row["before"] = measure(str(before), path, args.timeout)
            row["after"] = measure("-", path, args.timeout)
            rows.append(row)
            print(json.dumps(row), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"before_rev": args.before, "timeout_s": args.timeout, "rows": rows}, indent=1) + "\n"
    )


if __name__ == "__main__":
    main()
