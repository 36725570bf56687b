"""An enforced decode budget: :func:`~captioner.images.load_image` in worker processes that
are killed when a decode outlives its budget.

    pool = DecodePool(workers=2, budget_s=10.0)
    image = pool.load(data, name="upload.jpg", max_pixels=..., draft_size=(224, 224), budget_s=3.0)
    pool.close()

A thread cannot be stopped, so a decode that runs too long in a thread keeps its core
after its request has been answered. Here each decode runs in one of ``workers`` small
processes (Python, Pillow and numpy only: the ``captioner`` package's heavy imports are
skipped); when the budget passes, that worker is killed (SIGKILL), a fresh one is started
in its place, and the call raises :class:`DecodeTimeout` (an ``ImageLoadError`` with code
``too_large``: the image costs more than the service allows). A worker that dies (a decoder
crash, or the optional ``memory_limit_bytes`` hit) is replaced too, and the call raises
``ImageLoadError`` with code ``unreadable``. Waiting for a free worker longer than the
budget raises :class:`TimeoutError` (the service is busy; the image is not to blame).

Nothing is pickled: a request is a JSON header and the file's bytes, a reply a JSON header
and the RGB pixels, each framed by two lengths, over the worker's stdin and stdout.
The header checks of :mod:`captioner.images` already refuse every slow file we know of;
this is the wall for the ones we do not.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import queue
import select
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from PIL import Image

from .errors import ImageLoadError
from .images import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, ImageSource, load_image, read_source, source_label
from .resize import CROPPED, resize_and_crop

#: Seconds one decode may take by default (a 40-megapixel PNG takes well under 2 s here).
DEFAULT_BUDGET_S = 10.0
_FRAME = struct.Struct("<IQ")  # header length, payload length
_PACKAGE_DIR = str(Path(__file__).resolve().parent)
# The worker imports captioner.images without running captioner/__init__.py (which loads
# torch): "captioner" is registered as a bare package over the same folder first.
_BOOT = """
import sys, types
pkg = types.ModuleType("captioner")
pkg.__path__ = [sys.argv[1]]
sys.modules["captioner"] = pkg
limit = int(sys.argv[2])
if limit > 0:
    import resource
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from captioner.decode_budget import serve
serve()
"""


class DecodeTimeout(ImageLoadError):
    """A decode outlived its budget; its worker was killed. ``budget_s`` is the budget."""

    def __init__(self, name: str, budget_s: float) -> None:
        super().__init__(
            name, f"decoding took longer than the budget of {budget_s:g} s (the decode was stopped)", "too_large"
        )
        self.budget_s = budget_s


class _Worker:
    def __init__(self, memory_limit_bytes: int | None) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _PACKAGE_DIR, str(memory_limit_bytes or 0)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"},
            close_fds=True,
        )
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin = self.proc.stdin
        self.out_fd = self.proc.stdout.fileno()
        for fd in (self.stdin.fileno(), self.out_fd):  # 1 MiB pipes: fewer wake-ups per image
            with contextlib.suppress(OSError, AttributeError):
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                with contextlib.suppress(OSError):  # unflushed bytes to a dead worker
                    pipe.close()

    def call(self, header: dict, payload: bytes, deadline: float) -> tuple[dict, bytearray]:
        """Send one request, wait for its reply until ``deadline``; TimeoutError / EOFError."""
        head = json.dumps(header).encode()
        self.stdin.write(_FRAME.pack(len(head), len(payload)) + head)
        self.stdin.write(payload)
        self.stdin.flush()
        head_len, payload_len = _FRAME.unpack(self._recv(_FRAME.size, deadline))
        reply = json.loads(self._recv(head_len, deadline))
        return reply, self._recv(payload_len, deadline)

    def _recv(self, n: int, deadline: float) -> bytearray:
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.out_fd], [], [], left)[0]:
                raise TimeoutError
            k = os.readv(self.out_fd, [view[got:]])  # straight into the buffer, no copies
            if not k:
                raise EOFError
            got += k
        return buf


class DecodePool:
    """``workers`` decode processes; :meth:`load` is ``load_image`` with a budget. Thread-safe."""

    def __init__(
        self, workers: int = 2, budget_s: float = DEFAULT_BUDGET_S, memory_limit_bytes: int | None = None
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers}")
        self.budget_s = budget_s
        self.memory_limit_bytes = memory_limit_bytes
        self.recycled = 0  # workers killed past their budget or found dead
        self._idle: queue.Queue[_Worker] = queue.Queue()
        self._lock = threading.Lock()
        self._all: list[_Worker] = []
        self._closed = False
        for _ in range(workers):
            self._idle.put(self._start())

    def _start(self) -> _Worker:
        worker = _Worker(self.memory_limit_bytes)
        with self._lock:
            self._all.append(worker)
        return worker

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        with self._lock:
            self._all.remove(worker)
            self.recycled += 1
            closed = self._closed
        if not closed:
            self._idle.put(self._start())

    def load(
        self,
        source: ImageSource,
        *,
        name: str | None = None,
        max_pixels: int = DEFAULT_MAX_PIXELS,
        max_bytes: int = DEFAULT_MAX_BYTES,
        draft_size: tuple[int, int] | None = None,
        budget_s: float | None = None,
        crop: tuple[int, int, str] | None = None,
    ) -> Image.Image:
        """:func:`~captioner.images.load_image` in a worker, stopped after ``budget_s``
        (the pool's budget by default). Raises ImageLoadError, DecodeTimeout, TimeoutError.

        ``crop`` (resize_size, crop_size, interpolation; ``Preprocess.resize_spec``): the
        worker also resizes and crops (:func:`captioner.resize.resize_and_crop`) and sends
        back only the crop, marked so that preprocessing does not crop it again."""
        budget = self.budget_s if budget_s is None else budget_s
        deadline = time.monotonic() + budget
        label = source_label(source, name)
        if isinstance(source, Image.Image):  # already decoded: only converted (preprocessing crops it)
            return load_image(source, name=name, max_pixels=max_pixels)
        data = read_source(source, label, max_bytes)
        try:
            worker = self._idle.get(timeout=max(0.0, budget))
        except queue.Empty:
            raise TimeoutError(f"no decode worker was free within {budget:g} s") from None
        header = {
            "name": label,
            "max_pixels": max_pixels,
            "max_bytes": max_bytes,
            "draft_size": draft_size,
            "crop": list(crop) if crop else None,
        }
        try:
            reply, pixels = worker.call(header, data, deadline)
        except TimeoutError:
            self._replace(worker)
            raise DecodeTimeout(label, budget) from None
        except (EOFError, OSError, ValueError):
            self._replace(worker)
            raise ImageLoadError(label, "the decoder crashed or ran out of memory on this image") from None
        self._idle.put(worker)
        if not reply["ok"]:
            raise ImageLoadError(reply["name"], reply["reason"], reply["code"])
        image = Image.frombytes("RGB", tuple(reply["size"]), pixels)
        if reply.get("cropped"):
            image.info[CROPPED] = tuple(reply["cropped"])
        return image

    def close(self) -> None:
        with self._lock:
            self._closed = True
            workers = list(self._all)
            self._all.clear()
        for worker in workers:
            worker.kill()

    def __enter__(self) -> DecodePool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _crop(image: Image.Image, crop: list | None, name: str) -> Image.Image:
    """The worker's preprocessing steps 1 and 2 when asked (the crop, not the picture, goes
    back through the pipe); a failure is the image's, as :func:`captioner.pipeline.preprocess` says."""
    if not crop:
        return image
    try:
        return resize_and_crop(image, int(crop[0]), int(crop[1]), str(crop[2]))
    except Exception as e:
        raise ImageLoadError(name, f"cannot preprocess image ({type(e).__name__}: {e})") from None


def serve() -> None:
    """The worker's loop: read a request from stdin, decode, write the reply to stdout."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        frame = stdin.read(_FRAME.size)
        if len(frame) < _FRAME.size:
            return  # the pool closed the pipe
        head_len, payload_len = _FRAME.unpack(frame)
        header = json.loads(stdin.read(head_len))
        data = stdin.read(payload_len)
        draft = header["draft_size"]
        try:
            image = load_image(
                data,
                name=header["name"],
                max_pixels=header["max_pixels"],
                max_bytes=header["max_bytes"],
                draft_size=tuple(draft) if draft else None,
            )
            image = _crop(image, header.get("crop"), header["name"])
            reply = {"ok": True, "size": list(image.size), "cropped": image.info.get(CROPPED)}
            pixels = image.tobytes()
        except ImageLoadError as e:
            reply, pixels = {"ok": False, "name": e.name, "reason": e.reason, "code": e.code}, b""
        head = json.dumps(reply).encode()
        stdout.write(_FRAME.pack(len(head), len(pixels)) + head)
        stdout.write(pixels)
        stdout.flush()
