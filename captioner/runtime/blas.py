"""numpy's BLAS threads: one, beside the ONNX Runtime sessions that own the cores.

numpy's wheels bundle OpenBLAS, which runs a matrix product on every core and then
busy-waits for the next one. The runtime's only numpy products are small (the domain
distance: (B, 1280) x (1280, R) per batch), but on a machine whose cores the encoder's
threads, the decode threads and other processes already share, OpenBLAS's extra threads
made that product 60x slower (61 ms instead of 1 ms per batch of 32, load ~6 on 2 cores)
and their spinning slowed the ONNX Runtime calls around it by a quarter. One thread is
what the runtime wants, so ``Captioner`` asks for it when it loads, unless the user
chose with ``OPENBLAS_NUM_THREADS`` / ``OMP_NUM_THREADS``.
"""

from __future__ import annotations

import ctypes
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

#: OpenBLAS's setter, under the names numpy's bundled builds (scipy-openblas, 64-bit
#: integers) and plain builds export.
SETTERS = (
    "scipy_openblas_set_num_threads64_",
    "scipy_openblas_set_num_threads",
    "openblas_set_num_threads64_",
    "openblas_set_num_threads",
)
USER_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")


def _openblas_files() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux), else the one numpy
    bundles beside itself."""
    try:
        maps = Path("/proc/self/maps").read_text(encoding="utf-8", errors="replace")
        found = {line.split()[-1] for line in maps.splitlines() if "openblas" in line.lower() and "/" in line}
        if found:
            return sorted(found)
    except OSError:
        pass
    import numpy

    base = Path(numpy.__file__).resolve().parent
    return sorted(str(p) for d in (base.parent / "numpy.libs", base / ".dylibs") for p in d.glob("*openblas*"))


def limit_blas_threads(threads: int = 1) -> bool:
    """Set numpy's OpenBLAS to ``threads`` threads, unless the environment already chose.
    True when a setter was called; False when there is no OpenBLAS (another BLAS, or
    the user's choice), which is harmless."""
    if any(os.environ.get(name) for name in USER_ENV):
        return False
    import numpy  # noqa: F401  (its BLAS must be loaded to be found)

    for path in _openblas_files():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in SETTERS:
            setter = getattr(lib, name, None)
            if setter is not None:
                setter(ctypes.c_int(int(threads)))
                log.debug("numpy's OpenBLAS (%s) set to %d thread(s)", path, threads)
                return True
    return False


def blas_threads() -> int | None:
    """numpy's OpenBLAS thread count, or None when no OpenBLAS getter is found."""
    for path in _openblas_files():
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for name in (s.replace("set_", "get_") for s in SETTERS):
            getter = getattr(lib, name, None)
            if getter is not None:
                getter.restype = ctypes.c_int
                return int(getter())
    return None
