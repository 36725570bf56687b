"""Batch captioning on Ray Data: the folder tool's output, from one laptop to a cluster.

    captioner caption photos/ s3://bucket/more manifest.jsonl --engine ray --out captions.parquet

The run is one streaming Ray Data pipeline fed by a listing made on the driver::

    driver: list the sources (captioner.engines.sources), read the finished outputs and
            drop what they hold, plan the actor pool from the cluster's resources
      -> from_items(key, location)                    blocks of a few batches each
      -> map_batches(prepare_batch)   CPU tasks: read the bytes, decode and preprocess
                                       through captioner.pipeline.try_prepare (the one safe
                                       loader); (N, 3, S, S) float32 plus a reason per row
      -> map_batches(CaptionActor)    an actor pool, each holding one Captioner:
                                       encode + generate the rows that decoded
      -> driver: iter_batches          small rows (file, caption, score, reason) appended
                                       to --out and the errors file as they arrive

Ray Data streams with back-pressure, so memory stays bounded on any number of images, and
retries the work of a lost worker: an actor that dies is restarted and its batch run
again. The driver writes a file at most once per run (a repeat from a retried task is
dropped), so every image ends up in the output exactly once.

Outputs are the local folder tool's (:mod:`captioner.outputs`): JSONL or CSV lines, and
Parquet parts (:mod:`captioner.engines.parquet`); files that cannot be captioned go to the
errors file with their reasons. Resuming: a rerun with the same ``--out`` reads the files
already captioned there first and captions only the rest.

Resources (:func:`plan_pool`): an actor that reserves whole CPUs can leave none for the
decode tasks, and then the pipeline waits forever with no error. The pool is therefore
sized from ``ray.cluster_resources()``, keeping a share of the CPUs for decoding and
giving actors fractional CPUs where needed; explicit settings that would starve the
decode tasks are refused with the numbers.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..checkpoint import read_checkpoint_info
from ..errors import CaptionerError
from ..folder import FolderSummary
from ..options import DEFAULT_LABELS, CaptionOptions, Range
from ..outputs import LineWriter, default_errors_path, format_for
from .parquet import ParquetParts
from .sources import Source, list_sources, read_source

RAY_INSTALL_HINT = 'the Ray engine needs Ray Data; install it with: pip install "captioner[ray]"'
FORMATS = ("jsonl", "csv", "parquet")

ACTORS = Range("Ray actors", 1, 10_000)
ACTOR_CPUS = Range("CPUs per Ray actor", 0.0, 1024.0, integer=False, low_open=True)
#: The share of an image's CPU time spent reading and decoding it (measured: 2.5-3.3 ms of
#: 17-19 ms with the shipped weights, docs/scale.md); the default pool runs an actor (one
#: encoder thread) on each of the remaining cores.
DECODE_SHARE = 0.2
#: Memory a decode task declares beyond its tensors: the worker with torch imported, and one
#: large image being decoded (Ray measured about 380 MiB in all for batches of 16).
DECODE_MEMORY = 512 << 20
OBJECT_STORE_MB = Range("object store memory (MiB)", 100, 1 << 22)


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


# ---------------------------------------------------------------------------- resources
@dataclass(frozen=True)
class PoolPlan:
    """How many captioning actors, and what each one and each decode task reserves."""

    actors: int
    actor_cpus: float  # CPUs reserved per actor (may be fractional)
    actor_gpus: float  # GPUs per actor (0 on CPU clusters)
    decode_cpus: float  # CPUs reserved per decode task
    threads: int  # intra-op threads of each actor's model
    cluster_cpus: float
    cluster_gpus: float

    def describe(self) -> str:
        gpus = f", {self.actor_gpus:g} GPU" if self.actor_gpus else ""
        return (
            f"{self.actors} captioning actor(s) x {self.actor_cpus:g} CPU{gpus} ({self.threads} thread(s) each), "
            f"decode tasks {self.decode_cpus:g} CPU each, cluster {self.cluster_cpus:g} CPU / {self.cluster_gpus:g} GPU"
        )


def decode_reserve(cluster_cpus: float) -> float:
    """CPUs kept free of actors for the read and decode tasks: a quarter of the cluster,
    at least one CPU (half the cluster when it has fewer than two)."""
    return max(min(1.0, cluster_cpus / 2), cluster_cpus / 4)


def plan_pool(
    cluster_cpus: float,
    cluster_gpus: float = 0.0,
    actors: int | None = None,
    actor_cpus: float | None = None,
    use_gpus: bool = True,
) -> PoolPlan:
    """The actor pool for a cluster with these resources (see the module docstring).

    GPUs (when there are some and ``use_gpus``): one actor per GPU. CPUs only: the CPUs
    left after :func:`decode_reserve` are shared among ``actors`` actors (default: one per
    core that decoding does not need, ``DECODE_SHARE``; the reserve is Ray's accounting,
    which keeps decode tasks schedulable, not a count of busy cores). Raises
    :class:`CaptionerError` when the given ``actors`` and ``actor_cpus`` would leave the
    decode tasks nothing to run on."""
    if cluster_cpus <= 0:
        raise CaptionerError("the Ray cluster has no CPUs; decoding needs some")
    reserve = decode_reserve(cluster_cpus)
    decode_cpus = min(1.0, reserve)
    budget = cluster_cpus - reserve
    gpus = int(cluster_gpus) if use_gpus else 0
    if actors is None:
        actors = gpus if gpus >= 1 else max(1, round(cluster_cpus * (1 - DECODE_SHARE)))
    ACTORS.check(actors)
    if actor_cpus is None:
        actor_cpus = min(1.0, budget / actors) if gpus >= 1 else budget / actors
        actor_cpus = max(0.01, math.floor(actor_cpus * 100) / 100)  # Ray counts CPUs in hundredths
    ACTOR_CPUS.check(actor_cpus)
    if actors * actor_cpus > budget + 1e-9:
        raise CaptionerError(
            f"{actors} Ray actors x {actor_cpus:g} CPUs = {actors * actor_cpus:g} CPUs, but the cluster has "
            f"{cluster_cpus:g} and {reserve:g} must stay free for reading and decoding (else the pipeline "
            f"stalls): at most {budget:g} CPUs for actors; use fewer --ray-actors or a smaller --ray-actor-cpus"
        )
    if gpus >= 1 and actors > gpus:
        raise CaptionerError(f"{actors} Ray actors need one GPU each, but the cluster has {gpus}")
    return PoolPlan(
        actors=actors,
        actor_cpus=actor_cpus,
        actor_gpus=1.0 if gpus >= 1 else 0.0,
        decode_cpus=decode_cpus,
        threads=max(1, round(actor_cpus)),
        cluster_cpus=cluster_cpus,
        cluster_gpus=cluster_gpus,
    )


# ---------------------------------------------------------------------------- the stages
def prepare_batch(batch: dict[str, np.ndarray], preprocessing: dict, max_bytes: int) -> dict[str, np.ndarray]:
    """A decode task: every ``location`` -> (3, S, S) input tensor through the one image path,
    or the reason it cannot be captioned (an empty reason means success)."""
    from ..pipeline import Failure, Limits, try_prepare
    from ..runtime.preprocess import Preprocess

    recipe = Preprocess.from_dict(preprocessing)
    limits = Limits(max_bytes=max_bytes)
    keys = [str(k) for k in batch["key"]]
    pixels = np.zeros((len(keys), 3, recipe.crop_size, recipe.crop_size), dtype=np.float32)  # (N, 3, S, S)
    reasons: list[str] = []
    for i, (key, location) in enumerate(zip(keys, batch["location"])):
        try:
            source = read_source(str(location), key, max_bytes)
        except CaptionerError as e:
            reasons.append(getattr(e, "reason", str(e)))
            continue
        got = try_prepare(source, recipe, name=key, limits=limits)
        if isinstance(got, Failure):
            reasons.append(got.reason)
        else:
            pixels[i] = got  # (3, S, S)
            reasons.append("")
    return {"key": np.array(keys, dtype=object), "pixels": pixels, "reason": np.array(reasons, dtype=object)}


class CaptionActor:
    """One model per actor: captions the rows of a batch that decoded, passes the others on."""

    def __init__(self, checkpoint: str | None, device: str, threads: int, options: dict) -> None:
        from ..runtime.captioner import load_captioner

        self.model = load_captioner(checkpoint, device=device, threads=threads)
        self.options = CaptionOptions(**options)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from ..trust import result_fields

        keys = batch["key"]
        reasons = [str(r) for r in batch["reason"]]
        captions = [""] * len(keys)
        scores = np.full(len(keys), np.nan)
        trust = [""] * len(keys)  # JSON of captioner.trust.result_fields: plain data across Ray
        good = [i for i, r in enumerate(reasons) if not r]
        if good:
            opts = self.options
            try:
                pixels = np.ascontiguousarray(batch["pixels"][good])  # (G, 3, S, S)
                started = self.model.encode_started(pixels)  # (G, F) and the decoder's start: one call
                results = self.model.generate(started, opts)
                for i, res in zip(good, results):
                    captions[i], scores[i] = res.caption, round(res.score, 4)
                    trust[i] = json.dumps(result_fields(res))
            except Exception as e:  # one bad batch must not end a run of millions; it is retried next run
                for i in good:
                    reasons[i] = f"captioning failed ({type(e).__name__}: {e})"
        return {
            "file": keys,
            "caption": np.array(captions, dtype=object),
            "score": scores,
            "trust": np.array(trust, dtype=object),
            "reason": np.array(reasons, dtype=object),
        }


# ---------------------------------------------------------------------------- outputs
class _Outputs:
    """--out (JSONL, CSV or Parquet) and the errors file, opened for resuming."""

    def __init__(self, out: Path, fmt: str, errors: Path) -> None:
        self.fmt = fmt
        self.parquet = ParquetParts(out) if fmt == "parquet" else None
        self.lines = LineWriter(out, fmt) if fmt != "parquet" else None
        self.errors = LineWriter(errors, "jsonl")
        self.failed = 0

    def open(self) -> set[str]:
        if self.parquet is not None:
            done = self.parquet.open_for_resume()
        else:
            assert self.lines is not None
            done = {r["file"] for r in self.lines.open_for_resume()}
        self.errors.open_fresh()
        return done

    def write(self, record: dict) -> None:
        (self.parquet or self.lines).write(record)  # type: ignore[union-attr]

    def fail(self, key: str, reason: str) -> None:
        self.errors.write({"file": key, "path": key, "reason": reason})  # "path": the old name, for a release
        self.failed += 1

    def close(self) -> None:
        try:
            (self.parquet or self.lines).close()  # type: ignore[union-attr]
        finally:
            self.errors.close()


def _unwritable_reason(key: str, fmt: str) -> str | None:
    """Why ``key`` cannot be a row of ``fmt`` (the local tool's CSV rule, and Parquet's UTF-8)."""
    if fmt == "csv" and ("\n" in key or "\r" in key):
        return "the file name contains a line break, which CSV lines cannot hold; use --format jsonl"
    if fmt == "parquet":
        try:
            key.encode("utf-8")
        except UnicodeEncodeError:
            return "the file name is not valid UTF-8, which Parquet strings cannot hold; use --format jsonl"
    return None


def output_format(out: str | os.PathLike, fmt: str | None) -> str:
    """``fmt``, or from ``out``: ``.parquet`` -> parquet, ``.csv`` -> csv, else jsonl."""
    if fmt is None and Path(out).suffix.lower() == ".parquet":
        return "parquet"
    if fmt == "parquet":
        return fmt
    return format_for(out, fmt)


# ---------------------------------------------------------------------------- the run
@dataclass(frozen=True)
class RaySettings:
    """Where and how to run: ``address`` None starts a local Ray for the run."""

    address: str | None = None
    actors: int | None = None
    actor_cpus: float | None = None
    object_store_mb: int | None = None  # a local Ray only
    num_cpus: int | None = None  # a local Ray only (default: every core)


def _start_ray(settings: RaySettings) -> bool:
    """Connect to (or start) Ray; True when this run started it and must stop it."""
    import ray

    if ray.is_initialized():
        return False
    if settings.address is not None:
        ray.init(address=settings.address, logging_level=logging.WARNING)
        return True
    memory = settings.object_store_mb * (1 << 20) if settings.object_store_mb else None
    ray.init(
        num_cpus=settings.num_cpus,
        object_store_memory=memory,
        include_dashboard=False,
        logging_level=logging.WARNING,
    )
    return True


def _build_dataset(
    todo: Sequence[Source], plan: PoolPlan, preprocessing: dict, batch_size: int, max_bytes: int, actor_kwargs: dict
) -> Any:
    import ray

    rows_per_block = 4 * batch_size
    ds: Any = ray.data.from_items(
        [{"key": s.key, "location": s.location} for s in todo],
        override_num_blocks=max(1, math.ceil(len(todo) / rows_per_block)),
    )
    crop = int(preprocessing["crop_size"])
    ds = ds.map_batches(
        prepare_batch,
        batch_size=batch_size,
        batch_format="numpy",
        num_cpus=plan.decode_cpus,
        # What a decode task holds: its tensors (in and out) and one image being decoded. Declaring
        # it also keeps this stage its own pool of CPU tasks: Ray fuses stages that ask for the same
        # resources, which would move decoding into the captioning actors.
        memory=2 * batch_size * 3 * crop * crop * 4 + DECODE_MEMORY,
        fn_kwargs={"preprocessing": preprocessing, "max_bytes": max_bytes},
    )
    return ds.map_batches(
        CaptionActor,
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=plan.actors),
        num_cpus=plan.actor_cpus,
        num_gpus=plan.actor_gpus or None,
        fn_constructor_kwargs=actor_kwargs,
    )


def _checkpoint_preprocessing(checkpoint: str | None) -> dict:
    """The checkpoint's preprocessing recipe, read on the driver: a bad checkpoint fails
    here, before any cluster work starts."""
    from ..runtime.captioner import default_weights_path
    from ..runtime.graphs import read_graphs
    from ..runtime.preprocess import Preprocess

    folder = Path(checkpoint) if checkpoint else default_weights_path()
    info = read_checkpoint_info(folder)
    recipe = Preprocess.from_dict(info.preprocess or read_graphs(folder).manifest["encoder"]["preprocess"])
    if not isinstance(recipe, Preprocess):
        raise CaptionerError(f"the Ray engine needs a checkpoint with a standard preprocessing recipe, not {recipe!r}")
    return recipe.to_dict()


def _cluster_plan(settings: RaySettings, device: str | None, progress: bool) -> PoolPlan:
    """The pool for the Ray this process is connected to."""
    import ray

    ray.data.DataContext.get_current().enable_progress_bars = progress
    if not progress:  # --quiet: no bars and no per-run log lines either
        logging.getLogger("ray.data").setLevel(logging.WARNING)
    resources = ray.cluster_resources()
    cuda = device is None or device.startswith("cuda")
    if device is not None and cuda and not resources.get("GPU"):
        raise CaptionerError(f"--device {device} was asked for, but the Ray cluster has no GPUs")
    plan = plan_pool(
        resources.get("CPU", 0.0), resources.get("GPU", 0.0), settings.actors, settings.actor_cpus, use_gpus=cuda
    )
    if progress:
        print(f"ray: {plan.describe()}", file=sys.stderr)
    return plan


@dataclass
class _Run:
    """What the driver counts while the results stream in."""

    done: int = 0
    out_of_domain: int = 0
    seconds: float = 0.0
    stats: str = ""


def _stream_results(ds: Any, outputs: _Outputs, on_result: Callable[[dict], None] | None) -> _Run:
    """Write each result row once (a repeat from a retried task is dropped)."""
    run = _Run()
    start = time.perf_counter()
    handled: set[str] = set()
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        rows = zip(batch["file"], batch["caption"], batch["score"], batch["trust"], batch["reason"])
        for key, caption, score, trust, reason in rows:
            key = str(key)
            if key in handled:
                continue
            handled.add(key)
            if reason:
                outputs.fail(key, str(reason))
                continue
            record = {"file": key, "caption": str(caption), "score": float(score), **json.loads(str(trust))}
            outputs.write(record)  # the local tool's record: file, caption, score, then the trust fields
            run.done += 1
            run.out_of_domain += record.get("in_domain") is False
            if on_result is not None:
                on_result(record)
    run.seconds = time.perf_counter() - start  # the summary's rate: the pipeline, not the Ray start
    run.stats = ds.stats()  # Ray Data's per-stage times, for readers of the summary and benchmarks
    return run


def caption_on_ray(
    sources: Sequence[str],
    out: str | os.PathLike,
    *,
    checkpoint: str | None = None,
    fmt: str | None = None,
    errors: str | os.PathLike | None = None,
    recursive: bool = False,
    path_column: str = "path",
    batch_size: int = 16,
    options: CaptionOptions | None = None,
    device: str | None = None,
    max_bytes: int | None = None,
    settings: RaySettings | None = None,
    progress: bool = True,
    on_result: Callable[[dict], None] | None = None,
) -> FolderSummary:
    """Caption every image named by ``sources`` into ``out`` on Ray (the module docstring).

    ``on_result(record)`` is called on the driver after each record is written."""
    from ..images import DEFAULT_MAX_BYTES
    from ..options import BATCH_SIZE

    if not ray_available():
        raise CaptionerError(RAY_INSTALL_HINT)
    BATCH_SIZE.check(batch_size)
    settings = settings or RaySettings()
    opts = options or CaptionOptions(labels=DEFAULT_LABELS)  # the local tool's default
    fmt = output_format(out, fmt)
    out = Path(out)
    errors = Path(errors) if errors is not None else default_errors_path(out)
    if out.resolve() == errors.resolve():
        raise CaptionerError(f"--errors and --out are the same file ({out}); pick another --errors")
    found, problems = list_sources(sources, recursive=recursive, path_column=path_column)
    preprocessing = _checkpoint_preprocessing(checkpoint)
    outputs = _Outputs(out, fmt, errors)
    done_keys = outputs.open()
    todo = [s for s in found if s.key not in done_keys]
    run, plan = _Run(), None
    try:
        for p in problems:
            outputs.fail(p.key, p.reason)
        writable = []
        for s in todo:
            reason = _unwritable_reason(s.key, fmt)
            if reason:
                outputs.fail(s.key, reason)
            else:
                writable.append(s)
        if writable:
            import ray

            started = _start_ray(settings)
            try:
                plan = _cluster_plan(settings, device, progress)
                actor_kwargs = {
                    "checkpoint": checkpoint,
                    "device": device or ("cuda" if plan.actor_gpus else "cpu"),
                    "threads": plan.threads,
                    "options": dataclasses.asdict(opts),
                }
                ds = _build_dataset(
                    writable, plan, preprocessing, batch_size, max_bytes or DEFAULT_MAX_BYTES, actor_kwargs
                )
                run = _stream_results(ds, outputs, on_result)
            finally:
                if started:
                    ray.shutdown()
    finally:
        outputs.close()
    if outputs.failed == 0:
        errors.unlink(missing_ok=True)  # an empty errors file would only confuse
    extra: dict = {"engine": "ray"}
    if plan is not None:
        extra.update(actors=plan.actors, actor_cpus=plan.actor_cpus, actor_gpus=plan.actor_gpus, ray_stats=run.stats)
    return FolderSummary(
        found=len(found),
        done=run.done,
        skipped=len(found) - len(todo),
        failed=outputs.failed,
        seconds=run.seconds,
        out=str(out),
        errors=str(errors),
        extra=extra,
        out_of_domain=run.out_of_domain,
    )
