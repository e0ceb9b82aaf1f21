import math

import pytest
import torch
from torch.utils.data import Dataset

from sievetrain.data import load_dataset
from sievetrain.models import DEFAULT_MODEL, build_model
from sievetrain.optim import build_optimizer
from sievetrain.rng import derive_seed
from sievetrain.sampling import SoftRandomSampler
from sievetrain.selection import Selector
from sievetrain.train import PHASES, TrainConfig, Trainer, lr_multiplier


def make_trainer(data, *, ratio=1.0, epochs=2, seed=0, selector=None, config=None, train_set=None):
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(seed, "init"))
        model = build_model(
            DEFAULT_MODEL[data.name], num_classes=data.num_classes, input_shape=data.input_shape
        )
    config = config or TrainConfig(epochs=epochs, batch_size=64)
    train_set = train_set if train_set is not None else data.train
    return Trainer(
        model,
        build_optimizer("sgd", model.parameters()),
        train_set,
        data.test,
        config=config,
        sampler=SoftRandomSampler(len(train_set), ratio, seed=seed),
        selector=selector,
        seed=seed,
    )


def params(trainer):
    return [p.detach().clone() for p in trainer.model.parameters()]


def test_learns_mnist1d(mnist1d):
    trainer = make_trainer(mnist1d, epochs=6)
    summary = trainer.fit()
    assert summary.final_test_accuracy > 0.5  # chance is 0.1
    losses = [h["train_loss"] for h in summary.history]
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.usefixtures("fashion_mnist_dir")  # skips without the data
def test_learns_fashion_mnist_subset():
    data = load_dataset("fashion-mnist", train_size=4000, test_size=1000)
    summary = make_trainer(data, epochs=2).fit()
    assert summary.final_test_accuracy > 0.6  # chance is 0.1


def test_accounting_counts_every_sample_and_step(mnist1d):
    trainer = make_trainer(mnist1d, ratio=0.3, epochs=3)
    summary = trainer.fit()
    m = trainer.sampler.subset_size
    assert summary.samples_backpropagated == summary.samples_forwarded == 3 * m
    assert summary.optimizer_steps == 3 * math.ceil(m / 64)
    n = len(mnist1d.train)
    assert summary.coverage == pytest.approx(trainer.coverage.seen / n)
    assert m / n <= summary.coverage <= min(1.0, 3 * m / n)
    breakdown = summary.time_breakdown_s
    assert set(breakdown) == set(PHASES)
    assert all(breakdown[p] > 0 for p in ("sampling", "data", "forward", "backward", "step"))
    # phases are timed inside the training loop, evaluation outside it
    assert sum(breakdown.values()) <= summary.train_time_s
    assert summary.eval_time_s > 0
    assert [h["epoch"] for h in summary.history] == [1, 2, 3]
    assert summary.history[-1]["train_time_s"] == summary.train_time_s
    # CPU time of the same spans: every phase that did work spent some, none more
    # than the threads could over its wall time (a busy machine inflates only wall time)
    cpu = summary.cpu_breakdown_s
    assert set(cpu) == set(PHASES) and all(cpu[p] > 0 for p in ("forward", "backward"))
    assert 0 < sum(cpu.values()) <= summary.train_cpu_s
    threads = torch.get_num_threads()
    assert summary.train_cpu_s <= threads * summary.train_time_s + 0.05
    assert summary.device_breakdown_s == {}  # CUDA-event time is taken on a GPU only


@pytest.mark.gpu
def test_device_phases_are_timed_with_cuda_events_on_a_gpu(mnist1d):
    config = TrainConfig(epochs=1, batch_size=64, device="cuda")
    summary = make_trainer(mnist1d, config=config).fit()
    assert set(summary.device_breakdown_s) == {"selection", "forward", "backward", "step"}
    assert all(summary.device_breakdown_s[p] > 0 for p in ("forward", "backward", "step"))


def test_infobatch_learns_its_scores_from_the_training_pass_and_rescales_the_mean(mnist1d):
    """With lr 0 a linear model stays put, so every loss is known: the scores after
    epoch 1 are each sample's loss, and epoch 2's training loss is sum(w * l) / kept,
    the batch means of w * l (divided by the batch size, not by the weights' sum)."""
    from sievetrain.losses import sample_losses
    from sievetrain.sampling import InfoBatchSampler

    n = len(mnist1d.train)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    sampler = InfoBatchSampler(n, 0.5, epochs=4, seed=0)
    trainer = Trainer(
        model,
        build_optimizer("sgd", model.parameters(), lr=0.0),
        mnist1d.train,
        mnist1d.test,
        config=TrainConfig(epochs=4, batch_size=64),
        sampler=sampler,
    )
    trainer.fit(until=1)
    x, y = mnist1d.train.tensors
    with torch.no_grad():
        losses = sample_losses(model(x), y)
    assert torch.allclose(sampler.scores, losses, atol=1e-5)
    trainer.fit(until=2)
    kept = sampler.epoch_indices()
    weights = sampler.sample_weights(kept)
    assert weights is not None and len(kept) < n  # epoch 2 pruned and rescaled
    expected = (weights * losses[kept]).sum() / len(kept)
    assert trainer.history[-1]["train_loss"] == pytest.approx(expected.item(), rel=1e-4)


def test_full_data_covers_everything_in_one_epoch(mnist1d):
    summary = make_trainer(mnist1d, epochs=1).fit()
    assert summary.coverage == 1.0
    assert summary.samples_backpropagated == len(mnist1d.train)


def test_same_seed_same_run_and_global_rng_untouched(mnist1d):
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a, b = make_trainer(mnist1d, ratio=0.5), make_trainer(mnist1d, ratio=0.5)
    ha, hb = a.fit().history, b.fit().history
    assert [h["test_accuracy"] for h in ha] == [h["test_accuracy"] for h in hb]
    assert all(torch.equal(p, q) for p, q in zip(params(a), params(b), strict=True))
    assert torch.equal(torch.get_rng_state(), before)
    c = make_trainer(mnist1d, ratio=0.5, seed=1)
    c.fit()
    assert not all(torch.equal(p, q) for p, q in zip(params(a), params(c), strict=True))


def test_resume_is_bitwise_equal_to_an_uninterrupted_run(mnist1d):
    straight = make_trainer(mnist1d, ratio=0.5, epochs=4)
    straight.fit()
    first = make_trainer(mnist1d, ratio=0.5, epochs=4)
    first.fit(until=2)  # T = 2 epochs, then a fresh trainer continues
    state = first.state_dict()
    resumed = make_trainer(mnist1d, ratio=0.5, epochs=4, seed=0)
    resumed.load_state_dict(state)
    summary = resumed.fit()
    assert all(torch.equal(p, q) for p, q in zip(params(straight), params(resumed), strict=True))
    assert [h["test_accuracy"] for h in summary.history] == [
        h["test_accuracy"] for h in straight.history
    ]
    assert summary.samples_backpropagated == straight.acct.samples_backpropagated


class KeepLabelZero(Selector):
    """Keeps only the samples of class 0: shows the hook's choice is applied."""

    def __init__(self):
        self.calls = 0

    def select(self, model, x, y):
        self.calls += 1
        return torch.nonzero(y == 0).flatten()

    def stats(self):
        return {"calls": self.calls}

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]


def test_selector_hook_decides_what_is_backpropagated(mnist1d):
    selector = KeepLabelZero()
    trainer = make_trainer(mnist1d, epochs=1, selector=selector)
    summary = trainer.fit()
    zeros = int((mnist1d.train.tensors[1] == 0).sum())
    assert summary.samples_backpropagated == zeros
    assert trainer.coverage.seen == zeros
    assert summary.selector == {"calls": math.ceil(len(mnist1d.train) / 64)}


class PlainDataset(Dataset):
    """A map-style dataset that is not a TensorDataset: takes the DataLoader path."""

    def __init__(self, tensor_dataset):
        self.x, self.y = tensor_dataset.tensors

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_any_map_style_dataset_trains_identically(mnist1d):
    fast = make_trainer(mnist1d, ratio=0.5, epochs=1)
    fast.fit()
    plain = make_trainer(mnist1d, ratio=0.5, epochs=1, train_set=PlainDataset(mnist1d.train))
    plain.fit()
    assert all(torch.equal(p, q) for p, q in zip(params(fast), params(plain), strict=True))


def test_epoch_indexed_step_schedule_matches_the_paper_shape(mnist1d):
    config = TrainConfig(epochs=4, batch_size=256, schedule="step")
    history = make_trainer(mnist1d, ratio=0.3, config=config).fit().history
    base = 0.05
    assert [h["lr"] for h in history] == pytest.approx([base, base, base * 0.1, base * 0.01])


def test_step_indexed_cosine_schedule_reaches_its_end(mnist1d):
    config = TrainConfig(epochs=2, batch_size=256, schedule="cosine", schedule_unit="step")
    trainer = make_trainer(mnist1d, ratio=0.3, config=config)
    trainer.fit()
    steps = trainer.acct.optimizer_steps
    last = lr_multiplier("cosine", (steps - 1) / steps)
    assert trainer.optimizer.param_groups[0]["lr"] == pytest.approx(0.05 * last)


@pytest.mark.parametrize(
    "bad",
    [
        dict(epochs=0),
        dict(batch_size=-1),
        dict(schedule="linear"),
        dict(schedule_unit="sample"),
        dict(milestones=(1.5,)),
        dict(gamma=0.0),
        dict(target_accuracy=float("nan")),
    ],
)
def test_bad_config_names_the_value(bad):
    key, value = next(iter(bad.items()))
    with pytest.raises(ValueError, match=str(value).replace("(", r"\(").replace(")", r"\)")[:20]):
        TrainConfig(**bad)


def test_evaluate_reports_mean_normalized_entropy(mnist1d):
    from sievetrain.train import normalized_entropy

    trainer = make_trainer(mnist1d, epochs=1)
    trainer.fit()
    metrics = trainer.evaluate()
    trainer.model.eval()
    with torch.no_grad():
        x, _ = mnist1d.test.tensors
        expected = normalized_entropy(trainer.model(x)).mean().item()
    assert metrics["test_entropy"] == pytest.approx(expected, rel=1e-5)
    assert 0 < metrics["test_entropy"] < 1
    assert trainer.history[-1]["test_entropy"] == pytest.approx(metrics["test_entropy"])
    assert trainer.summary().final_test_entropy == trainer.history[-1]["test_entropy"]


def test_a_step_indexed_schedule_refuses_a_sampler_whose_epochs_depend_on_losses(mnist1d):
    from sievetrain.sampling import InfoBatchSampler

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(40, 10))
    with pytest.raises(ValueError, match="schedule_unit='step'.*InfoBatchSampler"):
        Trainer(
            model,
            build_optimizer("sgd", model.parameters()),
            mnist1d.train,
            mnist1d.test,
            config=TrainConfig(epochs=2, schedule_unit="step"),
            sampler=InfoBatchSampler(len(mnist1d.train), epochs=2),
        )
