import dataclasses

import pytest
from torch.utils.data import TensorDataset

from sievetrain.bench import REGISTRY, prepare
from sievetrain.bench.runner import run_one
from sievetrain.train import TrainConfig


class Crash(Exception):
    pass


def crash(_epoch_record):
    raise Crash  # raised right after the first epoch's checkpoint is written


def trajectory(record):
    keys = ("test_accuracy", "train_loss", "lr", "coverage", "exit_spearman")
    return [tuple(h.get(k) for k in keys) for h in record["history"]]


def subset(data, train, test):
    """The first ``train`` / ``test`` samples of a split: resuming does not need more."""
    cut = lambda part, k: TensorDataset(*(t[:k] for t in part.tensors))  # noqa: E731
    return dataclasses.replace(data, train=cut(data.train, train), test=cut(data.test, test))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_resumes_from_its_checkpoint_exactly(name, mnist1d, tmp_path):
    """A new registry entry is checked here automatically: crash after one epoch,
    resume from the checkpoint, and land on the uninterrupted run's numbers."""
    data = subset(mnist1d, 640, 512)  # 10 batches of 64 per epoch; 8 held-out rank batches
    bench = prepare(data, [name], [0], config=TrainConfig(epochs=3, batch_size=64))
    (run,) = bench.runs
    clean = run_one(bench, run, 0)

    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Crash):
        run_one(bench, run, 0, checkpoint=checkpoint, on_epoch=crash)
    assert checkpoint.exists()
    resumed = run_one(bench, run, 0, checkpoint=checkpoint)

    assert trajectory(resumed) == trajectory(clean)
    for key in (
        "samples_forwarded",
        "samples_forwarded_partially",
        "samples_forwarded_fully",
        "samples_backpropagated",
        "optimizer_steps",
        "coverage",
    ):
        assert resumed[key] == clean[key], key


def test_a_checkpoint_of_another_run_is_ignored(mnist1d, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64)
    bench = prepare(mnist1d, ["srs:0.5", "srs:0.3"], [0], config=config)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Crash):
        run_one(bench, bench.runs[0], 0, checkpoint=checkpoint, on_epoch=crash)
    # A different method must start from scratch, not from srs:0.5's state.
    other = run_one(bench, bench.runs[1], 0, checkpoint=checkpoint)
    assert trajectory(other) == trajectory(run_one(bench, bench.runs[1], 0))
