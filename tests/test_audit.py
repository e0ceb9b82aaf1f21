"""The selection audit: counts per flag and class that add up to what was backpropagated,
and the balanced and worst-class test accuracy."""

import pytest
import torch
from torch.utils.data import TensorDataset

from sievetrain.audit import SelectionAudit, audit_record
from sievetrain.data import make_loader
from sievetrain.models import DEFAULT_MODEL, build_model
from sievetrain.optim import build_optimizer
from sievetrain.rng import derive_seed
from sievetrain.sampling import SoftRandomSampler
from sievetrain.selection import SelectiveBackprop
from sievetrain.train import TrainConfig, Trainer
from sievetrain.train.evaluation import evaluate


def test_counts_shares_and_ratio_of_hand_picked_batches():
    flags = {"noisy": torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0], dtype=torch.bool)}
    labels = torch.tensor([0, 0, 0, 0, 0, 1, 1, 1, 1, 2])
    audit = SelectionAudit(10, flags, labels)
    audit.set_epoch(0)
    audit.update(torch.tensor([0, 1, 2, 5]))  # both noisy, classes 0,0,0,1
    audit.set_epoch(1)
    audit.update(torch.tensor([0, 9]))
    record = audit.record()
    assert record["per_epoch_backpropagated"] == [4, 2]
    noisy = record["flags"]["noisy"]
    assert noisy["data_share"] == pytest.approx(0.2)
    assert noisy["count"] == 3 and noisy["backprop_share"] == pytest.approx(3 / 6)
    assert noisy["ratio"] == pytest.approx(0.5 / 0.2)
    assert noisy["per_epoch"] == [pytest.approx(0.5), pytest.approx(0.5)]
    classes = record["classes"]
    assert classes["count"] == [4, 1, 1]
    assert classes["data_share"] == [pytest.approx(0.5), pytest.approx(0.4), pytest.approx(0.1)]
    assert classes["per_epoch"][2] == [0.0, pytest.approx(0.5)]


def test_state_round_trips_and_a_state_of_other_groups_is_refused():
    audit = SelectionAudit(4, {"duplicate": torch.tensor([True, False, True, False])})
    audit.set_epoch(2)
    audit.update(torch.tensor([0, 1, 2]))
    again = SelectionAudit(4, {"duplicate": torch.tensor([True, False, True, False])})
    again.load_state_dict(audit.state_dict())
    assert again.record() == audit.record()
    assert again.record()["per_epoch_backpropagated"] == [0, 0, 3]
    with pytest.raises(ValueError, match="groups"):
        SelectionAudit(4).load_state_dict(audit.state_dict())
    with pytest.raises(ValueError, match="labels \\(3\\)"):
        SelectionAudit(4, labels=torch.tensor([0, 1, 2]))


def test_a_flag_absent_from_the_data_has_no_ratio():
    record = audit_record(
        torch.tensor([[3, 0]]), torch.tensor([10, 0]), ("off_target",), num_classes=0
    )
    assert record["flags"]["off_target"]["ratio"] is None
    assert "classes" not in record


def test_the_trainers_audit_adds_up_to_the_samples_it_backpropagated(mnist1d):
    """Selective Backprop on MNIST-1D with a made-up flag: the record's counts equal the
    flagged samples among the indices the loss was actually computed on, epoch by epoch."""
    n = len(mnist1d.train)
    flag = torch.zeros(n, dtype=torch.bool)
    flag[torch.randperm(n, generator=torch.Generator().manual_seed(0))[: n // 4]] = True
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(0, "init"))
        model = build_model(
            DEFAULT_MODEL["mnist1d"], num_classes=10, input_shape=mnist1d.input_shape
        )
    trainer = Trainer(
        model,
        build_optimizer("sgd", model.parameters()),
        mnist1d.train,
        mnist1d.test,
        config=TrainConfig(epochs=3, batch_size=64),
        sampler=SoftRandomSampler(n, 0.5, seed=0),
        selector=SelectiveBackprop(1.0, seed=0, full_epochs=1),
        flags={"special": flag},
    )
    seen: list[list[torch.Tensor]] = [[] for _ in range(3)]
    loss = trainer.sieve.loss

    def spy(logits, y, idx):
        seen[trainer.sieve.audit.epoch].append(idx.clone())
        return loss(logits, y, idx)

    trainer.sieve.loss = spy
    record = trainer.fit().selection_audit
    assert sum(record["per_epoch_backpropagated"]) == trainer.summary().samples_backpropagated
    labels = mnist1d.train.tensors[1]
    for epoch, batches in enumerate(seen):
        idx = torch.cat(batches)
        assert record["per_epoch_backpropagated"][epoch] == len(idx)
        special = record["flags"]["special"]["per_epoch"][epoch]
        assert special == pytest.approx(flag[idx].float().mean().item())
        for c in range(10):
            share = (labels[idx] == c).float().mean().item()
            assert record["classes"]["per_epoch"][c][epoch] == pytest.approx(share)
    assert record["flags"]["special"]["data_share"] == pytest.approx(0.25)


def test_balanced_and_worst_class_accuracy_by_hand():
    """A model that predicts class 0 always: on 6 samples of class 0, 3 of class 1 and
    1 of class 2, accuracy 0.6, balanced (1 + 0 + 0) / 3, worst class 0."""
    y = torch.tensor([0] * 6 + [1] * 3 + [2])
    x = torch.zeros(10, 3)
    model = torch.nn.Linear(3, 3)
    with torch.no_grad():
        model.weight.zero_()
        model.bias.copy_(torch.tensor([1.0, 0.0, -1.0]))
    batches = make_loader(TensorDataset(x, y), 4)
    metrics = evaluate(model, batches, torch.device("cpu"))
    assert metrics["test_accuracy"] == pytest.approx(0.6)
    assert metrics["test_balanced_accuracy"] == pytest.approx(1 / 3)
    assert metrics["test_worst_class_accuracy"] == 0.0
    # A class with no test sample does not count: 4 classes predicted, 3 present.
    wide = torch.nn.Linear(3, 4)
    with torch.no_grad():
        wide.weight.zero_()
        wide.bias.copy_(torch.tensor([1.0, 0.0, -1.0, -2.0]))
    assert evaluate(wide, batches, torch.device("cpu"))["test_balanced_accuracy"] == (
        pytest.approx(1 / 3)
    )
