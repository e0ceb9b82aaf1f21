"""The closed-form last-layer gradient (sampling/last_layer.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from sievetrain.losses import IGNORE_INDEX
from sievetrain.rng import make_generator
from sievetrain.sampling import batch_gradients, last_layer_gradient


@pytest.mark.parametrize("tokens", [False, True])
def test_last_layer_gradient_equals_autograd(tokens):
    g = make_generator(0, "test")
    layer = nn.Linear(6, 5)
    z = torch.randn(4, 7, 6, generator=g) if tokens else torch.randn(8, 6, generator=g)
    y = torch.randint(5, z.shape[:-1], generator=g)
    if tokens:
        y[:, ::2] = IGNORE_INDEX  # only some positions are predicted
    logits = layer(z)
    rows = logits[y != IGNORE_INDEX] if tokens else logits
    F.cross_entropy(rows, y[y != IGNORE_INDEX] if tokens else y).backward()
    expected = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
    closed = last_layer_gradient(z, logits.detach(), y)
    torch.testing.assert_close(closed, expected)
    assert last_layer_gradient(z, logits.detach(), y, bias=False).shape == (5 * 6,)


def test_a_model_whose_last_linear_is_not_its_output_is_refused(mnist1d):
    model = nn.Sequential(nn.Flatten(), nn.Linear(40, 10), nn.Tanh())
    x, y = mnist1d.train.tensors
    with pytest.raises(ValueError, match="pass layer="):
        batch_gradients(model, TensorDataset(x[:128], y[:128]), [torch.arange(64)])
