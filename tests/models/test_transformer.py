"""MLMTransformer: shapes, named stages, the shared head as an early exit, and learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sievetrain.data import VOCAB_SIZE, load_shakespeare
from sievetrain.models import MLMTransformer, build_model

pytestmark = pytest.mark.usefixtures("one_thread")


def _ids(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(
        0, VOCAB_SIZE, (batch, length), generator=torch.Generator().manual_seed(seed)
    )


def test_build_model_gives_token_logits_and_named_stages():
    model = build_model("mlm-transformer", num_classes=VOCAB_SIZE, input_shape=(32,))
    assert isinstance(model, MLMTransformer)
    assert model.stage_names == ("embed", "layer1", "layer2", "layer3", "layer4", "head")
    assert model(_ids(3, 32)).shape == (3, 32, VOCAB_SIZE)
    assert model(_ids(3, 7)).shape == (3, 7, VOCAB_SIZE)  # shorter than max_len is fine
    with pytest.raises(ValueError, match="33.*max_len=32"):
        model(_ids(3, 33))


def test_head_applies_to_any_layer_output():
    model = MLMTransformer(VOCAB_SIZE, max_len=16, d_model=32, n_heads=2, n_layers=3)
    x = _ids(2, 16)
    assert model.exit_stage == "layer1"
    h = model.layer1(model.embed(x))  # (B, T, d)
    assert h.shape == (2, 16, 32)
    assert model.head(h).shape == (2, 16, VOCAB_SIZE)  # the early exit after layer1
    # Running the stages one after another is the model.
    for stage in model.stage_names[2:]:
        h = getattr(model, stage)(h)
    assert torch.equal(h, model(x))


def test_forward_consumes_no_randomness():
    model = MLMTransformer(VOCAB_SIZE, max_len=16, d_model=32, n_heads=2, n_layers=2).train()
    state = torch.get_rng_state()
    x = _ids(2, 16)
    torch.set_rng_state(state)
    a = model(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, model(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_len": 0}, "max_len.*0"),
        ({"num_classes": -1}, "num_classes.*-1"),
        ({"n_layers": 0}, "n_layers.*0"),
        ({"n_heads": 3}, "n_heads=3.*d_model=64"),
    ],
)
def test_constructor_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MLMTransformer(**({"num_classes": VOCAB_SIZE} | kwargs))


def test_training_on_shakespeare_lowers_the_masked_token_loss():
    data = load_shakespeare(train_size=320, test_size=64)
    x, y = data.train.tensors  # (320, 128) masked inputs, targets
    x_val, y_val = data.test.tensors
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = MLMTransformer(VOCAB_SIZE, max_len=128, d_model=32, n_heads=2, n_layers=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def val_loss() -> float:
        with torch.no_grad():  # logits (B, T, V) -> (B, V, T) for cross_entropy
            return F.cross_entropy(model(x_val).transpose(1, 2), y_val).item()

    before = val_loss()
    for batch in torch.arange(len(x)).split(16):  # 20 steps
        loss = F.cross_entropy(model(x[batch]).transpose(1, 2), y[batch])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    # Uniform guessing is ln(99) = 4.6 nats; character frequencies alone give about 3.4.
    assert before > 4.3
    assert val_loss() < before - 0.8
