"""Helpers shared by the selection tests, as fixtures: the reference model of a
dataset, a short training run with a selector, a model's state, and a
save-resume replay of a selector."""

import pytest
import torch

from sievetrain.models import DEFAULT_MODEL, build_model
from sievetrain.optim import build_optimizer
from sievetrain.rng import derive_seed
from sievetrain.sampling import SoftRandomSampler
from sievetrain.train import TrainConfig, Trainer


def _make_model(data, seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, "init"))
        return build_model(
            DEFAULT_MODEL[data.name], num_classes=data.num_classes, input_shape=data.input_shape
        )


def _train(data, selector, *, epochs=1, batch_size=64):
    model = _make_model(data)
    trainer = Trainer(
        model,
        build_optimizer("sgd", model.parameters()),
        data.train,
        data.test,
        config=TrainConfig(epochs=epochs, batch_size=batch_size),
        sampler=SoftRandomSampler(len(data.train), 1.0, seed=0),
        selector=selector,
        seed=0,
    )
    return trainer, trainer.fit()


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _run_selections(selector, model, x, y, steps):
    return [
        selector.select(model, x[i * 64 : (i + 1) * 64], y[i * 64 : (i + 1) * 64]) for i in steps
    ]


@pytest.fixture
def make_model():
    """``make_model(data, seed=0)``: the dataset's reference model, seeded."""
    return _make_model


@pytest.fixture
def train():
    """``train(data, selector, *, epochs=1, batch_size=64) -> (trainer, summary)``."""
    return _train


@pytest.fixture
def state():
    """``state(model)``: a copy of the model's state dict."""
    return _state


@pytest.fixture
def round_trip(mnist1d):
    """``round_trip(make) -> (straight, expected, resumed, got)``: the selections of
    batches 4..7 by a selector that ran batches 0..3 (``straight``, ``expected``),
    and by a fresh one that loaded its state after batches 0..3 (``resumed``, ``got``)."""

    def replay(make):
        model = _make_model(mnist1d)
        model.train()
        x, y = mnist1d.train.tensors
        straight = make()
        _run_selections(straight, model, x, y, range(4))
        expected = _run_selections(straight, model, x, y, range(4, 8))

        first = make()
        _run_selections(first, model, x, y, range(4))
        saved = first.state_dict()
        resumed = make()
        resumed.load_state_dict(saved)
        got = _run_selections(resumed, model, x, y, range(4, 8))
        return straight, expected, resumed, got

    return replay
