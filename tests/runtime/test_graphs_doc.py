"""docs/graphs.md: its example runs the shipped graphs with ONNX Runtime alone and captions."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_documented_example_captions_the_coffee_photo_without_the_package():
    text = (ROOT / "docs" / "graphs.md").read_text()
    (code,) = re.findall(r"```python\n(.*?)```", text, re.S)
    assert 'features, memory, *state = session("encoder.onnx")' in code  # the one call, fused start included
    blocker = "import sys\nsys.modules['captioner'] = None\nsys.modules['torch'] = None\n"  # neither may be used
    got = subprocess.run([sys.executable, "-c", blocker + code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert got.returncode == 0, got.stderr
    caption = got.stdout.strip().split()
    assert 3 <= len(caption) <= 20 and "cups" in caption  # the shipped model's words for the photo
