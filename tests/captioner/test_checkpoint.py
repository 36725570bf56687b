import json
import os
import pickle
import stat
import subprocess
import sys

import pytest
import torch
from safetensors import safe_open

from captioner.decoder import CaptionDecoder, DecoderConfig
from captioner.errors import CheckpointError
from captioner.model.checkpoint import load_checkpoint, read_metadata, save_checkpoint, update_metadata
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
    assert ck.vocab == _parts()[0] and ck.path == path


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
    import captioner.model.checkpoint as ckmod

    def fail(*a, **k):
        raise KeyboardInterrupt("simulated crash mid-save")

    monkeypatch.setattr(ckmod, "_write_json", fail)
    with pytest.raises(KeyboardInterrupt):
        _save(path, metadata={"new": True})
    after = {p.name: p.read_bytes() for p in path.iterdir()}
    assert after == before  # the old checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temporary leftovers
    load_checkpoint(path)


# ---------------------------------------------------------------------------- what mutation testing asked for
def test_permissions_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        path, _ = _save(tmp_path / "shared")
        os.umask(0o077)
        private, _ = _save(tmp_path / "private")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o755  # mkdtemp's 0700 widened as the umask allows
    assert {stat.S_IMODE(p.stat().st_mode) for p in path.iterdir()} == {0o644}
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert {stat.S_IMODE(p.stat().st_mode) for p in private.iterdir()} == {0o600}


def test_a_save_removes_what_crashed_saves_left_and_nothing_else(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = [
            f".ck.tmp-{dead.pid}-abc",  # a crashed save: removed
            f".ck.old-{dead.pid}",  # the aside of a crashed replace: removed
            f".ck.tmp-{alive.pid}-def",  # a save still running in another process: kept
            f".ck.tmp-{os.getpid()}-ghi",  # this process's own: kept
            ".ck.notes",  # not a temporary folder: kept
            f".other.tmp-{dead.pid}-jkl",  # another checkpoint's: kept
        ]
        for name in names:
            (tmp_path / name).mkdir()
            (tmp_path / name / "model.safetensors").write_bytes(b"x")
        _save(tmp_path / "ck")
        assert alive.poll() is None  # probed (signal 0), never signalled
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ck", *names[2:]])


def test_state_dict_json_layout_metadata_and_encoder_weights(tmp_path):
    vocab, cfg, dec = _parts()
    enc = {"conv.weight": torch.randn(2, 3), "steps": torch.tensor([7])}
    path = save_checkpoint(
        tmp_path / "ck",
        decoder=dec.state_dict(),  # a state dict works as well as the module
        decoder_config=cfg,
        encoder_name="efficientnet_lite0",
        preprocess={"resize_size": 256, "crop_size": 224},
        vocab=vocab,
        metadata={"zeta": "ünï", "alpha": 1},
        encoder_state=enc,
        dtype=torch.float16,
    )
    meta_text = (path / "metadata.json").read_text(encoding="utf-8")
    assert meta_text == '{\n  "zeta": "ünï",\n  "alpha": 1\n}\n'  # readable, in the given order
    config = json.loads((path / "config.json").read_text())
    assert config["format"] == "captioner-checkpoint/1" and config["encoder"]["fine_tuned"] is True
    ck = load_checkpoint(path)
    assert ck.preprocess == {"resize_size": 256, "crop_size": 224} and ck.path == path
    assert ck.metadata == {"zeta": "ünï", "alpha": 1}
    assert ck.encoder_state is not None and ck.encoder_state["conv.weight"].dtype == torch.float32
    assert torch.allclose(ck.encoder_state["conv.weight"], enc["conv.weight"], atol=1e-2)
    assert torch.equal(ck.encoder_state["steps"], enc["steps"])  # integers are not converted
    assert ck.encoder_state["steps"].dtype == torch.int64
    with safe_open(str(path / "model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "captioner-checkpoint/1"}
    for k, v in dec.state_dict().items():
        assert torch.allclose(ck.decoder_state[k], v, atol=1e-2)
    assert load_checkpoint(_save(tmp_path / "plain")[0]).encoder_state is None


def test_read_and_update_metadata(tmp_path):
    path, _ = _save(tmp_path / "ck")
    assert read_metadata(path) == {"metrics": {"bleu4": 0.5}}
    merged = update_metadata(path, {"trust": {"ok": True}, "metrics": {"cider": 1.0}})
    assert merged == {"metrics": {"cider": 1.0}, "trust": {"ok": True}}
    assert read_metadata(path) == merged == load_checkpoint(path).metadata
    assert "ünï" in update_metadata(path, {"note": "ünï"})["note"]
    assert "ünï" in (path / "metadata.json").read_text(encoding="utf-8")
    (path / "metadata.json").write_text("[1, 2]")
    assert read_metadata(path) == {} and load_checkpoint(path).metadata == {}
    os.remove(path / "metadata.json")
    assert read_metadata(path) == {} and load_checkpoint(path).metadata == {}
    assert update_metadata(path, {"a": 1}) == {"a": 1}


def test_each_refusal_names_the_problem(tmp_path):
    path, _ = _save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match=r"a checkpoint is a folder \(with model.safetensors, config.json"):
        load_checkpoint(path / "config.json")
    config = json.loads((path / "config.json").read_text())

    def write_config(data) -> None:
        (path / "config.json").write_text(json.dumps(data))

    write_config({**config, "format": "other/2"})
    with pytest.raises(
        CheckpointError, match=r"unsupported checkpoint format 'other/2'; expected 'captioner-checkpoint/1'"
    ):
        load_checkpoint(path)
    write_config([1])
    with pytest.raises(CheckpointError, match=r"unsupported checkpoint format None"):
        load_checkpoint(path)
    write_config({k: v for k, v in config.items() if k != "decoder"})
    with pytest.raises(CheckpointError, match=r"config.json: invalid configuration"):
        load_checkpoint(path)
    write_config({**config, "encoder": {}})
    with pytest.raises(CheckpointError, match=r"config.json: invalid configuration"):
        load_checkpoint(path)
    write_config(config)
    (path / "vocab.json").write_text(json.dumps({"tokens": ["x"]}))
    with pytest.raises(CheckpointError, match=r"vocab.json: vocabulary must start with the special tokens"):
        load_checkpoint(path)
    (path / "vocab.json").write_bytes(b"\xff\xfe")
    with pytest.raises(CheckpointError, match=r"vocab.json: not valid JSON"):
        load_checkpoint(path)

    vocab, cfg, dec = _parts()
    for missing in ("embed.weight", "out.weight"):
        state = {k: v for k, v in dec.state_dict().items() if k != missing}
        p = save_checkpoint(
            tmp_path / missing, decoder=state, decoder_config=cfg, encoder_name="e", preprocess={}, vocab=vocab
        )
        with pytest.raises(CheckpointError, match=rf"missing tensor '{missing}'; not a caption decoder"):
            load_checkpoint(p)
    state = dict(dec.state_dict())
    state["out.weight"] = state["out.weight"][:-1]
    p = save_checkpoint(
        tmp_path / "rows", decoder=state, decoder_config=cfg, encoder_name="e", preprocess={}, vocab=vocab
    )
    with pytest.raises(
        CheckpointError, match=rf"out.weight has {len(vocab) - 1} rows but the vocabulary has {len(vocab)}"
    ):
        load_checkpoint(p)
    os.remove(p / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"missing model.safetensors; is this a checkpoint folder\?"):
        load_checkpoint(p)


def test_the_new_folder_is_built_beside_the_target(tmp_path):
    seen: list = []
    vocab, cfg, dec = _parts()
    target = tmp_path / "runs" / "new" / "ck"  # parents are created
    save_checkpoint(
        target,
        decoder=dec,
        decoder_config=cfg,
        encoder_name="e",
        preprocess={},
        vocab=vocab,
        extra_files=lambda folder: seen.append((folder, sorted(p.name for p in folder.iterdir()))),
    )
    ((folder, files),) = seen
    # on the same file system as the target (so the final rename is atomic), named for the
    # crash clean-up (.NAME.tmp-PID-...), with every file already written
    assert folder.parent == target.parent and folder.name.startswith(f".ck.tmp-{os.getpid()}-")
    assert files == ["config.json", "metadata.json", "model.safetensors", "vocab.json"]
    assert not folder.exists() and load_checkpoint(target).encoder_name == "e"


def test_files_written_by_name_into_a_checkpoint_follow_the_umask_too(tmp_path):
    # atomic_write_path hands its writer a temporary name (trust files, safetensors): that
    # file came from mkstemp (0600) and kept it when the writer reopened it.
    from captioner.fsio import atomic_write_path

    old = os.umask(0o022)
    try:
        text = atomic_write_path(tmp_path / "trust.json", lambda p: p.write_text("{}", encoding="utf-8"))
        blob = atomic_write_path(tmp_path / "blob.bin", lambda p: p.open("wb").close())
    finally:
        os.umask(old)
    assert {stat.S_IMODE(p.stat().st_mode) for p in (text, blob)} == {0o644}
