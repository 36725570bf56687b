"""The trainer: one run from the dataset to the best checkpoint scored on the test split.

:meth:`Trainer.run` does, in order: check the run folder (a new run, or ``--resume``),
load the splits and the vocabulary, cache the features (or prepare live encoding when
fine-tuning), build the decoder, optimizer and loss scaler (restoring them on resume),
then per epoch: train, validate, save ``best``/``last`` and the log; at the end, score
``best`` on the test split. Each step is one method below.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from captioner.attention import build_decoder
from captioner.checkpoint import update_metadata
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.errors import CaptionerError
from captioner.model import ReferenceCaptioner
from captioner.model.checkpoint import load_checkpoint, save_checkpoint
from captioner.vocab import Vocabulary

from . import runlog
from .config import METRICS, TrainConfig, auto_threads
from .distributed import DistContext
from .inputs import PairImages, cached_inputs, encode_live, report_skipped
from .int8_features import Int8FeatureEncoder, int8_feature_encoder
from .optim import (
    TrainingModel,
    build_optimizer,
    epoch_seed,
    lr_factor,
    seed_everything,
    set_learning_rate,
    set_trainable_encoder,
)
from .resume import LAST, SavedRun, TrainerState, check_resume_config, load_run, save_last
from .splits import Pairs, SplitData, build_vocabulary, load_splits, make_pairs, sizes_line, trim_padding
from .validation import caption_features, caption_metrics, teacher_forced_loss

BEST = "best"


@dataclass
class TrainResult:
    out: Path
    best_path: Path
    best_epoch: int
    best_metrics: dict
    test_metrics: dict | None
    history: list[dict]
    feature_seconds: float
    train_seconds: float
    skipped_images: list[tuple[str, str]] = field(default_factory=list)
    is_main: bool = True  # False on the other processes of a torchrun launch
    metric: str = ""  # what picked the best epoch
    steps_run: int = 0  # optimizer steps this call took (fewer than the total on a resume)

    @property
    def total_seconds(self) -> float:
        return self.feature_seconds + self.train_seconds


class Trainer:
    """One training run as ``cfg`` says; see the module docstring and docs/training.md."""

    def __init__(
        self,
        cfg: TrainConfig,
        ctx: DistContext,
        resume: bool = False,
        on_epoch_end: Callable[[dict], None] | None = None,
    ) -> None:
        self.cfg, self.ctx, self.resume, self.on_epoch_end = cfg, ctx, resume, on_epoch_end
        self.out = Path(cfg.out)
        self.show = cfg.progress and ctx.is_main
        self.saved: SavedRun | None = None
        self.state = TrainerState()
        self.history: list[dict] = []
        self.skipped: list[tuple[str, str]] = []
        self.features: dict[str, Tensor] = {}  # cached features (N, F) per split; empty when fine-tuning
        self.int8: Int8FeatureEncoder | None = None  # precision int8: what computed the features
        self.steps_run = 0

    def log(self, msg: str) -> None:
        if self.ctx.is_main:
            from tqdm.auto import tqdm

            tqdm.write(msg, file=sys.stderr)

    # ------------------------------------------------------------------ the run
    def run(self) -> TrainResult:
        torch.set_num_threads(self.cfg.threads or auto_threads())
        self._open_run_folder()
        self._load_data()
        t_feat = time.perf_counter()
        self._prepare_inputs()
        self.feature_seconds = time.perf_counter() - t_feat
        self._build_model()
        self._epochs()
        test = self._test() if self.ctx.is_main else None
        if self.ctx.is_main:
            self._write_trust()
            self._write_results(test)
            self._hint_if_weak(test)
        self.ctx.barrier()
        return TrainResult(
            out=self.out,
            best_path=self.out / BEST,
            best_epoch=self.state.best_epoch,
            best_metrics=next((r for r in self.history if r["epoch"] == self.state.best_epoch), {}),
            test_metrics=test,
            history=self.history,
            feature_seconds=self.feature_seconds,
            train_seconds=self.state.elapsed,
            skipped_images=self.skipped,
            is_main=self.ctx.is_main,
            metric=self.metric,
            steps_run=self.steps_run,
        )

    def _open_run_folder(self) -> None:
        """A new run in a folder without one, or a resume of the run there (same settings)."""
        cfg, out = self.cfg, self.out
        if self.resume:
            self.saved = load_run(out)
            self.cfg = cfg = check_resume_config(self.saved.config, cfg)
            self.log(f"resuming {out} after epoch {self.saved.state.epoch}")
        elif (out / LAST).exists():
            raise CaptionerError(
                f"{out}: a training run is already here; pass --resume to continue it, or choose another --out"
            )
        if cfg.batch_size % self.ctx.world_size:
            raise CaptionerError(
                f"batch size {cfg.batch_size} does not split evenly over {self.ctx.world_size} processes"
            )
        if self.ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
            runlog.write_json(out / runlog.RUN_CONFIG, cfg.to_dict())
        self.ctx.barrier()

    def _load_data(self) -> None:
        self.splits, self.data_info = load_splits(self.cfg, self.log)
        if self.saved is not None:  # the run's own vocabulary, whatever the data says now
            self.vocab: Vocabulary = self.saved.checkpoint.vocab
        else:
            self.vocab = build_vocabulary(self.splits["train"], self.cfg.min_count)
        self.log(
            f"data: {sizes_line(self.data_info)}; vocabulary {len(self.vocab):,} tokens "
            f"(min count {self.cfg.min_count})"
        )

    def _prepare_inputs(self) -> None:
        """The encoder, and each split's readable images (with cached features unless fine-tuning)."""
        from captioner.encoders import build_encoder

        cfg = self.cfg
        seed_everything(cfg.seed)  # a randomly initialised encoder (weights="random") is the same on every launch
        # the attention decoder reads the map before pooling, (B, N, F), cached in float16
        self.encoder = build_encoder(cfg.encoder, weights=cfg.encoder_weights, spatial=cfg.decoder == "attention")
        self.preprocess = self.encoder.spec.preprocess
        self.fine_tuning = cfg.fine_tune != "none"
        wanted = ["train", "val"] + (["test"] if cfg.evaluate_test and "test" in self.splits else [])
        if self.fine_tuning:  # images are read and encoded at every step, no cache
            self.sources: dict[str, SplitData] = {s: self.splits[s] for s in wanted}
        else:
            feature_encoder: nn.Module = self.encoder
            if cfg.precision == "int8":  # the decoder learns the int8 encoder's features
                self.int8 = int8_feature_encoder(self.encoder, self.splits["train"].paths)
                feature_encoder = self.int8
            cached = cached_inputs(cfg, self.splits, wanted, feature_encoder, self.ctx, self.log)
            self.sources, self.features, self.skipped = cached.sources, cached.features, cached.skipped
        if self.skipped:
            report_skipped(self.skipped, self.out, self.log, write=self.ctx.is_main)
        for s in ("train", "val"):
            if len(self.sources[s]) == 0:
                raise CaptionerError(f"no readable images left in the {s} split")
        self.pairs: dict[str, Pairs] = {
            s: make_pairs(self.vocab, self.sources[s], cfg.max_words) for s in ("train", "val")
        }

    def _build_model(self) -> None:
        """Decoder (and trainable CNN blocks), optimizer, loss scaler, the served-model view;
        on resume all of them as ``last`` left them."""
        cfg, ctx = self.cfg, self.ctx
        seed_everything(cfg.seed)
        max_length = min(cfg.max_words, self.pairs["train"].longest_caption + 5)
        feature_dim = self.features["train"].size(-1) if self.features else int(self.encoder.feature_dim)
        self.decoder_config: DecoderConfig = cfg.decoder_config(len(self.vocab), feature_dim, max_length)
        self.decoder: CaptionDecoder = build_decoder(self.decoder_config)
        encoder_params: list[nn.Parameter] = []
        if self.fine_tuning:
            encoder_params = set_trainable_encoder(self.encoder, cfg.fine_tune, cfg.fine_tune_blocks)
        self.model = TrainingModel(self.decoder, self.encoder if self.fine_tuning else None, cfg.label_smoothing)
        self.model.to(ctx.device)
        self.encoder.eval()  # frozen batch-norm statistics
        self.optimizer = build_optimizer(self.decoder, encoder_params, cfg)
        self.amp_dtype = None
        if cfg.amp and ctx.device.type == "cuda":
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        if self.saved is not None:
            self._restore(self.saved)
        else:
            self.state.feature_seconds = self.feature_seconds
        self.captioner = ReferenceCaptioner(
            self.encoder, self.decoder, self.vocab, preprocess=self.preprocess, device=ctx.device
        )
        self.ddp_model: nn.Module = self.model
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            self.ddp_model = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        self.metric = cfg.metric
        if self.metric == "auto":
            self.metric = "scene_accuracy" if self.sources["val"].truth is not None else "cider_d"

    def _restore(self, saved: SavedRun) -> None:
        ck = saved.checkpoint
        self.decoder.load_state_dict(ck.decoder_state)
        if self.fine_tuning and ck.encoder_state is not None:
            self.encoder.load_state_dict(ck.encoder_state)
        self.optimizer.load_state_dict(saved.optimizer)
        self.state = saved.state
        if self.state.scaler:
            self.scaler.load_state_dict(self.state.scaler)
        self.history = saved.history or runlog.read_log(self.out, self.state.epoch)
        self.feature_seconds += self.state.feature_seconds

    # ------------------------------------------------------------------ epochs
    def _epochs(self) -> None:
        cfg, ctx = self.cfg, self.ctx
        self.per_rank = cfg.batch_size // ctx.world_size
        self.sampler: torch.utils.data.DistributedSampler = torch.utils.data.DistributedSampler(
            range(len(self.pairs["train"])),  # type: ignore[arg-type]
            num_replicas=ctx.world_size,
            rank=ctx.rank,
            shuffle=True,
            seed=cfg.seed,
            drop_last=False,
        )
        self.total_steps = math.ceil(len(self.sampler) / self.per_rank) * cfg.epochs
        n_params = sum(p.numel() for p in self.decoder.parameters()) / 1e6
        self.log(
            f"training {n_params:.2f}M decoder parameters ({cfg.decoder} {cfg.cell}, hidden {cfg.hidden_dim}) on "
            f"{len(self.pairs['train'])} caption pairs, {self.total_steps // cfg.epochs} steps/epoch"
            f"{f', {ctx.world_size} processes' if ctx.distributed else ''}, selecting by {self.metric}"
        )
        t_session, elapsed_before = time.perf_counter(), self.state.elapsed
        for epoch in range(self.state.epoch + 1, cfg.epochs + 1):
            if self.state.stopped_early:
                break
            t_epoch = time.perf_counter()
            train = self._train_epoch(epoch)
            val = self._validate()
            self.state.elapsed = elapsed_before + (time.perf_counter() - t_session)
            row, improved = self._record(epoch, train, val, time.perf_counter() - t_epoch)
            if ctx.is_main:
                self._save(row, improved)
            ctx.barrier()
            if self.on_epoch_end is not None:
                self.on_epoch_end(row)
            if self.state.stopped_early:
                self.log(
                    f"early stop: no better {self.metric} for {cfg.patience} epochs "
                    f"(best: epoch {self.state.best_epoch})"
                )

    def _batches(self, epoch: int) -> list[Tensor]:
        """This rank's batches of pair indices for one epoch (a pure function of seed and epoch)."""
        self.sampler.set_epoch(epoch)
        if self.cfg.batch_by_image:
            order = self._by_image(epoch)  # (N / world,)
        else:
            order = torch.tensor(list(iter(self.sampler)), dtype=torch.long)  # (N / world,)
        return [order[i : i + self.per_rank] for i in range(0, order.numel(), self.per_rank)]

    def _by_image(self, epoch: int) -> Tensor:
        """This rank's pairs for one epoch with the images shuffled (seed + epoch) and each
        image's captions side by side, padded and split over the ranks as the sampler does."""
        image, world = self.pairs["train"].image, self.ctx.world_size  # (P,)
        g = torch.Generator().manual_seed(self.cfg.seed + epoch)
        place = torch.empty(int(image.max()) + 1, dtype=torch.long)  # (I,): each image's turn
        place[torch.randperm(place.numel(), generator=g)] = torch.arange(place.numel())
        order = torch.sort(place[image], stable=True).indices  # (P,)
        order = torch.cat([order, order[: (-order.numel()) % world]])  # (P + pad,)
        return order[self.ctx.rank :: world]

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        """One pass over the train pairs; train loss per token and mean gradient norm (all ranks)."""
        from tqdm.auto import tqdm

        torch.manual_seed(epoch_seed(self.cfg.seed, epoch, self.ctx.rank))  # dropout masks of this epoch
        batches = self._batches(epoch)
        self.model.train()
        self.encoder.eval()  # frozen batch-norm statistics
        images = iter(self._image_loader(batches)) if self.fine_tuning else None
        sum_loss = sum_tok = sum_norm = 0.0
        desc = f"epoch {epoch}/{self.cfg.epochs}"
        bar = tqdm(batches, desc=desc, unit="step", disable=not self.show, dynamic_ncols=True, leave=False)
        for b in bar:
            x, toks = self._batch(b, next(images) if images is not None else None)
            loss_sum, n_tok, norm = self._step(x, toks)
            sum_loss, sum_tok, sum_norm = sum_loss + loss_sum, sum_tok + n_tok, sum_norm + norm
            if self.show:
                lr = self.cfg.lr * lr_factor(self.state.step - 1, self.total_steps, self.cfg)
                bar.set_postfix(loss=f"{sum_loss / max(sum_tok, 1):.3f}", lr=f"{lr:.2e}")
        bar.close()
        tot = self.ctx.all_reduce_sum([sum_loss, sum_tok, sum_norm, len(batches)])
        return {
            "train_loss": float(tot[0] / max(float(tot[1]), 1.0)),
            "grad_norm": float(tot[2] / max(float(tot[3]), 1.0)),
        }

    def _image_loader(self, batches: list[Tensor]) -> torch.utils.data.DataLoader:
        dataset = PairImages(self.sources["train"].paths, self.pairs["train"].image, self.preprocess)
        return torch.utils.data.DataLoader(
            dataset, batch_sampler=[b.tolist() for b in batches], num_workers=self.cfg.num_workers, collate_fn=list
        )

    def _batch(self, b: Tensor, items: list | None) -> tuple[Tensor | None, Tensor | None]:
        """(inputs, tokens (B, T)) of a batch of pair indices: cached features (B, F), or the
        readable images (B, 3, H, W) when fine-tuning (None, None when none is readable)."""
        pairs, device = self.pairs["train"], self.ctx.device
        if items is None:
            x: Tensor | None = self.features["train"][pairs.image[b]].to(device, non_blocking=True)  # (B, F)
        else:
            for i, img, err in items:
                name = self.sources["train"].paths[int(pairs.image[i])]
                if img is None and name not in {p for p, _ in self.skipped}:
                    self.skipped.append((name, err))
                    self.log(f"skipped unreadable image {name}: {err}")
            ok = [(i, img) for i, img, _ in items if img is not None]
            b = torch.tensor([i for i, _ in ok], dtype=torch.long)
            x = torch.from_numpy(np.stack([t for _, t in ok])).to(device) if ok else None  # (B, 3, H, W)
        toks = trim_padding(pairs.tokens[b]).to(device) if b.numel() else None  # (B, T)
        return x, toks

    def _step(self, x: Tensor | None, toks: Tensor | None) -> tuple[float, float, float]:
        """One optimizer step; (summed token loss, tokens, gradient norm) of this rank."""
        cfg, ctx = self.cfg, self.ctx
        n_tok = float((toks[:, 1:] != 0).sum()) if toks is not None else 0.0
        global_tok = float(ctx.all_reduce_sum([n_tok])[0]) if ctx.distributed else n_tok
        set_learning_rate(self.optimizer, lr_factor(self.state.step, self.total_steps, cfg))
        amp = self.amp_dtype
        with torch.autocast(ctx.device.type, dtype=amp or torch.float32, enabled=amp is not None):
            if x is not None and toks is not None:
                loss_sum = self.ddp_model(x, toks)  # ()
            else:  # every image of this rank's batch was unreadable: contribute zero gradient
                loss_sum = torch.stack([p.sum() * 0.0 for p in self.model.trainable()]).sum()
        # mean over the global batch's tokens; DDP averages gradients over ranks, hence * world
        loss = loss_sum / max(global_tok, 1.0) * ctx.world_size
        self.scaler.scale(loss).backward()
        self.scaler.unscale_(self.optimizer)
        clip = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        norm = nn.utils.clip_grad_norm_(self.model.trainable(), clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.state.step += 1
        self.steps_run += 1
        return float(loss_sum.detach()), n_tok, float(norm)

    # ------------------------------------------------------------------ validation and saving
    def _validate(self) -> dict:
        """Validation loss (all ranks) and caption metrics (each rank captions its share)."""
        ctx, val = self.ctx, self.sources["val"]
        feats = encode_live(self.encoder, val, self.preprocess, ctx.device, self.show) if self.fine_tuning else None
        feats = feats if feats is not None else self.features["val"]
        part = teacher_forced_loss(self.decoder, feats, self.pairs["val"], ctx.device, ctx.rank, ctx.world_size)
        vl = ctx.all_reduce_sum(part)
        mine = list(range(ctx.rank, len(val), ctx.world_size))
        caps = caption_features(self.captioner, feats[mine]) if mine else []
        gathered = ctx.gather_objects(list(zip(mine, caps)))
        metrics = None
        if ctx.is_main and gathered is not None:
            by_index = dict(p for part in gathered for p in part)
            all_caps = [by_index[i] for i in range(len(val))]
            metrics = caption_metrics(all_caps, val)
            metrics["examples"] = all_caps[:3]
        metrics = ctx.broadcast_object(metrics)
        assert metrics is not None  # rank 0's, on every rank
        return {"val_loss": float(vl[0] / max(float(vl[1]), 1.0)), **metrics}

    def _record(self, epoch: int, train: dict, val: dict, seconds: float) -> tuple[dict, bool]:
        """The epoch's log row; updates the best epoch and the early-stopping count."""
        cfg, state, metric = self.cfg, self.state, self.metric
        val_loss = val["val_loss"]
        value = val_loss if metric == "val_loss" else val.get(metric)
        if value is None:
            raise CaptionerError(
                f"metric {metric!r} is not available for this dataset; pass --metric "
                f"(one of {', '.join(k for k in METRICS if k != 'auto')})"
            )
        score = [-value, -val_loss] if metric == "val_loss" else [value, -val_loss]
        improved = state.best_score is None or score > state.best_score
        if improved:
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        else:
            state.bad_epochs += 1
            state.stopped_early = state.bad_epochs >= cfg.patience > 0
        state.epoch = epoch
        state.scaler = self.scaler.state_dict() if self.scaler.is_enabled() else None
        row = {
            "epoch": epoch,
            "step": state.step,
            "lr": cfg.lr * lr_factor(max(state.step - 1, 0), self.total_steps, cfg),
            "train_loss": train["train_loss"],
            "val_loss": val_loss,
            "grad_norm": train["grad_norm"],
            **{k: v for k, v in val.items() if k not in ("examples", "val_loss")},
            "epoch_seconds": seconds,
            "elapsed_seconds": state.elapsed,
            "best": improved,
        }
        self.history.append(row)
        self.log(
            f"epoch {epoch}: loss {row['train_loss']:.3f} val {val_loss:.3f} | {runlog.format_metrics(row)}"
            f"{' *' if improved else ''} | {seconds:.1f}s | {val['examples'][0]!r}"
        )
        return row, improved

    def _save(self, row: dict, improved: bool) -> None:
        """best (when improved), the log, then last, then the curves: in that order."""
        cfg = self.cfg
        meta = runlog.checkpoint_metadata(
            cfg, self.data_info, row, self.metric, self.feature_seconds, self.state.elapsed
        )
        checkpoint: dict[str, Any] = dict(
            decoder=self.decoder,
            decoder_config=self.decoder_config,
            encoder_name=cfg.encoder,
            preprocess=self.preprocess.to_dict(),
            vocab=self.vocab,
            metadata=meta,
            encoder_state=self.encoder.state_dict() if self.fine_tuning else None,
        )
        if self.int8 is not None:  # served as trained: the int8 graph of the same calibration set
            meta.update(precision="int8", calibration=self.int8.facts())
        if improved:
            save_checkpoint(
                self.out / BEST,
                **checkpoint,
                dtype=torch.float16 if cfg.save_fp16 else None,
                extra_files=self.int8.write_calibration if self.int8 is not None else None,
            )
        runlog.write_log(self.out, self.history)
        save_last(
            self.out, checkpoint=checkpoint, cfg=cfg, optimizer=self.optimizer, state=self.state, history=self.history
        )
        if cfg.plot:
            runlog.plot(self.out, self.history, self.metric)

    # ------------------------------------------------------------------ the end
    def _best_model(self) -> ReferenceCaptioner:
        """OUT/best as saved (fp16 included) on the run's encoder (its tuned weights loaded)."""
        ck = load_checkpoint(self.out / BEST)
        best = build_decoder(ck.decoder_config)
        best.load_state_dict(ck.decoder_state)
        if self.fine_tuning and ck.encoder_state is not None:
            self.encoder.load_state_dict(ck.encoder_state)
        return ReferenceCaptioner(self.encoder, best, ck.vocab, preprocess=self.preprocess, device=self.ctx.device)

    def _test(self) -> dict | None:
        """Score the best checkpoint, as saved (fp16 included), on the test split."""
        test = self.sources.get("test")
        if not self.cfg.evaluate_test or test is None or not len(test):
            return None
        model = self._best_model()
        if self.fine_tuning:
            feats = encode_live(self.encoder, test, self.preprocess, self.ctx.device, self.show)
        else:
            feats = self.features["test"]
        caps = caption_features(model, feats)
        metrics = caption_metrics(caps, test)
        metrics["images"] = len(caps)
        examples = [{"id": test.ids[i], "caption": caps[i]} for i in range(min(5, len(caps)))]
        update_metadata(self.out / BEST, {"test": metrics, "test_examples": examples})
        rows = [
            {"id": test.ids[i], "file": test.paths[i], "caption": c, "references": test.captions[i]}
            for i, c in enumerate(caps)
        ]
        runlog.write_jsonl(self.out / runlog.TEST_CAPTIONS, rows)  # for error analysis
        return metrics

    def _write_trust(self) -> None:
        """The kept model's confidence calibration and out-of-domain statistics (captioner.trust)."""
        from .trust_fit import trust_step

        usable = not self.fine_tuning and bool(self.features) and (self.out / BEST).exists()
        trust_step(self.out / BEST, self._best_model if usable else None, self.features, self.sources["val"], self.log)

    def _write_results(self, test: dict | None) -> None:
        run = runlog.run_summary(self.state, self.feature_seconds, self.ctx.world_size)
        if (self.out / BEST).exists():  # the whole run, not just up to the best epoch
            update_metadata(self.out / BEST, {"run": run})
        best_row = next((r for r in self.history if r["epoch"] == self.state.best_epoch), {})
        summary = {**run, "metric": self.metric, "best_val": best_row, "test": test}
        runlog.write_json(self.out / runlog.RESULTS, {**summary, "skipped_images": [list(s) for s in self.skipped]})

    def _hint_if_weak(self, test: dict | None) -> None:
        """Say what usually helps when the run learned almost nothing."""
        best = next((r for r in self.history if r["epoch"] == self.state.best_epoch), {})
        hint = runlog.weak_result_hint(test or best, len(self.sources["train"]), self.state.epoch)
        if hint:
            self.log(hint)
