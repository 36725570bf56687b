"""The decoder's start inside the encoder graph: one session call gives features and start.

The start (:class:`~captioner.model.steps.StartGraph`: for the attention decoder the
49 x 1280 -> 512 annotation projection, ~64 MFLOP an image) runs once per image. In its own
one-thread session it cost the decoder side most of its time; appended to the encoder graph
it runs on the encoder's threads in the same call, and ``captioner.runtime`` reads
``features``, ``memory`` and the initial state from one ``run``.

The fused graph is the encoder graph (fp32 or int8, unchanged: its ``features`` output is
what the int8 gate compares) followed by ``start.onnx``'s nodes in float32, its inner names
prefixed so nothing collides. So the fused ``memory`` is start.onnx's own on the graph's own
features, which :func:`check_fused` verifies against PyTorch at export.
"""

from __future__ import annotations

import numpy as np
import onnx
import torch
from torch import nn

from ..decoder import CaptionDecoder
from ..errors import CheckpointError
from ..runtime.graphs import ENCODER, ENCODER_INT8, FEATURES, session
from .onnx_encoder import FEATURE_TOLERANCE
from .steps import StartGraph

PREFIX = "start/"  # the start graph's inner names inside the fused graph


def fuse_start(encoder_graph: bytes, start_graph: bytes) -> bytes:
    """``encoder_graph`` (images -> features) with ``start_graph`` (features -> memory, state)
    appended: images -> features, memory, h[, c]."""
    enc, start = onnx.load_from_string(encoder_graph), onnx.load_from_string(start_graph)
    keep = {FEATURES, *(o.name for o in start.graph.output)}  # the names the two graphs share

    def rename(name: str) -> str:
        return name if not name or name in keep else PREFIX + name

    g, s = enc.graph, start.graph
    for node in s.node:
        node.name = rename(node.name or node.op_type)
        node.input[:] = [rename(n) for n in node.input]
        node.output[:] = [rename(n) for n in node.output]
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            raise CheckpointError("the decoder start has a subgraph; it cannot be fused into the encoder graph")
    for init in s.initializer:
        init.name = rename(init.name)
    for info in s.value_info:
        info.name = rename(info.name)
    g.node.extend(s.node)
    g.initializer.extend(s.initializer)
    g.value_info.extend(s.value_info)
    g.output.extend(s.output)
    have = {o.domain: o for o in enc.opset_import}
    for o in start.opset_import:
        if o.domain not in have:
            enc.opset_import.append(o)
        elif have[o.domain].version != o.version:
            raise CheckpointError(f"the encoder and start graphs use different opsets ({o.domain or 'ai.onnx'})")
    onnx.checker.check_model(enc)
    return enc.SerializeToString()


def check_fused(
    what: str, graph: bytes, images: np.ndarray, start: nn.Module, tolerance: float
) -> tuple[np.ndarray, float]:
    """Run the fused ``graph`` on ``images`` (B, 3, S, S); its memory and state must be
    ``start`` (the PyTorch StartGraph) of the graph's own features within ``tolerance``, else
    CheckpointError. Returns the features and the largest difference."""
    features, *rest = session(graph).run(None, {"images": images})
    with torch.no_grad():
        reference = start(torch.from_numpy(features))  # (memory, h[, c])
    if len(rest) != len(reference):
        raise CheckpointError(f"the exported {what} gives {len(rest)} start outputs, not {len(reference)}")
    diff = max(float(np.abs(g - r.float().numpy()).max()) for g, r in zip(rest, reference))
    if not diff <= tolerance:
        raise CheckpointError(
            f"the exported {what}'s decoder start disagrees with PyTorch (max abs diff {diff:.2e} > {tolerance:g})"
        )
    return features, diff


def fuse_encoders(
    files: dict[str, bytes],
    start_graph: bytes,
    encoder: nn.Module,
    decoder: CaptionDecoder,
    input_size: int,
    tolerance: float,
) -> dict:
    """Replace the encoder graphs in ``files`` (fp32, and int8 when present) by their fused
    versions, each checked: the fp32 features against ``encoder`` within FEATURE_TOLERANCE,
    every start against :class:`StartGraph` of ``decoder`` within ``tolerance``. Returns the
    checks' figures for the manifest."""
    start = StartGraph(decoder.cpu().eval())
    x = torch.randn(2, 3, input_size, input_size, generator=torch.Generator().manual_seed(2)).clamp_(-1.0, 1.0)
    facts: dict = {"outputs": [FEATURES, *(o.name for o in onnx.load_from_string(start_graph).graph.output)]}
    for name in (ENCODER, ENCODER_INT8):
        if name not in files:
            continue
        fused = fuse_start(files[name], start_graph)
        features, diff = check_fused(name, fused, x.numpy(), start, tolerance)
        facts[name] = {"start_max_abs": diff}
        if name == ENCODER:
            with torch.no_grad():
                reference = encoder.cpu().eval()(x).float()  # (2, F) or (2, N, C)
            ok, fdiff, cos = FEATURE_TOLERANCE.check(reference, torch.from_numpy(features))
            if not ok:
                raise CheckpointError(
                    f"the exported {name} disagrees with PyTorch (max abs diff {fdiff:.2e}, min cosine {cos:.6f})"
                )
        files[name] = fused
    return facts
