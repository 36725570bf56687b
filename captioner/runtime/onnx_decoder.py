"""The decoder's generation step run by ONNX Runtime on one thread (see :mod:`captioner.runtime`).

Greedy, beam search and sampling keep running in :mod:`captioner.decoder`; only
``CaptionDecoder.step`` is swapped for :class:`OnnxDecoderStep`, after a self-check.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import torch
from torch import Tensor, nn

from ..attention import AttentionConfig
from ..decoder import CaptionDecoder
from .onnx import ONNX_OPSET, unavailable_reason


def _memory_example(decoder: CaptionDecoder, n: int, generator: torch.Generator | None = None) -> Tensor:
    """A random second input of ``step`` for export and self-check: the projected image (n, P)
    of the pooled decoder, or the attention decoder's memory (n, locations, D + A)."""
    cfg = decoder.config
    if isinstance(cfg, AttentionConfig):
        return torch.randn(n, 4, cfg.annotation_width + cfg.attention_dim, generator=generator)  # (n, 4, D + A)
    return torch.randn(n, cfg.img_proj_dim, generator=generator)  # (n, P)


class _StepGraph(nn.Module):
    """``CaptionDecoder.step`` with the state as plain tensors, for export: (words (N,),
    img (N, P), h (L, N, H)[, c (L, N, H)]) -> (log-probs (N, V), h'[, c'])."""

    def __init__(self, decoder: CaptionDecoder) -> None:
        super().__init__()
        self.decoder = decoder
        self.lstm = decoder.config.cell == "lstm"

    def forward(self, words: Tensor, img: Tensor, h: Tensor, c: Tensor | None = None) -> tuple:
        state = (h, c) if self.lstm and c is not None else h
        logp, state = self.decoder.step(words, img, state)  # (N, V)
        return (logp, *state) if self.lstm else (logp, state)


class OnnxDecoderStep:
    """One generation step of a :class:`~captioner.decoder.CaptionDecoder` run by ONNX Runtime
    on one thread: same signature as ``CaptionDecoder.step``.

    A generation step is a handful of small matrix products; eager PyTorch spends more time
    around them (oneDNN's LSTM sets up a primitive per call, and multi-threaded ops wait for
    each other whenever another thread, such as an image decoder, holds a core) than in
    them. One ORT call per step on one thread avoids both.
    """

    backend = "onnxruntime"

    def __init__(self, decoder: CaptionDecoder) -> None:
        import onnxruntime as ort

        cfg = decoder.config
        self.lstm = cfg.cell == "lstm"
        self.layers, self.hidden = cfg.num_layers, cfg.hidden_dim
        n = 2  # export with a batch of 2 (1 can be specialised away); the batch axis is dynamic
        example: tuple[Tensor, ...] = (
            torch.full((n,), 1, dtype=torch.long),
            _memory_example(decoder, n),
            torch.zeros(cfg.num_layers, n, cfg.hidden_dim),
        )
        names = ["words", "img", "h"]
        outs = ["logp", "h_out"]
        img_axes = {0: "n", 1: "locations"} if example[1].dim() == 3 else {0: "n"}  # attention memory: any grid
        axes = {"words": {0: "n"}, "img": img_axes, "h": {1: "n"}, "logp": {0: "n"}, "h_out": {1: "n"}}
        if self.lstm:
            example += (torch.zeros(cfg.num_layers, n, cfg.hidden_dim),)
            names.append("c")
            outs.append("c_out")
            axes.update(c={1: "n"}, c_out={1: "n"})
        buf = io.BytesIO()
        was_training = decoder.training
        decoder.eval()
        try:
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    _StepGraph(decoder),
                    example,
                    buf,  # type: ignore[arg-type]  # export writes to any binary file object
                    input_names=names,
                    output_names=outs,
                    dynamic_axes=axes,
                    opset_version=ONNX_OPSET,
                    do_constant_folding=True,
                    dynamo=False,
                )
        finally:
            decoder.train(was_training)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        self.session = ort.InferenceSession(buf.getvalue(), options, providers=["CPUExecutionProvider"])
        self._outs = outs

    def __call__(self, words: Tensor, img: Tensor, state):
        """previous words (N,), projected image (N, P), state -> (log-probs (N, V), new state)."""
        n = words.size(0)
        if state is None:  # init_state=False: the recurrent state starts at zero
            zeros = torch.zeros(self.layers, n, self.hidden)  # (L, N, H)
            state = (zeros, zeros) if self.lstm else zeros
        feed = {"words": words.numpy(), "img": np.ascontiguousarray(img.float().numpy())}
        if self.lstm:
            feed["h"], feed["c"] = (np.ascontiguousarray(s.numpy()) for s in state)
        else:
            feed["h"] = np.ascontiguousarray(state.numpy())
        out = self.session.run(self._outs, feed)
        logp = torch.from_numpy(out[0])  # (N, V)
        if self.lstm:
            return logp, (torch.from_numpy(out[1]), torch.from_numpy(out[2]))
        return logp, torch.from_numpy(out[1])


def build_onnx_decoder(
    decoder: CaptionDecoder, *, device: torch.device | str = "cpu", max_abs: float = 1e-4
) -> tuple[nn.Module | None, str]:
    """A shallow copy of ``decoder`` whose ``step`` runs on ONNX Runtime (greedy, beam search
    and sampling all go through ``step``), checked against the eager step; or (None, reason).

    The copy shares every parameter with ``decoder``, which stays the plain PyTorch reference.
    """
    import copy

    reason = unavailable_reason(device)
    if reason:
        return None, reason
    try:
        step = OnnxDecoderStep(decoder)
    except Exception as e:
        return None, f"building the ONNX Runtime decoder step failed ({type(e).__name__}: {str(e)[:200]})"
    cfg = decoder.config
    gen = torch.Generator().manual_seed(0)
    n = 3
    words = torch.randint(0, cfg.vocab_size, (n,), generator=gen)
    img = _memory_example(decoder, n, gen)  # (n, P), or the attention memory (n, 4, C + A)
    h = torch.randn(cfg.num_layers, n, cfg.hidden_dim, generator=gen).tanh()
    state = (h, torch.randn(cfg.num_layers, n, cfg.hidden_dim, generator=gen)) if step.lstm else h
    try:
        with torch.inference_mode():
            ref_logp, ref_state = decoder.step(words, img, state)
        logp, new_state = step(words, img, state)
    except Exception as e:
        return None, f"the ONNX Runtime decoder step failed its self-check run ({type(e).__name__}: {e})"
    ref_h = ref_state[0] if step.lstm else ref_state
    got_h = new_state[0] if step.lstm else new_state
    diff = max(float((ref_logp - logp).abs().max()), float((ref_h - got_h).abs().max()))
    if not diff <= max_abs:
        return None, f"the ONNX Runtime decoder step disagrees with PyTorch (max abs diff {diff:.2e} > {max_abs:g})"
    fast = copy.copy(decoder)  # shares parameters and submodules; only `step` differs
    fast.step = step  # type: ignore[method-assign]  # an instance attribute: greedy / beam_search / sample call it
    fast.__dict__["onnx_step"] = step  # plain attribute (not a submodule): what replaced ``step``
    return fast, ""
