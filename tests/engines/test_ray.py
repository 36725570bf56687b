"""Batch captioning on Ray Data: same rows as the local folder tool, errors, resume, a lost actor.

One local Ray (2 CPUs, loopback, no dashboard) serves every Ray test in this module.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path

import numpy as np
import pytest
import ray  # the test extra installs Ray Data (make test)
from PIL import Image

from captioner import Captioner
from captioner.cli import main as cli_main
from captioner.engines.parquet import read_parquet_records
from captioner.engines.ray_engine import RaySettings, caption_on_ray, plan_pool
from captioner.engines.sources import list_sources
from captioner.errors import CaptionerError
from captioner.folder import caption_folder
from captioner.outputs import read_records

GOOD = 36
BAD = {
    "corrupt.jpg": "a truncated JPEG",
    "empty.png": "0 bytes",
    "notes.jpg": "text with an image name",
    "noise.png": "random bytes",
}


def save_image(path: Path, seed: int) -> None:
    """A smooth random picture, small so the tests stay fast (the model sees 224 x 224)."""
    rng = np.random.default_rng(seed)
    small = (rng.random((3, 4, 3)) * 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(small).resize((64, 48), Image.Resampling.BILINEAR).save(path)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """36 good images (JPEG and PNG, one in a sub-folder) and 4 that cannot be captioned."""
    root = tmp_path_factory.mktemp("photos")
    for i in range(GOOD):
        sub = "sub/" if i == 7 else ""
        save_image(root / f"{sub}img{i:02d}.{'png' if i % 3 == 0 else 'jpg'}", i)
    jpeg = (root / "img01.jpg").read_bytes()
    (root / "corrupt.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (root / "empty.png").write_bytes(b"")
    (root / "notes.jpg").write_text("not an image")
    (root / "noise.png").write_bytes(np.random.default_rng(5).bytes(500))
    (root / "readme.txt").write_text("not listed: no image extension")
    return root


@pytest.fixture(scope="module")
def local_run(folder, tmp_path_factory) -> tuple[dict[str, dict], dict[str, str]]:
    """The local folder tool's captions and errors for ``folder``, the reference."""
    out = tmp_path_factory.mktemp("local") / "captions.jsonl"
    model = Captioner.load()
    summary = caption_folder(model, [folder], out, recursive=True, batch_size=8, workers=1, progress=False)
    assert (summary.done, summary.failed) == (GOOD, len(BAD))
    records = {r["file"]: r for r in read_records(out, "jsonl")}
    errors = {
        e["path"]: e["reason"] for e in map(json.loads, out.with_name("captions.errors.jsonl").read_text().splitlines())
    }
    return records, errors


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray for the module: 2 CPUs, loopback only, no dashboard."""
    start = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    yield
    ray.shutdown()
    print(f"\nRay tests: {time.perf_counter() - start:.1f} s with the Ray start")


def errors_of(path: Path) -> dict[str, str]:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows) == len({r["path"] for r in rows}), "a file listed twice in the errors"
    return {r["path"]: r["reason"] for r in rows}


def check_same_as_local(records: list[dict], local_run) -> None:
    local, _ = local_run
    files = [r["file"] for r in records]
    assert len(files) == len(set(files)), "a file captioned twice"
    assert set(files) == set(local)
    for r in records:
        ref = local[r["file"]]
        assert set(r) == set(ref)  # the same columns: file, caption, score and the trust fields
        assert r["caption"] == ref["caption"], r["file"]
        assert r["in_domain"] == ref["in_domain"]
        assert [label["name"] for label in r["labels"] or []] == [label["name"] for label in ref["labels"] or []]
        for k in ("score", "confidence", "domain_distance"):
            assert (r[k] is None) == (ref[k] is None) and (r[k] is None or r[k] == pytest.approx(ref[k], abs=1e-3))


# ---------------------------------------------------------------------------- on Ray
def test_same_rows_as_local_then_resume_captions_nothing(ray_cluster, folder, local_run, tmp_path):
    out = tmp_path / "captions.jsonl"
    summary = caption_on_ray([str(folder)], out, recursive=True, batch_size=4, progress=False)
    assert (summary.found, summary.done, summary.skipped, summary.failed) == (GOOD + len(BAD), GOOD, 0, len(BAD))
    check_same_as_local(read_records(out, "jsonl"), local_run)
    _, local_errors = local_run
    assert errors_of(out.with_name("captions.errors.jsonl")) == local_errors  # same files, same reasons
    assert len({r["caption"] for r in read_records(out, "jsonl")}) > 1  # the comparison has teeth

    before = out.read_bytes()
    code = cli_main(["caption", str(folder), "-r", "--engine", "ray", "--out", str(out), "--quiet"])
    assert code == 0
    assert out.read_bytes() == before  # nothing captioned again
    assert set(errors_of(out.with_name("captions.errors.jsonl"))) == set(BAD)  # failures are retried each run


COPIES = 8  # the killed-actor run needs work left when its first record reaches the driver


@pytest.fixture(scope="module")
def copied_folder(folder, tmp_path_factory) -> Path:
    """``COPIES`` copies of ``folder`` side by side: 288 good images, 32 bad, captions known from ``local_run``."""
    root = tmp_path_factory.mktemp("copies")
    for k in range(COPIES):
        shutil.copytree(folder, root / f"copy{k}")
    return root


def test_a_killed_actor_loses_and_repeats_nothing(ray_cluster, copied_folder, local_run, tmp_path):
    """SIGKILL one of two actors after the first result: Ray restarts it and reruns its batch.

    With 36 images Ray Data could finish every batch and retire the pool before the driver handled its
    first record (1 run in 7); 8 copies leave ~150 batches, seconds of work, when the kill comes."""
    out = tmp_path / "captions.parquet"
    killed: list[str] = []
    after_kill = 0

    def kill_one_actor(record: dict) -> None:
        nonlocal after_kill
        if killed:
            after_kill += 1
            return
        from ray._private import state

        actors = [a for a in state.actors().values() if "MapWorker" in a["ActorClassName"] and a["State"] == "ALIVE"]
        assert actors, "no captioning actor alive"
        os.kill(int(actors[0]["Pid"]), signal.SIGKILL)
        killed.append(actors[0]["ActorID"])

    summary = caption_on_ray(
        [str(copied_folder)],
        out,
        recursive=True,
        batch_size=2,
        settings=RaySettings(actors=2),
        progress=False,
        on_result=kill_one_actor,
    )
    assert killed and after_kill > 0, "the actor must die while work is left"
    from ray._private import state

    # Ray brought it back for the rest; its count can trail the run's end by a moment
    deadline = time.monotonic() + 10
    while (info := state.actors(actor_id=killed[0]))["NumRestarts"] < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert info["NumRestarts"] >= 1, info
    assert summary.extra["actors"] == 2 and summary.extra["actor_cpus"] == 0.5
    assert (summary.done, summary.failed) == (COPIES * GOOD, COPIES * len(BAD))
    records = read_parquet_records(out)
    assert len(records) == COPIES * GOOD
    for k in range(COPIES):  # each copy captioned once, as the local folder tool captioned the original
        prefix = f"copy{k}/"  # keys are relative to the folder given
        copy = [r | {"file": r["file"].removeprefix(prefix)} for r in records if r["file"].startswith(prefix)]
        check_same_as_local(copy, local_run)
    errors = errors_of(tmp_path / "captions.parquet.errors.jsonl")
    assert set(errors) == {f"copy{k}/{name}" for k in range(COPIES) for name in BAD}


# ---------------------------------------------------------------------------- without Ray work
def test_pool_plan_leaves_cpus_for_decoding():
    two = plan_pool(2)  # an actor per core: decoding needs a fifth of the CPU, not a whole core
    assert (two.actors, two.actor_cpus, two.decode_cpus, two.threads) == (2, 0.5, 1.0, 1)
    one = plan_pool(2, actors=1)
    assert (one.actors, one.actor_cpus) == (1, 1.0)
    assert (plan_pool(1).actors, plan_pool(1).actor_cpus) == (1, 0.5)
    assert (plan_pool(4).actors, plan_pool(4).actor_cpus) == (3, 1.0)
    big = plan_pool(32)
    assert big.actors == 26 and big.actors * big.actor_cpus + big.decode_cpus <= 32
    gpu = plan_pool(16, 4)
    assert (gpu.actors, gpu.actor_gpus, gpu.actor_cpus) == (4, 1.0, 1.0)
    assert plan_pool(16, 4, use_gpus=False).actor_gpus == 0.0
    with pytest.raises(CaptionerError, match=r"at most 1 CPUs for actors"):
        plan_pool(2, actors=2, actor_cpus=1)  # the stall seen with whole-CPU actors on 2 CPUs


def test_sources_manifests_globs_and_uris(folder, tmp_path):
    manifest = tmp_path / "list.jsonl"
    manifest.write_text(json.dumps({"path": str(folder / "img01.jpg")}) + "\n" + json.dumps({"path": "rel.jpg"}) + "\n")
    csv_manifest = tmp_path / "list.csv"
    csv_manifest.write_text(f"id,image\n1,{folder / 'img02.jpg'}\n")
    found, _ = list_sources([str(manifest)])
    assert {s.key for s in found} == {str(folder / "img01.jpg"), "rel.jpg"}
    assert {s.location for s in found} == {str(folder / "img01.jpg"), str(tmp_path / "rel.jpg")}
    found, _ = list_sources([str(csv_manifest)], path_column="image")
    assert [s.key for s in found] == [str(folder / "img02.jpg")]
    with pytest.raises(CaptionerError, match="no 'path' column"):
        list_sources([str(csv_manifest)])
    found, _ = list_sources([str(folder / "img0*.png")])
    assert [s.key for s in found] == ["img00.png", "img03.png", "img06.png", "img09.png"]
    found, problems = list_sources([f"file://{folder}"], recursive=True)
    assert len(found) == GOOD + len(BAD) and "sub/img07.jpg" in {s.key for s in found} and not problems
    with pytest.raises(CaptionerError, match="matches no files"):
        list_sources([str(folder / "*.webp")])


def test_cli_without_ray_says_how_to_install(folder, tmp_path, monkeypatch, capsys):
    import captioner.engines.ray_engine as engine

    monkeypatch.setattr(engine, "ray_available", lambda: False)
    code = cli_main(["caption", str(folder), "--engine", "ray", "--out", str(tmp_path / "c.jsonl")])
    assert code == 1
    assert 'pip install "captioner[ray]"' in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["caption", str(folder), "--engine", "ray", "--ray-actors", "0", "--out", str(tmp_path / "c.jsonl")])
    assert exit_info.value.code == 2
    assert "Ray actors must be an integer from 1 to 10000" in capsys.readouterr().err


def test_parquet_parts_resume_after_a_crash(tmp_path):
    from captioner.engines.parquet import ParquetParts

    out = tmp_path / "captions.parquet"
    first = ParquetParts(out, rows_per_part=2)
    assert first.open_for_resume() == set()
    for i in range(5):
        first.write({"file": f"{i}.jpg", "caption": f"caption {i}", "score": -float(i)})
    # killed here: two whole parts on disk, the fifth row only in memory, a half-written part left behind
    (out / ".part-00002.parquet.tmp").write_bytes(b"PAR1 torn")
    again = ParquetParts(out, rows_per_part=2)
    assert again.open_for_resume() == {"0.jpg", "1.jpg", "2.jpg", "3.jpg"}
    assert not list(out.glob(".part-*"))  # the torn part is gone
    again.write({"file": "4.jpg", "caption": "caption 4", "score": -4.0})
    again.close()
    assert [r["file"] for r in read_parquet_records(out)] == [f"{i}.jpg" for i in range(5)]
    assert sorted(p.name for p in out.iterdir()) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    (out / "part-00003.parquet").write_text("not parquet")
    with pytest.raises(CaptionerError, match="not a captions part"):
        ParquetParts(out).open_for_resume()


def test_decode_stage_reads_uris_through_pyarrow(folder, tmp_path):
    """The decode task on its own: a file:// URI gives the same tensor as the local path;
    a missing or too large file gives its reason, before anything is decoded."""
    from captioner.encoders import Preprocess
    from captioner.engines.ray_engine import prepare_batch
    from captioner.pipeline import prepare

    recipe = Captioner.load().preprocessing
    assert isinstance(recipe, Preprocess)
    good = folder / "img01.jpg"
    big = tmp_path / "big.jpg"
    big.write_bytes(good.read_bytes() + bytes(1000))  # one byte over the limit is enough
    locations = [f"file://{good}", f"file://{folder}/nope.jpg", f"file://{big}", str(folder / "empty.png")]
    batch = {"key": np.array(list("abcd"), dtype=object), "location": np.array(locations, dtype=object)}
    limit = good.stat().st_size
    out = prepare_batch(batch, recipe.to_dict(), max_bytes=limit)
    assert list(out["reason"]) == [
        "",
        "file not found",
        f"file is {limit + 1000} bytes, more than the limit of {limit}",
        "file is empty (0 bytes)",
    ]
    assert out["pixels"].shape == (4, 3, recipe.crop_size, recipe.crop_size)  # (N, 3, S, S)
    assert np.array_equal(out["pixels"][0], prepare(good, recipe))
