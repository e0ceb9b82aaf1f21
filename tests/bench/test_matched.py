"""Budget-matched baselines: full/budget=F, --matched, and measured matches."""

import dataclasses
import math

import pytest
import torch
from torch.utils.data import TensorDataset

from sievetrain.bench import prepare, run_bench
from sievetrain.bench.matched import Match, matched_fraction, measured_fraction
from sievetrain.bench.output import RESULTS
from sievetrain.bench.registry import parse_run
from sievetrain.bench.runner import build_trainer, run_one
from sievetrain.files import read_jsonl
from sievetrain.options import RunContext
from sievetrain.sampling import SoftRandomSampler
from sievetrain.train import PHASES, TrainConfig, Trainer


class Crash(Exception):
    pass


def subset(data, train, test):
    cut = lambda part, k: TensorDataset(*(t[:k] for t in part.tensors))  # noqa: E731
    return dataclasses.replace(data, train=cut(data.train, train), test=cut(data.test, test))


def accuracies(record):
    return [h["test_accuracy"] for h in record["history"]]


def test_full_budget_1_trains_bitwise_equal_to_full_data_as_it_always_was(mnist1d):
    data = subset(mnist1d, 640, 256)
    config = TrainConfig(epochs=3, batch_size=64)
    bench = prepare(data, ["full/budget=1"], [0], config=config)
    budget = build_trainer(bench, bench.runs[0], 0)
    reference = build_trainer(bench, bench.runs[0], 0)  # same initial weights
    classic = Trainer(
        reference.model,
        reference.optimizer,
        data.train,
        data.test,
        config=config,
        sampler=SoftRandomSampler(len(data.train), 1.0, seed=0),  # the full baseline until now
        seed=0,
    )
    a, b = budget.fit(), classic.fit()
    assert [h["test_accuracy"] for h in a.history] == [h["test_accuracy"] for h in b.history]
    for key, value in budget.model.state_dict().items():
        assert torch.equal(value, classic.model.state_dict()[key]), key
    assert prepare(data, ["full"], [0], config=config).runs[0].describe() == (
        bench.runs[0].describe()
    )


def test_a_budget_takes_its_share_of_the_steps_and_ends_fully_decayed(mnist1d):
    data = subset(mnist1d, 640, 256)  # 10 batches of 64 per epoch
    config = TrainConfig(epochs=4, batch_size=64)  # lr / 10 at 50 % and 75 % of the run
    bench = prepare(data, ["full", "full/budget=0.5"], [0], config=config)
    full, half = (run_one(bench, run, 0) for run in bench.runs)
    assert full["optimizer_steps"] == 40
    assert half["optimizer_steps"] == 20  # F = 0.5 of full data's steps: two epochs' worth
    assert half["samples_backpropagated"] == 0.5 * 4 * 640
    assert len(half["history"]) == 4  # evaluated at the same points of its budget
    base = full["history"][0]["lr"]
    lrs = [h["lr"] for h in half["history"]]
    assert lrs == pytest.approx([base, base, base * 0.1, base * 0.01])  # compressed
    assert lrs[-1] == pytest.approx(full["history"][-1]["lr"])  # and fully decayed


def test_matched_adds_exactly_one_baseline_per_distinct_fraction(mnist1d):
    methods = [
        "full",
        "srs:0.3",
        "fixed:0.3",
        "rs2:0.3",
        "srs:0.1",
        "random-keep:0.5",
        "srs:0.5",
        "srs:0.3+random-keep:0.5",
        "stochgradadam",
        "infobatch",
    ]
    bench = prepare(mnist1d, methods, [0], matched=True)
    added = [run.label for run in bench.runs[len(methods) :]]
    assert added == ["full/budget=0.3", "full/budget=0.1", "full/budget=0.5", "full/budget=0.15"]
    assert bench.matches["srs:0.3"] == Match("expected", 0.3, "full/budget=0.3")
    assert bench.matches["fixed:0.3"].baseline == bench.matches["rs2:0.3"].baseline
    assert bench.matches["srs:0.5"].baseline == bench.matches["random-keep:0.5"].baseline
    assert bench.matches["infobatch"] == Match("measured")  # only a run can tell
    assert "full" not in bench.matches and "stochgradadam" not in bench.matches
    # A baseline listed by the user is used, not added twice.
    again = prepare(mnist1d, ["full/budget=0.3", "srs:0.3"], [0], matched=True)
    assert [r.label for r in again.runs] == ["full/budget=0.3", "srs:0.3"]
    # The baseline keeps the run's optimizer: only the data differs.
    adam = prepare(mnist1d, ["srs:0.3"], [0], matched=True, optimizer="adam")
    assert [r.label for r in adam.runs] == ["srs:0.3+adam", "full/budget=0.3+adam"]
    assert adam.runs[1].optimizer == adam.runs[0].optimizer


def test_expected_fractions_follow_each_methods_options():
    context = RunContext(n=1000, batch_size=100, epochs=10, num_classes=10)
    fraction = lambda text: matched_fraction(parse_run(text), context)  # noqa: E731
    assert fraction("srs:0.3") == 0.3
    assert fraction("srs:0.3/warm_start_epochs=2") == pytest.approx((2 + 8 * 0.3) / 10)
    # GRAD-MATCH: 2 warm-start epochs on full data (round(0.5 * 10 * 0.3) half up), 3 skipped,
    # then 0.3 of the data from epoch 5 on.
    assert fraction("gradmatch:0.3") == pytest.approx((2 + 5 * 0.3) / 10)
    assert fraction("srs:0.5+sift:0.5") == 0.25
    assert fraction("infobatch") is None
    # Selective Backprop: the first epoch whole, then E[max(s, U^beta)] for U uniform.
    u = torch.rand(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    kept = u.pow(3.0).clamp_min(0.05).mean().item()
    assert fraction("selective-backprop:3") == pytest.approx((1 + 9 * kept) / 10, abs=1e-3)


def test_a_measured_match_resumes_to_the_uninterrupted_numbers(mnist1d, tmp_path):
    """InfoBatch's baseline gets the fraction its first seed measured; a bench
    interrupted mid-run resumes to the same records (InfoBatch's scores included)."""
    data = subset(mnist1d, 640, 256)
    bench = prepare(
        data, ["infobatch"], [0, 1], config=TrainConfig(epochs=3, batch_size=64), matched=True
    )
    straight = run_bench(bench, tmp_path / "straight")
    assert [(r["method"], r["seed"]) for r in straight] == [
        ("infobatch", 0),
        (straight[1]["method"], 0),
        ("infobatch", 1),
        (straight[1]["method"], 1),
    ]
    fraction = measured_fraction(straight[0])
    assert 0.5 < fraction < 1  # epoch 1 prunes nothing (equal scores), epochs 2-3 do
    assert straight[1]["method"] == f"full/budget={fraction:g}"
    assert straight[1]["samples_backpropagated"] == pytest.approx(
        fraction * 3 * 640, abs=3 * math.ceil(0.001 * 640)
    )
    for infobatch, baseline in ((straight[0], straight[1]), (straight[2], straight[3])):
        assert infobatch["matched"]["baseline"] == baseline["method"]
        assert infobatch["matched"]["source"] == "measured"
        change = 100 * (infobatch["final_test_accuracy"] - baseline["final_test_accuracy"])
        assert baseline["matched_changes"] == {"infobatch": pytest.approx(change)}
    assert straight[0]["train_cpu_s"] > 0 and set(straight[0]["cpu_breakdown_s"]) == set(PHASES)
    assert straight[0]["device_breakdown_s"] == {}  # CUDA events only on a GPU

    epochs_seen = []

    def crash_in_seed_1(run, seed, entry):
        epochs_seen.append((run.label, seed, entry["epoch"]))
        if seed == 1 and run.label == "infobatch" and entry["epoch"] == 2:
            raise Crash

    out = tmp_path / "resumed"
    with pytest.raises(Crash):
        run_bench(bench, out, on_epoch=crash_in_seed_1)
    assert len(read_jsonl(out / RESULTS)) == 2
    resumed = run_bench(bench, out, resume=True)
    assert [r["method"] for r in resumed] == [r["method"] for r in straight]
    for a, b in zip(resumed, straight, strict=True):
        assert accuracies(a) == accuracies(b), a["method"]
        assert a["samples_backpropagated"] == b["samples_backpropagated"]
        assert a["sampler"] == b["sampler"]
