"""numpy's OpenBLAS threads: the runtime sets one unless the user chose (runtime/blas.py).

Each case runs in a fresh interpreter: the thread count is process-wide state, and
OpenBLAS reads its environment variables when numpy loads it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

PROBE = """
import json
from captioner.runtime.blas import blas_threads, limit_blas_threads
first = blas_threads()
two = limit_blas_threads(2)
after_two = blas_threads()
one = limit_blas_threads(1)
print(json.dumps([first, two, after_two, one, blas_threads()]))
"""


def _probe(**env: str) -> list:
    clean = {k: v for k, v in os.environ.items() if k not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env={**clean, **env}, capture_output=True, text=True, timeout=120, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_limit_sets_openblas_threads():
    first, two, after_two, one, after_one = _probe()
    assert first is not None and first >= 1  # numpy's wheel bundles OpenBLAS and its getter was found
    assert (two, after_two) == (True, 2)
    assert (one, after_one) == (True, 1)


def test_user_choice_wins():
    first, two, after_two, one, after_one = _probe(OPENBLAS_NUM_THREADS="1")
    assert first == 1
    assert two is False and one is False
    assert after_two == after_one == 1  # the request for 2 was not applied
