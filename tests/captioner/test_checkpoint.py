import json
import os
import pickle

import pytest
import torch

from captioner.checkpoint import load_checkpoint, save_checkpoint
from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.errors import CheckpointError
from captioner.vocab import Vocabulary


def _parts():
    vocab = Vocabulary.build(["a red dog", "a blue car"])
    cfg = DecoderConfig(vocab_size=len(vocab), feature_dim=8, embed_dim=8, hidden_dim=16, img_proj_dim=4)
    torch.manual_seed(0)
    return vocab, cfg, CaptionDecoder(cfg)


def _save(path, **kw):
    vocab, cfg, dec = _parts()
    args = dict(
        decoder=dec,
        decoder_config=cfg,
        encoder_name="efficientnet_lite0",
        preprocess={"resize_size": 224},
        vocab=vocab,
        metadata={"metrics": {"bleu4": 0.5}},
    )
    args.update(kw)
    return save_checkpoint(path, **args), dec


def test_round_trip(tmp_path):
    path, dec = _save(tmp_path / "ck")
    assert sorted(os.listdir(path)) == ["config.json", "metadata.json", "model.safetensors", "vocab.json"]
    ck = load_checkpoint(path)
    assert ck.encoder_name == "efficientnet_lite0" and ck.metadata["metrics"]["bleu4"] == 0.5
    for k, v in dec.state_dict().items():
        assert torch.equal(ck.decoder_state[k], v)
    assert ck.decoder_config == dec.config


def test_fp16_storage_is_smaller_and_close(tmp_path):
    p32, dec = _save(tmp_path / "a")
    p16, _ = _save(tmp_path / "b", dtype=torch.float16)
    assert (p16 / "model.safetensors").stat().st_size < 0.6 * (p32 / "model.safetensors").stat().st_size
    ck = load_checkpoint(p16)
    for k, v in dec.state_dict().items():
        assert ck.decoder_state[k].dtype == v.dtype
        assert torch.allclose(ck.decoder_state[k], v, atol=1e-2)


def test_vocab_mismatch_is_refused(tmp_path):
    path, _ = _save(tmp_path / "ck")
    vocab = json.loads((path / "vocab.json").read_text())
    vocab["tokens"].append("extra")
    (path / "vocab.json").write_text(json.dumps(vocab))
    with pytest.raises(CheckpointError, match="vocab"):
        load_checkpoint(path)
    _v, cfg, dec = _parts()
    with pytest.raises(CheckpointError, match="vocab"):
        save_checkpoint(
            tmp_path / "x",
            decoder=dec,
            decoder_config=cfg,
            encoder_name="e",
            preprocess={},
            vocab=Vocabulary.build(["other words entirely here"]),
        )


class _Boom:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickle_in_place_of_weights_is_refused_and_never_run(tmp_path, monkeypatch):
    path, _ = _save(tmp_path / "ck")
    monkeypatch.chdir(tmp_path)
    (path / "model.safetensors").write_bytes(pickle.dumps({"w": _Boom()}))
    with pytest.raises(CheckpointError, match="safetensors"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()


def test_missing_and_broken_pieces(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope")
    path, _ = _save(tmp_path / "ck")
    (path / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        load_checkpoint(path)
    path, _ = _save(tmp_path / "ck2")
    os.remove(path / "vocab.json")
    with pytest.raises(CheckpointError, match=r"vocab\.json"):
        load_checkpoint(path)


def test_save_is_atomic_when_interrupted(tmp_path, monkeypatch):
    path, _dec = _save(tmp_path / "ck")
    before = {p.name: p.read_bytes() for p in path.iterdir()}
    import captioner.checkpoint as ckmod

    def fail(*a, **k):
        raise KeyboardInterrupt("simulated crash mid-save")

    monkeypatch.setattr(ckmod, "_write_json", fail)
    with pytest.raises(KeyboardInterrupt):
        _save(path, metadata={"new": True})
    after = {p.name: p.read_bytes() for p in path.iterdir()}
    assert after == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary leftovers
    load_checkpoint(path)
