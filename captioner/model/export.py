"""``captioner export CKPT``: a checkpoint's graphs for the torch-free runtime, self-checked.

Each graph is exported from the very modules the reference path runs (the encoder,
:class:`~captioner.model.steps.StartGraph`, :class:`~captioner.model.steps.StepGraph`, the
label head), then run by ONNX Runtime against PyTorch on fixed inputs: a graph that
disagrees is not written. The int8 encoder is written only when it passes its gate
(:class:`~captioner.model.quantize.Int8Tolerance` on the checkpoint's calibration images; for a
checkpoint trained on int8 features only a floor against broken quantisation,
:func:`~captioner.model.quantize.int8_tolerance`); otherwise the manifest says why. The folder
is replaced atomically.
"""

from __future__ import annotations

import io
import json
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from ..attention import AttentionDecoder
from ..checkpoint import GRAPHS
from ..decoder import CaptionDecoder
from ..errors import CheckpointError
from ..fsio import fsync_dir, replace_dir
from ..runtime.graphs import (
    ENCODER,
    ENCODER_INT8,
    GRAPHS_FORMAT,
    LABEL_NAMES,
    LABELS,
    MANIFEST,
    START,
    STEP,
    file_digest,
    session,
    source_digests,
)
from .fused import fuse_encoders
from .onnx_encoder import FEATURE_TOLERANCE, ONNX_OPSET, export_onnx
from .quantize import calibration_set, int8_tolerance, quantize_graph, read_calibration
from .reference import ReferenceCaptioner
from .steps import StartGraph, StepGraph

STEP_TOLERANCE = 1e-4  # max abs difference of log-probs, states and attention vs PyTorch


def _to_onnx(
    module: nn.Module, example: tuple[Tensor, ...], inputs: list[str], outputs: list[str], axes: dict
) -> bytes:
    module.eval()
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer chatter, not actionable by users
        torch.onnx.export(
            module,
            example,
            buf,  # type: ignore[arg-type]  # export writes to any binary file object
            input_names=inputs,
            output_names=outputs,
            dynamic_axes=axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    return buf.getvalue()


def _compare(what: str, graph: bytes, feed: dict[str, np.ndarray], reference: list[Tensor], tol: float) -> float:
    """Run ``graph`` on ``feed``; the largest difference to ``reference``, or CheckpointError."""
    got = session(graph).run(None, feed)
    diff = max(float(np.abs(g - r.detach().float().cpu().numpy()).max()) for g, r in zip(got, reference))
    if not diff <= tol:
        raise CheckpointError(f"the exported {what} disagrees with PyTorch (max abs diff {diff:.2e} > {tol:g})")
    return diff


def decoder_graphs(decoder: CaptionDecoder, feature_shape: tuple[int, ...]) -> tuple[bytes, bytes, dict]:
    """start.onnx and step.onnx of ``decoder`` (on features of ``feature_shape`` per image),
    each checked against PyTorch on random inputs; and their facts for the manifest."""
    dec = decoder.cpu().eval()
    c = dec.config
    lstm, attends = c.cell == "lstm", isinstance(dec, AttentionDecoder)
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(3, *feature_shape, generator=gen).abs()  # (3, F) or (3, N, C): CNN outputs are >= 0
    start = StartGraph(dec)
    state_names = ["h", "c"][: 2 if lstm else 1]
    feat_axes = {0: "batch", 1: "locations"} if attends else {0: "batch"}
    mem_axes = {0: "batch", 1: "locations"} if attends else {0: "batch"}
    start_out = ["memory", *state_names]
    start_graph = _to_onnx(
        start,
        (feats,),
        ["features"],
        start_out,
        {"features": feat_axes, "memory": mem_axes, **{n: {0: "batch"} for n in state_names}},
    )
    with torch.no_grad():
        memory, *state = start(feats)
    d_start = _compare("decoder start", start_graph, {"features": feats.numpy()}, [memory, *state], STEP_TOLERANCE)
    step = StepGraph(dec)
    n = 5
    words = torch.randint(0, c.vocab_size, (n,), generator=gen)
    rows = torch.tensor([0, 2, 1, 2, 0])  # hypotheses pick their image's memory
    st = tuple(torch.randn(n, c.num_layers, c.hidden_dim, generator=gen).tanh() for _ in state_names)
    step_in = ["words", "rows", "memory", *state_names]
    step_out = ["logp", *(f"{s}_out" for s in state_names)] + (["alpha"] if attends else [])
    axes = {"words": {0: "n"}, "rows": {0: "n"}, "memory": mem_axes, "logp": {0: "n"}}
    axes.update({s: {0: "n"} for s in state_names})
    axes.update({f"{s}_out": {0: "n"} for s in state_names})
    if attends:
        axes["alpha"] = {0: "n", 1: "locations"}
    step_graph = _to_onnx(step, (words, rows, memory, *st), step_in, step_out, axes)
    with torch.no_grad():
        ref = list(step(words, rows, memory, *st))
    feed = {"words": words.numpy(), "rows": rows.numpy(), "memory": memory.numpy()}
    feed.update({s: t.numpy() for s, t in zip(state_names, st)})
    d_step = _compare("decoder step", step_graph, feed, ref, STEP_TOLERANCE)
    facts = {
        "kind": "attention" if attends else "pooled",
        "vocab_size": c.vocab_size,
        "state": len(state_names),
        "attention": attends,
        "check": {"start_max_abs": d_start, "step_max_abs": d_step},
    }
    return start_graph, step_graph, facts


def _encoder_graphs(model: ReferenceCaptioner) -> tuple[dict[str, bytes], dict, tuple[int, ...]]:
    """encoder.onnx (checked), encoder-int8.onnx when it passes its gate; facts; feature shape."""
    enc, size = model.encoder.cpu().eval(), model.input_size
    fp32 = export_onnx(enc, size)
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)).clamp_(-1.0, 1.0)  # (2, 3, S, S)
    with torch.no_grad():
        reference = enc(x).float()  # (2, F) or (2, N, C)
    got = torch.from_numpy(session(fp32).run(None, {"images": x.numpy()})[0])
    ok, diff, cos = FEATURE_TOLERANCE.check(reference, got)
    if not ok:
        raise CheckpointError(
            f"the exported encoder disagrees with PyTorch (max abs diff {diff:.2e}, min cosine {cos:.6f})"
        )
    graphs = {ENCODER: fp32}
    facts: dict = {
        "name": model.encoder_name,
        "input_size": size,
        "output": "maps" if reference.dim() == 3 else "features",
        "preprocess": model.preprocessing.to_dict(),
        "check": {"max_abs": diff, "min_cosine": cos},
    }
    int8: dict[str, Any] = {"reason": "the checkpoint has no calibration images (calibration.safetensors)"}
    images = read_calibration(model.path) if model.path is not None else None
    if images:
        calib = calibration_set(images, model.preprocessing)
        batch = calib.tensors()
        q = quantize_graph(fp32, batch, calib.method, calib.exclude)
        x8 = batch[:32]
        with torch.no_grad():
            ref8 = enc(torch.from_numpy(x8)).float()
        tol = int8_tolerance(model.metadata)
        ok, mean, low = tol.check(ref8, torch.from_numpy(session(q).run(None, {"images": x8})[0]))
        gate: dict[str, Any] = {"mean_cosine": mean, "min_cosine": low, "images": calib.count}
        gate["allowed"] = {"mean_cosine": tol.min_mean_cosine, "min_cosine": tol.min_cosine}
        if ok:
            graphs[ENCODER_INT8] = q
            int8 = {"reason": "", "check": gate}
        else:
            int8 = {
                "reason": f"the int8 encoder drifts too far from PyTorch (feature cosine mean {mean:.4f}, min {low:.4f}; "
                f"allowed {tol.min_mean_cosine} / {tol.min_cosine})",
                "check": gate,
            }
    return graphs, {**facts, "int8": int8}, tuple(reference.shape[1:])


def _label_graph(model: ReferenceCaptioner, feature_dim: int) -> tuple[bytes, list[str]] | None:
    head = model.label_head()
    if head is None:
        return None
    head = head.cpu().eval()
    x = torch.randn(2, feature_dim, generator=torch.Generator().manual_seed(1)).abs()
    graph = _to_onnx(head, (x,), ["features"], ["logits"], {"features": {0: "batch"}, "logits": {0: "batch"}})
    with torch.no_grad():
        _compare("label head", graph, {"features": x.numpy()}, [head(x)], 1e-3)
    return graph, list(head.classes)


def export_graphs(checkpoint: str | Path, out: str | Path | None = None) -> Path:
    """Export and check every graph of ``checkpoint`` into ``out`` (default ``CKPT/graphs``),
    replacing that folder atomically; returns it. Raises :class:`CheckpointError` when a
    graph disagrees with PyTorch."""
    import onnx
    import onnxruntime

    folder = Path(checkpoint)
    target = Path(out) if out is not None else folder / GRAPHS
    model = ReferenceCaptioner.load(folder, device="cpu")
    files, encoder_facts, feature_shape = _encoder_graphs(model)
    files[START], files[STEP], decoder_facts = decoder_graphs(model.decoder, feature_shape)
    # the encoder graphs also give the start (captioner.model.fused): one call per batch
    encoder_facts["start"] = fuse_encoders(
        files, files[START], model.encoder, model.decoder, model.input_size, STEP_TOLERANCE
    )
    labels = _label_graph(model, feature_shape[-1])
    extra: dict[str, bytes] = {}
    if labels is not None:
        files[LABELS] = labels[0]
        extra[LABEL_NAMES] = json.dumps(labels[1]).encode()
    int8 = encoder_facts.pop("int8")
    manifest = {
        "format": GRAPHS_FORMAT,
        "opset": ONNX_OPSET,
        "tools": {"torch": torch.__version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__},
        "sources": source_digests(folder),
        "encoder": encoder_facts,
        "decoder": decoder_facts,
        "int8": int8,
        "files": {},
    }
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        for name, data in {**files, **extra}.items():
            (tmp / name).write_bytes(data)
            manifest["files"][name] = {"sha256": file_digest(tmp / name), "bytes": len(data)}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        tmp.chmod(0o755)
        for p in tmp.iterdir():
            p.chmod(0o644)
        fsync_dir(tmp)
        replace_dir(tmp, target, aside=target.with_name(f".{target.name}.old"))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
