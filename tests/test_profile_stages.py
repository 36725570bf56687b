"""The stage table of ``bench/profile_serve.py``: py-spy samples of the torch-free runtime
land in the stage that spent them, and waiting threads are left out of the shares."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.profile_serve import shares, stage_of

SERVE = 'process 9:"python -m captioner serve"'
BATCHER = "Batcher._run (service/batcher.py:225)"
GENERATE = "CaptionerBase.generate (captioner/runtime/captioner.py:160)"


@pytest.mark.parametrize(
    "frames, stage",
    [
        ([SERVE, BATCHER, GENERATE, "beam_search (captioner/runtime/search.py:200)", "where (numpy/core.py:1)"],
         "generation (search)"),
        ([SERVE, BATCHER, GENERATE, "sequential (captioner/runtime/search.py:150)", "OnnxStep.step (captioner/runtime/graphs.py:230)"],
         "generation (search)"),
        ([SERVE, BATCHER, GENERATE, "finish (captioner/runtime/results.py:120)"], "trust, labels, finish"),
        ([SERVE, BATCHER, GENERATE, "DomainModel.distance (captioner/trust.py:280)"], "trust, labels, finish"),
        ([SERVE, BATCHER, GENERATE, "CaptionerBase.labels (captioner/runtime/captioner.py:190)"], "trust, labels, finish"),
        ([SERVE, BATCHER, "Captioner.encode (captioner/runtime/captioner.py:330)"], "encoder"),
        (["serve (captioner/decode_budget.py:240)", "load_image (captioner/images.py:300)"], "image decode"),
        (["serve (captioner/decode_budget.py:240)", "_crop (captioner/decode_budget.py:225)"], "preprocess"),
        (["serve (captioner/decode_budget.py:240)"], "decode hand-off"),
        ([SERVE, "run (uvicorn/server.py:60)"], "HTTP + multipart"),
        ([SERVE, "Thread.run (threading.py:975)", "Condition.wait (threading.py:320)"], "idle"),
        ([SERVE, BATCHER, "stack (numpy/_core/shape_base.py:460)"], "other"),
    ],
)  # fmt: skip
def test_each_sample_lands_in_the_stage_that_spent_it(frames, stage):
    assert stage_of(frames) == stage


def test_shares_add_up_without_the_waiting_threads(tmp_path: Path):
    raw = tmp_path / "profile.raw"
    lines = [
        f"{SERVE};{BATCHER};Captioner.encode (captioner/runtime/captioner.py:330) 60",
        f"{SERVE};{BATCHER};{GENERATE};beam_search (captioner/runtime/search.py:200) 30",
        f"{SERVE};{BATCHER};stack (numpy/_core/shape_base.py:460) 10",
        f"{SERVE};Thread.run (threading.py:975);Condition.wait (threading.py:320) 25",
    ]
    raw.write_text("\n".join(lines) + "\n", encoding="utf-8")
    got = shares(raw)
    assert got["encoder"] == pytest.approx(0.6) and got["generation (search)"] == pytest.approx(0.3)
    assert got["other"] == pytest.approx(0.1) and got["idle (left out)"] == pytest.approx(0.25)
    assert sum(v for k, v in got.items() if k != "idle (left out)") == pytest.approx(1.0)
