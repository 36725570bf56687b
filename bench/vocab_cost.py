"""What a real-photo vocabulary costs a training step, relative to the scenes one.

The shipped models were trained on 111 tokens; COCO with ``--min-count 5`` has about
10,000 words, and the output layer and its softmax grow with them. This times one training
step (loss forward and backward, random features and captions, one batch) of the pooled
and the attention decoder at the shipped sizes and at the decoder defaults, with 111 and
10,000 tokens, interleaved in one process, and reports each setting's time per (image,
caption) pair and its ratio to the shipped setting at 111 tokens. docs/real-photos.md turns
those ratios and the shipped runs' measured epoch times into its training-time estimates.
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from captioner.attention import AttentionConfig, AttentionDecoder
from captioner.decoder import CaptionDecoder, DecoderConfig

from . import common

NAME = "vocab_cost"
#: (embed_dim, hidden_dim, img_proj_dim, attention_dim): the shipped models' and the decoder defaults
SIZES = {"shipped": (128, 256, 128, 128), "defaults": (256, 512, 256, 256)}
VOCABS = (111, 10_000)


def build(kind: str, size: str, vocab: int, batch: int) -> tuple[CaptionDecoder, torch.Tensor]:
    """A decoder and a batch of random features: (B, 1280) pooled or (B, 49, 1280) maps."""
    embed, hidden, proj, attention = SIZES[size]
    if kind == "pooled":
        cfg = DecoderConfig(vocab, 1280, embed_dim=embed, hidden_dim=hidden, img_proj_dim=proj, dropout=0.1)
        return CaptionDecoder(cfg), torch.randn(batch, 1280)
    att = AttentionConfig(vocab, 1280, embed, hidden, proj, dropout=0.1, attention_dim=attention, annotation_dim=512)
    return AttentionDecoder(att), torch.randn(batch, 49, 1280)


def step_seconds(model: CaptionDecoder, features: torch.Tensor, vocab: int, length: int) -> float:
    tokens = torch.randint(4, vocab, (features.shape[0], length))  # (B, T)
    tokens[:, 0], tokens[:, -1] = 1, 2  # <start> ... <end>
    started = time.perf_counter()
    model.loss(features, tokens).backward()
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    p = common.base_parser(NAME, __doc__ or "", checkpoint=False)
    p.add_argument("--batch", type=int, default=128, help="pairs per step (default 128)")
    p.add_argument("--length", type=int, default=14, help="tokens per caption with <start> and <end> (default 14)")
    p.add_argument("--rounds", type=int, default=5, help="timed steps per setting, after one warm-up (default 5)")
    args = p.parse_args(argv)
    args.threads = args.threads or 1
    common.apply_threads(args)
    info = common.machine_info()
    common.header("decoder training step: vocabulary 111 vs 10,000", info)
    torch.manual_seed(0)
    rows = []
    for kind in ("pooled", "attention"):
        settings = [(size, v) for size in SIZES for v in VOCABS]
        models = {s: build(kind, s[0], s[1], args.batch) for s in settings}
        times: dict[tuple[str, int], list[float]] = {s: [] for s in settings}
        for _ in range(args.rounds + 1):  # interleaved, so a change of load hits every setting alike
            for s, (model, feats) in models.items():
                times[s].append(step_seconds(model, feats, s[1], args.length))
        base = statistics.median(times[("shipped", 111)][1:])
        for (size, vocab), t in times.items():
            median = statistics.median(t[1:])
            rows.append(
                {
                    "decoder": kind,
                    "sizes": size,
                    "vocab": vocab,
                    "ms_per_pair": 1000 * median / args.batch,
                    "x_shipped_111": median / base,
                }
            )
    columns = [
        ("decoder", "decoder"),
        ("sizes", "sizes"),
        ("vocab", "tokens"),
        ("ms_per_pair", "ms per pair"),
        ("x_shipped_111", "x shipped at 111"),
    ]
    print(common.format_table(rows, columns))
    payload = {"machine": info, "load_end": common.load_note(), "settings": vars(args), "rows": rows}
    path = common.write_json(NAME, payload, args.json)
    print(f"results: {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
