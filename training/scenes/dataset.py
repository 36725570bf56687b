"""Write a scenes dataset to disk in the COCO captions format, with its ground truth.

    OUT/
      dataset.json             what made it: generator version, seed, split sizes, catalogue
      captions_train.json      COCO captions: images[] (id, file_name, width, height), annotations[]
      captions_val.json
      captions_test.json
      scenes_train.json        ground truth per image: background, kinds with counts and boxes,
      scenes_val.json          plus the catalogue's words, so the scene-accuracy metric needs
      scenes_test.json         nothing but this file
      images/train/000000.jpg  (file_name in the COCO files is relative to images/)

Image ``i`` of split ``s`` is drawn from ``random.Random(f"{seed}/{s}/{i}")`` alone, so a
dataset is the same whatever the number of worker processes, and a bigger train split
starts with the images of a smaller one. ``captioner.training.datasets.load_dataset(OUT)`` reads
it through the same COCO loader users' data goes through.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

from captioner.errors import CaptionerError

from .captions import describe_scene
from .catalogue import BACKGROUNDS, CATEGORIES, CATEGORY_BY_NAME, Category
from .generator import SceneConfig, render_scene, sample_scene

GENERATOR = "captioner-scenes"
GENERATOR_VERSION = 1
TRUTH_FORMAT = "captioner-scenes-truth/1"
SPLITS = ("train", "val", "test")
IMAGE_FORMATS = {"jpeg": ".jpg", "png": ".png"}
CHUNK = 200  # images per task handed to a worker process


@dataclass
class ScenesSummary:
    """What :func:`generate_scenes` wrote and how fast."""

    out_dir: Path
    splits: dict[str, int]
    seconds: float

    @property
    def images(self) -> int:
        return sum(self.splits.values())

    @property
    def images_per_second(self) -> float:
        return self.images / self.seconds if self.seconds > 0 else float("inf")


def make_example(
    seed: int,
    split: str,
    index: int,
    config: SceneConfig = SceneConfig(),
    categories: Sequence[Category] = CATEGORIES,
    captions_per_image: int = 5,
):
    """Image ``index`` of ``split``: (PIL image, ground-truth dict, captions). Pure function of its arguments."""
    rng = random.Random(f"{seed}/{split}/{index}")
    scene = sample_scene(rng, config, categories)
    captions = describe_scene(scene, rng, captions_per_image)
    return render_scene(scene, config), scene.truth(), captions


def _save(image: Image.Image, path: Path, image_format: str) -> None:
    if image_format == "jpeg":
        # quality 95 without chroma subsampling: faithful colours at the sprites' edges, and
        # about four times faster to write than even the fastest PNG setting
        image.save(path, "JPEG", quality=95, subsampling=0)
    else:
        image.save(path, "PNG", compress_level=1)


def _render_chunk(task: tuple) -> list[dict]:
    """Worker: draw and save images ``start..stop-1`` of one split; return their records."""
    out_dir, seed, split, start, stop, config, kinds, n_captions, image_format = task
    categories = [CATEGORY_BY_NAME[k] for k in kinds]
    records = []
    for index in range(start, stop):
        image, truth, captions = make_example(seed, split, index, config, categories, n_captions)
        file_name = f"{split}/{index:06d}{IMAGE_FORMATS[image_format]}"
        _save(image, Path(out_dir) / "images" / file_name, image_format)
        records.append({"index": index, "file_name": file_name, "truth": truth, "captions": captions})
    return records


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse to write into a folder holding anything but an earlier scenes dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise CaptionerError(f"{out_dir}: exists and is not a folder; choose another --out")
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return
    meta = out_dir / "dataset.json"
    try:
        ours = json.loads(meta.read_text(encoding="utf-8")).get("generator") == GENERATOR
    except (OSError, ValueError, AttributeError):
        ours = False
    if not ours:
        raise CaptionerError(
            f"{out_dir}: folder is not empty and holds no scenes dataset; choose an empty or new --out"
        )
    if not overwrite:
        raise CaptionerError(f"{out_dir}: a scenes dataset is already there; pass --force to replace it")
    for split in SPLITS:  # remove only what an earlier run wrote
        shutil.rmtree(out_dir / "images" / split, ignore_errors=True)
        for prefix in ("captions", "scenes"):
            (out_dir / f"{prefix}_{split}.json").unlink(missing_ok=True)
    meta.unlink()


def generate_scenes(
    out_dir: str | os.PathLike,
    splits: Mapping[str, int],
    seed: int = 0,
    *,
    workers: int = 1,
    image_format: str = "jpeg",
    categories: Sequence[Category] = CATEGORIES,
    config: SceneConfig = SceneConfig(),
    captions_per_image: int = 5,
    overwrite: bool = False,
    progress: bool = True,
) -> ScenesSummary:
    """Render a captioned scenes dataset into ``out_dir`` (layout in the module docstring).

    ``splits`` maps split names ("train", "val", "test") to image counts; ``workers`` > 1
    renders in that many processes (the result is identical).
    """
    out_dir = Path(out_dir)
    _check_request(splits, image_format, categories, config)
    _prepare_out_dir(out_dir, overwrite)
    t0 = time.perf_counter()
    kinds = [c.name for c in categories]
    records = _render_all(out_dir, splits, seed, workers, config, kinds, captions_per_image, image_format, progress)
    # the words of every known kind and colour, not only those drawn, so that the metric
    # also recognises a kind the model names but this dataset never shows
    catalogue = {
        "categories": [c.to_dict() for c in CATEGORIES],
        "backgrounds": [b.name for b in BACKGROUNDS],
    }
    next_ids = [1, 1]  # the next image id and caption id, running on across the splits
    for split in splits:
        _write_split(out_dir, split, seed, records[split], config, catalogue, next_ids)
    seconds = time.perf_counter() - t0
    _write_json(
        out_dir / "dataset.json",
        {
            "generator": GENERATOR,
            "version": GENERATOR_VERSION,
            "seed": seed,
            "splits": dict(splits),
            "image_format": image_format,
            "captions_per_image": captions_per_image,
            "kinds_drawn": kinds,
            "config": asdict(config),
            **catalogue,
        },
    )
    return ScenesSummary(out_dir=out_dir, splits=dict(splits), seconds=seconds)


def _check_request(
    splits: Mapping[str, int], image_format: str, categories: Sequence[Category], config: SceneConfig
) -> None:
    unknown = set(splits) - set(SPLITS)
    if unknown:
        raise CaptionerError(f"unknown split(s) {sorted(unknown)}; the splits are {list(SPLITS)}")
    if any(n < 0 for n in splits.values()) or sum(splits.values()) == 0:
        raise CaptionerError("split sizes must be >= 0 and at least one image in total")
    if image_format not in IMAGE_FORMATS:
        raise CaptionerError(f"image format must be one of {sorted(IMAGE_FORMATS)}, not {image_format!r}")
    if len(categories) < config.max_kinds:
        raise CaptionerError(f"need at least {config.max_kinds} categories, got {len(categories)}")


def _render_all(
    out_dir: Path,
    splits: Mapping[str, int],
    seed: int,
    workers: int,
    config: SceneConfig,
    kinds: list[str],
    captions_per_image: int,
    image_format: str,
    progress: bool,
) -> dict[str, list[dict]]:
    """Render every image (in chunks, over ``workers`` processes); the records per split, in order."""
    tasks = []
    for split, n in splits.items():
        if n:
            (out_dir / "images" / split).mkdir(parents=True, exist_ok=True)
        for start in range(0, n, CHUNK):
            end = min(n, start + CHUNK)
            tasks.append((str(out_dir), seed, split, start, end, config, kinds, captions_per_image, image_format))
    results: dict[tuple[str, int], list[dict]] = {}
    bar = tqdm(total=sum(splits.values()), desc="rendering scenes", unit="img", disable=not progress)
    for task, records in zip(tasks, _map(tasks, workers)):
        results[(task[2], task[3])] = records
        bar.update(len(records))
    bar.close()
    return {split: [r for start in range(0, n, CHUNK) for r in results[(split, start)]] for split, n in splits.items()}


def _write_split(
    out_dir: Path,
    split: str,
    seed: int,
    records: list[dict],
    config: SceneConfig,
    catalogue: dict,
    next_ids: list[int],
) -> None:
    """captions_<split>.json (COCO format) and scenes_<split>.json (the ground truth)."""
    coco_images, annotations, truths = [], [], []
    for r in records:
        image_id = next_ids[0]
        next_ids[0] += 1
        coco_images.append(
            {"id": image_id, "file_name": r["file_name"], "width": config.image_size, "height": config.image_size}
        )
        for caption in r["captions"]:
            annotations.append({"id": next_ids[1], "image_id": image_id, "caption": caption})
            next_ids[1] += 1
        truths.append({"id": image_id, "file_name": r["file_name"], **r["truth"]})
    _write_json(
        out_dir / f"captions_{split}.json",
        {
            "info": {
                "description": f"captioner built-in scenes, {split} split",
                "version": str(GENERATOR_VERSION),
                "seed": seed,
            },
            "licenses": [{"id": 1, "name": "SIL Open Font License 1.1 (sprites from Noto Color Emoji)"}],
            "images": coco_images,
            "annotations": annotations,
        },
    )
    _write_json(
        out_dir / f"scenes_{split}.json",
        {"format": TRUTH_FORMAT, "split": split, "seed": seed, **catalogue, "images": truths},
    )


def _map(tasks: list[tuple], workers: int) -> Iterator[list[dict]]:
    """Run the render tasks in order, in this process or in a pool of ``workers``."""
    if workers <= 1 or len(tasks) <= 1:
        yield from map(_render_chunk, tasks)
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield from pool.map(_render_chunk, tasks)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")), encoding="utf-8")
    tmp.replace(path)


def render_preview(seed: int = 0, rows: int = 3, cols: int = 4, split: str = "train") -> Image.Image:
    """A grid of the first ``rows * cols`` images of ``split`` with one caption under each (for docs)."""
    config = SceneConfig()
    size, text_h, pad = config.image_size, 46, 6
    font = ImageFont.load_default(size=13)
    sheet = Image.new("RGB", (cols * (size + pad) + pad, rows * (size + text_h + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i in range(rows * cols):
        image, _, captions = make_example(seed, split, i, config)
        x = pad + (i % cols) * (size + pad)
        y = pad + (i // cols) * (size + text_h + pad)
        sheet.paste(image, (x, y))
        lines = [""]  # wrap the first caption onto at most three lines
        for w in captions[0].split():
            trial = (lines[-1] + " " + w).strip()
            if draw.textlength(trial, font=font) <= size or not lines[-1]:
                lines[-1] = trial
            else:
                lines.append(w)
        draw.multiline_text((x, y + size + 1), "\n".join(lines[:3]), fill=(20, 20, 20), font=font, spacing=1)
    return sheet
