"""Explaining captions on fresh held-out scenes: the hidden-unit analysis's time and best
units, and (for an attention checkpoint) how often an object word's attention peaks in a
cell of the scene's grid that holds that object, and how peaked those words' maps are (the
largest weight over the uniform weight 1/N).

    python -m bench.explain                                   # the shipped (pooled) model: units only
    python -m bench.explain --checkpoint runs/attention/best  # also the attention localisation

The scenes are rendered once under ``bench/.cache/explain-scenes-<seed>`` (``--images``
val images, default 200 for the units and the first 100 of them for the localisation).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from bench.common import apply_threads, base_parser, load_note, machine_info, write_json

if TYPE_CHECKING:
    from captioner.runtime.captioner import CaptionerBase

CACHE = Path(__file__).resolve().parent / ".cache"


def scenes(images: int, seed: int) -> Path:
    from captioner.training.scenes import generate_scenes

    out = CACHE / f"explain-scenes-{seed}-{images}"
    if not (out / "captions_val.json").is_file():
        generate_scenes(out, {"val": images}, seed=seed, progress=False, overwrite=True)
    return out


def peak_ratio(model: CaptionerBase, data: Path, split: str, images: int) -> tuple[float, int]:
    """(mean over object words of their map's largest weight divided by the uniform weight
    1/N, number of words): 1 is a flat map, N a map on one cell. Object words are the words
    of a kind drawn in the scene, as for the localisation."""
    import json

    from captioner.explain import explain, object_words

    truth = json.loads((data / f"scenes_{split}.json").read_text(encoding="utf-8"))
    words = object_words(truth["categories"])
    ratios: list[float] = []
    batch = truth["images"][:images]
    for lo in range(0, len(batch), 16):
        chunk = batch[lo : lo + 16]
        for img, ex in zip(chunk, explain(model, [data / "images" / i["file_name"] for i in chunk])):
            kinds = {o["kind"] for o in img["objects"]}
            for word, m in zip(ex.words, ex.maps):  # m: (h, w), sums to 1
                if words.get(word) in kinds:
                    ratios.append(float(m.max()) * m.size)
    return (sum(ratios) / len(ratios) if ratios else 0.0), len(ratios)


def main(argv: list[str] | None = None) -> int:
    p = base_parser("explain", __doc__ or "")
    p.add_argument("--images", type=int, default=200, help="held-out scenes for the units (default 200)")
    p.add_argument("--localise", type=int, default=100, help="of them, scenes for the localisation (default 100)")
    p.add_argument("--seed", type=int, default=20261201, help="seed of the scenes (default 20261201)")
    args = p.parse_args(argv)
    apply_threads(args)
    from captioner.explain import localisation
    from captioner.model import ReferenceCaptioner
    from captioner.units import analyse_units

    data = scenes(args.images, args.seed)
    info = {"machine": machine_info(), "load_start": load_note()}
    model = ReferenceCaptioner.load(args.checkpoint)  # the units read the PyTorch decoder's state
    t0 = time.perf_counter()
    analysis = analyse_units(model, data, "val", args.images)
    seconds = time.perf_counter() - t0
    print(
        f"| property | best unit | AUC | strength | shuffled | chance ceiling |  ({args.images} scenes, {seconds:.1f} s)"
    )
    print("| --- | --- | ---: | ---: | ---: | ---: |")
    rows = []
    for prop, units in analysis.top.items():
        t = units[0]
        ceiling = analysis.chance_ceiling[prop]
        print(f"| {prop} | {t.name} | {t.auc:.3f} | {t.strength:.3f} | {t.shuffled:.3f} | {ceiling:.3f} |")
        rows.append({"property": prop, **vars(t), "chance_ceiling": ceiling})
    result: dict = {**info, "model_id": model.model_id, "units_seconds": seconds, "units": rows}
    if hasattr(model.decoder, "attention"):
        loc = localisation(model, data, "val", args.localise)
        ratio, _ = peak_ratio(model, data, "val", args.localise)
        print(
            f"localisation: {loc.hits}/{loc.words} object words ({100 * loc.fraction:.1f} %) over {loc.images} "
            f"scenes; a uniformly random peak: {100 * loc.chance:.1f} %; an object word's peak weight: "
            f"{ratio:.2f}x the uniform weight (targets: >= 75 %, >= 3x)"
        )
        result["localisation"] = {
            "hits": loc.hits,
            "words": loc.words,
            "images": loc.images,
            "fraction": loc.fraction,
            "chance": loc.chance,
            "peak_over_uniform": ratio,
        }
    else:
        print("localisation: needs an attention checkpoint (--checkpoint)")
    result["load_end"] = load_note()
    print(f"wrote {write_json('explain', result, args.json)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
