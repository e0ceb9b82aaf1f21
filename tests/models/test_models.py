"""Reference models: shapes, named stages, the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sievetrain.data import DATASETS
from sievetrain.models import DEFAULT_MODEL, KWSCNN, MNIST1DCNN, MODELS, FashionCNN, build_model

INPUT_SHAPES = {
    "mnist1d-cnn": (1, 40),
    "fashion-cnn": (1, 28, 28),
    "resnet8": (1, 28, 28),
    "vgg8": (1, 28, 28),
    "mlm-transformer": (16,),  # token ids
    "kws-cnn": (40, 101),  # log-mel bands by frames
}
# Token models: int64 ids in, per-token logits out, stages embed, layer1, ..., head.
TOKEN_MODELS = {"mlm-transformer"}


def test_registry_covers_every_dataset():
    assert set(DEFAULT_MODEL) == set(DATASETS)
    assert set(DEFAULT_MODEL.values()) <= set(MODELS)
    assert set(INPUT_SHAPES) == set(MODELS)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_output_shape_and_named_stages(name):
    model = build_model(name, num_classes=7, input_shape=INPUT_SHAPES[name])
    assert isinstance(model, nn.Sequential)
    first, middle = ("embed", "layer") if name in TOKEN_MODELS else ("stem", "stage")
    assert model.stage_names[0] == first and model.stage_names[-1] == "head"
    assert model.stage_names[1:-1] == tuple(
        f"{middle}{i}" for i in range(1, len(model.stage_names) - 1)
    )
    if name in TOKEN_MODELS:
        x = torch.randint(0, 7, (5, *INPUT_SHAPES[name]))
        expected = (5, *INPUT_SHAPES[name], 7)  # (B, T, V)
    else:
        x, expected = torch.randn(5, *INPUT_SHAPES[name]), (5, 7)
    logits = model(x)
    assert logits.shape == expected
    # Running the named stages one after another is the model.
    h = x
    for stage in model.stage_names:
        h = getattr(model, stage)(h)
    assert torch.equal(h, logits)


@pytest.mark.parametrize(
    ("model", "x"),
    [
        (MNIST1DCNN(num_classes=3, in_channels=2, width=8), torch.randn(4, 2, 40)),
        (MNIST1DCNN(), torch.randn(4, 1, 64)),  # another length
        (FashionCNN(num_classes=5, in_channels=3), torch.randn(4, 3, 28, 28)),
        (FashionCNN(), torch.randn(4, 1, 32, 32)),  # another size
        (KWSCNN(num_classes=6, in_channels=64, width=8), torch.randn(4, 64, 101)),
        (KWSCNN(), torch.randn(4, 40, 49)),  # half a second
    ],
)
def test_constructor_arguments(model, x):
    assert model(x).shape == (4, model.head[-1].out_features)


def test_vgg8_is_resnet8_without_skips():
    resnet = dict(
        build_model("resnet8", num_classes=10, input_shape=(1, 28, 28)).named_parameters()
    )
    vgg = dict(build_model("vgg8", num_classes=10, input_shape=(1, 28, 28)).named_parameters())
    # The same layers; only the strided block's 1x1 projection shortcut is extra.
    assert set(resnet) - set(vgg) == {
        "stage2.shortcut.0.weight",
        "stage2.shortcut.1.weight",
        "stage2.shortcut.1.bias",
    }
    assert set(vgg) <= set(resnet)
    assert all(vgg[k].shape == resnet[k].shape for k in vgg)


def test_build_model_takes_channels_from_input_shape():
    model = build_model("fashion-cnn", num_classes=10, input_shape=(3, 28, 28))
    assert model(torch.randn(2, 3, 28, 28)).shape == (2, 10)


def test_build_model_is_seeded_by_the_caller():
    def build(seed: int) -> nn.Module:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return build_model("mnist1d-cnn", num_classes=10, input_shape=(1, 40))

    a, b, c = build(0), build(0), build(1)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters(), strict=True))


def test_build_model_errors():
    with pytest.raises(ValueError, match="'resnet'.*mnist1d-cnn.*fashion-cnn"):
        build_model("resnet", num_classes=10, input_shape=(1, 40))
    with pytest.raises(ValueError, match=r"\(1, 28, 28\)"):
        build_model("mnist1d-cnn", num_classes=10, input_shape=(1, 28, 28))
    with pytest.raises(ValueError, match="-1"):
        build_model("fashion-cnn", num_classes=-1, input_shape=(1, 28, 28))


def _test_accuracy(split, model_name: str, epochs: int, batch_size: int) -> float:
    """Test accuracy of ``model_name`` after ``epochs`` of SGD (lr 0.05, momentum 0.9),
    seeded: the plain loop a reference accuracy claim is made with."""
    from sievetrain.data import BatchLoader

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model(
            model_name, num_classes=split.num_classes, input_shape=split.input_shape
        )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        order = torch.randperm(len(split.train), generator=generator).tolist()
        for x, y, _ in BatchLoader(split.train, batch_size, sampler=order):
            loss = nn.functional.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.eval()
    with torch.no_grad():
        x, y = split.test.tensors
        return (model(x).argmax(1) == y).float().mean().item()


@pytest.mark.slow
def test_mnist1d_cnn_learns(tmp_path, monkeypatch):
    """The reference accuracy claim: well above 80% on MNIST-1D 4000/1000 in 15 epochs."""
    from sievetrain.data import load_mnist1d

    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(tmp_path))
    assert _test_accuracy(load_mnist1d(4000, 1000), "mnist1d-cnn", 15, 64) > 0.9


@pytest.mark.slow
def test_kws_cnn_learns_keywords_from_voices_it_never_heard(tmp_path, monkeypatch):
    """The reference accuracy claim for speech-kws: 4,000 training samples, 8 epochs (about
    a minute of one CPU core), well above the 5 % of chance on the test set's voices."""
    import shutil

    from sievetrain.data import load_speech_kws

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (Debian/Ubuntu: apt-get install espeak-ng)")
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(tmp_path))
    assert _test_accuracy(load_speech_kws(4000, 1000), "kws-cnn", 8, 128) > 0.5
