"""The selector protocol (selection/base.py): what the trainer may call on any selector."""

import pytest
import torch

from sievetrain.selection import SIFT, KeepAll, RandomKeep, SelectiveBackprop, Selector
from sievetrain.train import TrainConfig, Trainer


def test_keep_all_keeps_everything_and_the_defaults_do_nothing():
    selector = KeepAll()
    x, y = torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)
    assert selector.select(torch.nn.Identity(), x, y) is None
    assert selector.score(torch.nn.Identity(), x, y) is None
    assert selector.stats() == {} and selector.state_dict() == {}
    selector.load_state_dict({})
    selector.set_epoch(3)
    assert selector.epoch == 3 and selector.accumulates is False


@pytest.mark.parametrize("make", [KeepAll, SIFT, RandomKeep, SelectiveBackprop])
@pytest.mark.parametrize(
    "epoch, fragment",
    [(-1, "epoch must be >= 0, got -1"), (1.0, "epoch must be an integer, got 1.0")],
)
def test_every_selector_refuses_a_bad_epoch(make, epoch, fragment):
    selector = make()
    selector.set_epoch(2)
    with pytest.raises(ValueError, match=fragment):
        selector.set_epoch(epoch)
    assert selector.epoch == 2


class Recording(Selector):
    """Keeps the first half of each batch and records what the trainer called."""

    def __init__(self):
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)

    def select(self, model, x, y):
        return torch.arange(len(y) // 2)


def test_the_trainer_calls_every_part_of_the_protocol(mnist1d):
    selector = Recording()
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    config = TrainConfig(epochs=2, batch_size=100)
    trainer = Trainer(
        model, optimizer, mnist1d.train, mnist1d.test, config=config, selector=selector
    )
    summary = trainer.fit()
    assert selector.epochs == [0, 1]
    assert summary.samples_backpropagated == 2 * len(mnist1d.train) // 2
    assert summary.final_exit_spearman is None  # it does not score
