import dataclasses
import re

import pytest
import torch
from torch.utils.data import TensorDataset

from sievetrain.bench import REGISTRY, prepare
from sievetrain.bench.runner import run_one
from sievetrain.data import load_dataset
from sievetrain.files import load_torch
from sievetrain.selection import Rho1Options
from sievetrain.selection.reference import ReferenceOptions
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


def final_state(checkpoint):
    """Model and optimizer state a finished run left in its last checkpoint."""
    trainer = load_torch(checkpoint)["trainer"]
    return trainer["model"], trainer["optimizer"]["state"]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_method_resumes_from_its_checkpoint_exactly(name, mnist1d, tmp_path):
    """A new registry entry is checked here automatically: crash after one epoch,
    resume from the checkpoint, and land on the uninterrupted run's numbers."""
    data = subset(mnist1d, 640, 512)  # 10 batches of 64 per epoch; 8 held-out rank batches
    method = name
    if REGISTRY[name].options is Rho1Options:  # selects tokens: the masked LM
        data = load_dataset("shakespeare", train_size=192, test_size=64)
    if issubclass(REGISTRY[name].options, ReferenceOptions):  # a short reference phase
        method = f"{name}/ref_epochs=2"
    bench = prepare(data, [method], [0], config=TrainConfig(epochs=3, batch_size=64))
    (run,) = bench.runs
    straight = tmp_path / "straight.pt"  # its last checkpoint holds the final state
    clean = run_one(bench, run, 0, checkpoint=straight)

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
    # Bitwise-equal parameters and optimizer state at the end (CPU).
    (model_a, optim_a), (model_b, optim_b) = final_state(straight), final_state(checkpoint)
    assert model_a.keys() == model_b.keys() and optim_a.keys() == optim_b.keys()
    for key in model_a:
        assert torch.equal(model_a[key], model_b[key]), key
    for index, state in optim_a.items():
        for key, value in state.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(optim_b[index][key])), key


def test_a_checkpoint_of_another_run_is_ignored(mnist1d, tmp_path):
    config = TrainConfig(epochs=2, batch_size=64)
    bench = prepare(mnist1d, ["srs:0.5", "srs:0.3"], [0], config=config)
    checkpoint = tmp_path / "run.pt"
    with pytest.raises(Crash):
        run_one(bench, bench.runs[0], 0, checkpoint=checkpoint, on_epoch=crash)
    # A different method must start from scratch, not from srs:0.5's state.
    with pytest.warns(UserWarning, match="not a checkpoint of this run"):
        other = run_one(bench, bench.runs[1], 0, checkpoint=checkpoint)
    assert trajectory(other) == trajectory(run_one(bench, bench.runs[1], 0))


class Payload:
    """Unpickling this creates ``path``: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def damage(checkpoint, kind, marker):
    """Turn ``checkpoint`` (a real one of the run) into a checkpoint of ``kind``."""
    data = checkpoint.read_bytes()
    if kind == "would run code":
        torch.save({"run_key": "x", "trainer": Payload(marker)}, checkpoint)
    elif kind == "truncated zip":
        checkpoint.write_bytes(data[: len(data) // 2])
    elif kind == "garbage":
        checkpoint.write_bytes(b"\x8b not a torch file at all" * 20)
    elif kind == "empty":
        checkpoint.write_bytes(b"")
    elif kind == "not a dict":
        torch.save([1, 2, 3], checkpoint)
    elif kind == "right run, wrong contents":
        state = load_torch(checkpoint)
        torch.save({"run_key": state["run_key"], "trainer": {"model": {}}}, checkpoint)


@pytest.mark.parametrize(
    "kind",
    [
        "would run code",
        "truncated zip",
        "garbage",
        "empty",
        "not a dict",
        "right run, wrong contents",
    ],
)
def test_a_damaged_checkpoint_is_moved_aside_and_the_run_starts_afresh(kind, mnist1d, tmp_path):
    """Not a traceback on every later resume until deleted by hand: the file is kept
    as NAME.damaged (or left alone, when it is another run's), a warning names it,
    nothing in it runs, and the run trains from scratch to the clean run's numbers."""
    bench = prepare(mnist1d, ["full"], [0], config=TrainConfig(epochs=2, batch_size=64))
    checkpoint, marker = tmp_path / "run.pt", tmp_path / "pwned"
    with pytest.raises(Crash):
        run_one(bench, bench.runs[0], 0, checkpoint=checkpoint, on_epoch=crash)
    damage(checkpoint, kind, marker)
    with pytest.warns(UserWarning, match=re.escape(str(checkpoint))) as caught:
        record = run_one(bench, bench.runs[0], 0, checkpoint=checkpoint)
    assert len(caught) == 1 and "starts afresh" in str(caught[0].message)
    assert not marker.exists()
    damaged = tmp_path / "run.pt.damaged"
    assert damaged.exists() == (kind != "not a dict")  # a loadable foreign file stays put
    assert trajectory(record) == trajectory(run_one(bench, bench.runs[0], 0))


def test_prepare_builds_no_training_component(mnist1d, monkeypatch):
    """Validation checks options against the run without building a sampler,
    selector or optimizer; only an early exit needs a model, built once."""
    import sievetrain.bench.methods as methods
    import sievetrain.bench.spec as spec

    def forbidden(*args, **kwargs):
        raise AssertionError("prepare built a training component")

    samplers = ("SoftRandomSampler", "RS2Sampler", "InfoBatchSampler", "GradMatchSampler")
    for name in (*samplers, "SIFT", "RandomKeep", "build_optimizer"):
        monkeypatch.setattr(methods, name, forbidden)
    built = []
    real_build_model = spec.build_model
    monkeypatch.setattr(
        spec, "build_model", lambda *a, **k: built.append(1) or real_build_model(*a, **k)
    )
    prepare(mnist1d, ["full", "srs:0.3", "rs2", "infobatch", "gradmatch:0.3", "stochgradadam"], [0])
    assert built == []
    prepare(mnist1d, ["sift:0.5", "sift-entropy:0.5+adam", "random-keep"], [0])
    assert built == [1]
    with pytest.raises(ValueError, match="'nope'"):
        prepare(mnist1d, ["sift:0.5/stage=nope"], [0])


def test_prepare_checks_options_against_the_data(mnist1d):
    small = subset(mnist1d, 50, 50)
    with pytest.raises(ValueError, match="n must be >= 64, got 50"):
        prepare(small, ["gradmatch:0.5"], [0], config=TrainConfig(batch_size=64))
    with pytest.raises(ValueError, match="makes the subset empty for 50 samples"):
        prepare(small, ["srs:0.001"], [0])


def test_the_progress_bar_names_the_method_and_seed(mnist1d, tmp_path, monkeypatch):
    import sievetrain.train.trainer as trainer_module
    from sievetrain.bench import run_bench

    shown = []

    class Spy(trainer_module.ProgressBar):
        def __init__(self, enabled, description, total):
            shown.append((enabled, description))
            super().__init__(False, description, total)  # nothing drawn in the test

    monkeypatch.setattr(trainer_module, "ProgressBar", Spy)
    bench = prepare(
        subset(mnist1d, 256, 64), ["full", "srs:0.5"], [3], config=TrainConfig(epochs=2)
    )
    run_bench(bench, tmp_path / "o", progress=True)
    assert shown == [
        (True, "full seed 3 · epoch 1/2"),
        (True, "full seed 3 · epoch 2/2"),
        (True, "srs:0.5 seed 3 · epoch 1/2"),
        (True, "srs:0.5 seed 3 · epoch 2/2"),
    ]
