"""Distributed training helpers: one code path for 1 process and for ``torchrun``.

``captioner train`` works unchanged under ``torchrun --nproc_per_node=N``: torchrun sets
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each process's environment, and
:func:`setup` reads them, joins the process group (``gloo`` on CPU, ``nccl`` on CUDA) and
returns a :class:`DistContext`. Without those variables the context is the trivial
one-process context and every collective below is a no-op, so the training loop never
asks "am I distributed?".

The rules the loop follows:

* the *global* batch size is a setting; each rank takes ``batch_size / world_size``
  examples per step, so a run on N processes sees the same batches (as a set, per step)
  as a one-process run with the same seed (``torch.utils.data.DistributedSampler``, see
  ``Trainer._batches`` in ``training/trainer.py``);
* losses and metrics are summed across ranks with :meth:`DistContext.all_reduce_sum`;
* only rank 0 writes files (feature cache, checkpoints, logs, plots); the others wait at
  a :meth:`DistContext.barrier` and then read what rank 0 wrote.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

#: Generous: rank 0 may spend many minutes building the feature cache while the other
#: ranks wait at a barrier.
DEFAULT_TIMEOUT = _dt.timedelta(hours=2)


@dataclass
class DistContext:
    """Where this process stands: rank, world size and the device it trains on."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: str | None = None  # None when not distributed

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on the one process that writes files and prints progress."""
        return self.rank == 0

    # ------------------------------------------------------------------ collectives
    def barrier(self) -> None:
        if self.distributed:
            if self.backend == "nccl":
                dist.barrier(device_ids=[self.device.index or 0])
            else:
                dist.barrier()

    def all_reduce_sum(self, values: list[float] | torch.Tensor) -> torch.Tensor:
        """Element-wise sum over ranks of a float64 vector (returned on the CPU)."""
        t = torch.as_tensor(values, dtype=torch.float64).flatten()
        if self.distributed:
            t = t.to(self.device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.cpu()

    def broadcast_object(self, obj: Any = None) -> Any:
        """Rank 0's ``obj`` on every rank (small JSON-like values only)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, device=self.device if self.backend == "nccl" else None)
        return box[0]

    def gather_objects(self, obj: Any) -> list[Any] | None:
        """Every rank's ``obj`` in rank order on rank 0; ``None`` on the other ranks.

        Used for the validation captions (lists of strings) produced by each rank's shard.
        """
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out if self.is_main else None


def setup(device: str | None = None) -> DistContext:
    """Join the process group when launched by torchrun, else return the 1-process context.

    ``device`` is ``None``/``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"``. Under torchrun on CUDA each rank takes GPU ``LOCAL_RANK``.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    want_cuda = torch.cuda.is_available() if device in (None, "auto") else str(device).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        from captioner.errors import CaptionerError

        raise CaptionerError("CUDA was requested but no CUDA device is available; use --device cpu")
    if want_cuda:
        if world > 1 or device in (None, "auto", "cuda"):
            dev = torch.device("cuda", local_rank if world > 1 else 0)
        else:
            dev = torch.device(str(device))
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    if world <= 1:
        return DistContext(0, 1, 0, dev, None)
    backend = "nccl" if dev.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=DEFAULT_TIMEOUT)
    return DistContext(rank, world, local_rank, dev, backend)


def cleanup(ctx: DistContext) -> None:
    """Leave the process group (safe to call on the 1-process context)."""
    if ctx.distributed and dist.is_initialized():
        dist.destroy_process_group()
