"""The trainer's speed options: ``amp`` (autocast, fp16 loss scaling) and ``compile``.

Mixed precision runs on CPU (bf16 and fp16 autocast both exist there, slowly), so
these run everywhere; ``torch.compile`` on CPU calls inductor and a C++ compiler,
seconds per graph, so its tests are marked slow and use tiny models.
"""

import json
import math
from collections import OrderedDict

import pytest
import torch
from torch import nn

from sievetrain.losses import sample_losses
from sievetrain.sampling import GradMatchSampler, InfoBatchSampler
from sievetrain.selection import SIFT, SelectiveBackprop
from sievetrain.train import TrainConfig, Trainer
from sievetrain.train.speed import check_amp


def mlp():
    return nn.Sequential(nn.Flatten(), nn.Linear(40, 32), nn.ReLU(), nn.Linear(32, 10))


def staged():
    """A tiny CNN with named stages (batch norm included), where an exit can attach."""
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv1d(1, 8, 5, padding=2), nn.BatchNorm1d(8), nn.ReLU()),
            head=nn.Sequential(nn.Flatten(), nn.Linear(8 * 40, 10)),
        )
    )


def make_trainer(data, build=mlp, *, epochs=3, lr=0.05, sampler=None, selector=None, **config):
    torch.manual_seed(0)
    model = build()
    return Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9),
        data.train,
        data.test,
        config=TrainConfig(epochs=epochs, batch_size=64, **config),
        sampler=sampler,
        selector=selector,
    )


def params(trainer):
    return [p.detach().clone() for p in trainer.module.parameters()]


def test_bf16_trains_the_step_in_bf16_and_learns_as_fp32_does(mnist1d):
    full = make_trainer(mnist1d, staged, epochs=4, schedule="constant").fit()
    trainer = make_trainer(mnist1d, staged, epochs=4, schedule="constant", amp="bf16")
    dtypes = set()
    trainer.module.head.register_forward_hook(lambda m, i, out: dtypes.add((m.training, out.dtype)))
    half = trainer.fit()
    # the step's forward ran in bf16; evaluation (eval mode) in float32
    assert (True, torch.bfloat16) in dtypes and (False, torch.float32) in dtypes
    assert (True, torch.float32) not in dtypes
    losses = [h["train_loss"] for h in half.history]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.7 * losses[0]
    assert half.final_test_accuracy > 0.4  # chance is 0.1
    assert half.final_test_accuracy == pytest.approx(full.final_test_accuracy, abs=0.05)
    assert half.skipped_steps == 0 and trainer.state_dict()["scaler"] == {}  # no loss scaling


def test_fp16_resumes_bitwise_with_its_loss_scale(mnist1d):
    """A scale that overflows at first makes the scaler's state matter: it halves on
    every skipped step, so a resume that dropped it would skip steps anew."""

    def trainer():
        t = make_trainer(mnist1d, epochs=4, amp="fp16")
        t.scaler.load_state_dict({**t.scaler.state_dict(), "scale": 2.0**40})
        return t

    straight = trainer()
    straight.fit()
    assert 0 < straight.acct.skipped_steps < straight.acct.optimizer_steps
    first = trainer()
    first.fit(until=2)
    state = first.state_dict()
    assert state["scaler"]["scale"] < 2.0**40
    resumed = trainer()
    resumed.load_state_dict(state)
    resumed.fit()
    assert all(torch.equal(p, q) for p, q in zip(params(straight), params(resumed), strict=True))
    assert [h["test_accuracy"] for h in resumed.history] == [
        h["test_accuracy"] for h in straight.history
    ]
    assert resumed.scaler.state_dict() == straight.scaler.state_dict()
    assert resumed.acct.skipped_steps == straight.acct.skipped_steps
    # without the scaler's state the resumed run is another run
    forgetful = trainer()
    forgetful.load_state_dict({**state, "scaler": {}})
    forgetful.fit()
    assert not all(
        torch.equal(p, q) for p, q in zip(params(straight), params(forgetful), strict=True)
    )


def test_skipped_fp16_steps_change_nothing_and_infobatch_keeps_true_losses(mnist1d):
    """Every step of an epoch overflows (a huge scale): the model stays put, each step
    counts as skipped, and InfoBatch's scores are the unchanged model's losses."""
    n = len(mnist1d.train)
    sampler = InfoBatchSampler(n, 0.5, epochs=2, seed=0)
    trainer = make_trainer(mnist1d, epochs=2, amp="fp16", sampler=sampler)
    trainer.scaler.load_state_dict({**trainer.scaler.state_dict(), "scale": 2.0**100})
    before = params(trainer)
    trainer.fit(until=1)
    assert trainer.acct.skipped_steps == trainer.acct.optimizer_steps == math.ceil(n / 64)
    assert all(torch.equal(p, q) for p, q in zip(before, params(trainer), strict=True))
    assert trainer.scaler.get_scale() == 2.0 ** (100 - math.ceil(n / 64))
    x, y = mnist1d.train.tensors
    with torch.no_grad():
        losses = sample_losses(trainer.module(x), y)
    assert torch.isfinite(sampler.scores).all()
    assert torch.allclose(sampler.scores, losses, atol=2e-2)  # fp16 logits, float32 loss
    assert trainer.coverage.seen == n


def test_bad_amp_or_compile_values_name_the_value():
    with pytest.raises(ValueError, match="amp must be one of 'off', 'bf16', 'fp16', got 'fp8'"):
        TrainConfig(amp="fp8")
    with pytest.raises(ValueError, match="compile must be a bool, got 'yes'"):
        TrainConfig(compile="yes")
    with pytest.raises(ValueError, match="amp='bf16': autocast is not available on device=meta"):
        check_amp("bf16", torch.device("meta"))
    check_amp("fp16", torch.device("cpu"))  # fp16 autocast exists on CPU


def sievetrain(capsys, *args):
    from sievetrain.cli import main

    code = main(list(args))
    out, err = capsys.readouterr()
    return code, err


def test_cli_amp_is_recorded_with_the_results(tmp_path, capsys):
    out = tmp_path / "o"
    small = ["--dataset", "mnist1d", "--train-size", "600", "--test-size", "200", "--quiet"]
    code, err = sievetrain(
        capsys, "train", *small, "--epochs", "1", "--amp", "bf16", "--out", str(out)
    )
    assert code == 0, err
    (record,) = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert record["config"]["train"]["amp"] == "bf16"
    assert record["config"]["train"]["compile"] is False
    assert json.loads((out / "bench.json").read_text())["train"]["amp"] == "bf16"
    assert record["skipped_steps"] == 0 and record["warmup_time_s"] > 0


def test_cli_compile_flag_and_set_reach_the_config(tmp_path):
    from sievetrain.cli import _parser, _setup

    base = ["--dataset", "mnist1d", "--train-size", "200", "--test-size", "100", "--device", "cpu"]
    for flags in (["--compile"], ["--set", "compile=true"]):
        args = _parser().parse_args(["train", *base, *flags, "--out", str(tmp_path / "o")])
        bench, _, _ = _setup(args)  # checks everything, trains nothing
        assert bench.config.compile is True and bench.config.amp == "off"
    args = _parser().parse_args(["train", *base, "--out", str(tmp_path / "o")])
    assert _setup(args)[0].config.compile is False


@pytest.mark.parametrize(
    "flags, fragment",
    [
        (["--amp", "fp8"], "amp must be one of 'off', 'bf16', 'fp16', got 'fp8'"),
        (["--set", "amp=half"], "got 'half'"),
        (["--set", "compile=maybe"], "invalid compile='maybe': expected true or false"),
    ],
)
def test_cli_bad_speed_values_exit_2_naming_them(tmp_path, capsys, flags, fragment):
    base = ["--dataset", "mnist1d", "--train-size", "200", "--test-size", "100"]
    code, err = sievetrain(capsys, "train", *base, *flags, "--out", str(tmp_path / "o"))
    assert code == 2 and "Traceback" not in err
    assert err.count("\n") == 1 and fragment in err, err
    assert not (tmp_path / "o").exists()


# -- torch.compile: seconds of inductor per graph on CPU ------------------------------


@pytest.mark.slow
def test_compile_trains_like_eager_and_compiles_only_in_the_warm_up(mnist1d):
    from torch._dynamo.utils import counters

    eager = make_trainer(mnist1d, staged, epochs=2)
    eager.fit()
    torch._dynamo.reset()
    counters.clear()
    fast = make_trainer(mnist1d, staged, epochs=2, compile=True)
    summary = fast.fit()
    # one graph, dynamic in the batch: the short last batch did not recompile
    assert counters["stats"]["unique_graphs"] == 1
    assert summary.warmup_time_s > 0
    for p, q in zip(params(eager), params(fast), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
    assert [h["test_accuracy"] for h in summary.history] == pytest.approx(
        [h["test_accuracy"] for h in eager.history], abs=0.01
    )
    # the model itself is untouched: same tree, same checkpoint keys
    assert list(fast.state_dict()["model"]) == list(eager.state_dict()["model"])


def sift():
    return SIFT(0.5, num_classes=10, stage="stem", head="linear")


def selective_backprop():
    return SelectiveBackprop(1.0, full_epochs=1, seed=0)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["sift", "selective-backprop", "gradmatch", "amp"])
def test_compile_keeps_selectors_and_samplers_choices(mnist1d, method):
    """Scoring passes (an early exit's hook, a no-grad loss pass, GRAD-MATCH's hook on
    the last layer) run the eager model: the same choices as without compile."""

    def run(compile):
        n = len(mnist1d.train)
        kwargs = {
            "sift": dict(selector=sift()),
            "selective-backprop": dict(selector=selective_backprop()),
            "gradmatch": dict(sampler=GradMatchSampler(n, 0.5, batch_size=64, epochs=2, kappa=0)),
            "amp": dict(selector=sift(), amp="bf16"),
        }[method]
        trainer = make_trainer(mnist1d, staged, epochs=2, compile=compile, **kwargs)
        return trainer, trainer.fit()

    from torch._dynamo.utils import counters

    (eager, a), (fast, b) = run(False), run(True)
    assert counters["stats"]["unique_graphs"] >= 1  # the compiled step did run
    for key in ("samples_backpropagated", "samples_forwarded_partially", "optimizer_steps"):
        assert getattr(a, key) == getattr(b, key), key
    assert a.samples_backpropagated < 2 * len(mnist1d.train)  # something was left out
    if method in ("sift", "amp"):
        assert fast.selector.samples_scored == 2 * len(mnist1d.train)  # the exit hook fired
        assert fast.selector.exit.stage == "stem"
    seen_a, seen_b = eager.coverage.state_dict()["seen"], fast.coverage.state_dict()["seen"]
    if method == "amp":  # bf16 rounds differently compiled (fused) and eager: a few choices differ
        assert (seen_a != seen_b).float().mean() < 0.02
        assert b.final_test_accuracy == pytest.approx(a.final_test_accuracy, abs=0.02)
        return
    # the same samples were kept: the same ones seen, the same coreset batches chosen
    assert torch.equal(seen_a, seen_b)
    if method == "gradmatch":
        assert torch.equal(
            eager.sampler.state_dict()["batches"], fast.sampler.state_dict()["batches"]
        )
    for p, q in zip(params(eager), params(fast), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def _two_rank_run(rank, world):
    """A run of a tiny MLP with compile and fp16; under two ranks, DDP inside."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(712, 12, generator=g)
    y = (x[:, :3].sum(dim=1) > 0).long() + 2 * (x[:, 3] > 0).long()  # 4 classes
    train, test = (
        torch.utils.data.TensorDataset(x[:512], y[:512]),
        torch.utils.data.TensorDataset(x[512:], y[512:]),
    )
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    config = TrainConfig(epochs=2, batch_size=64, compile=True, amp="fp16")
    trainer = Trainer(
        model, torch.optim.SGD(model.parameters(), lr=0.2), train, test, config=config
    )
    summary = trainer.fit()
    return params(trainer), summary.final_test_accuracy, trainer.state_dict()["scaler"]


@pytest.mark.slow
def test_compile_and_fp16_under_two_ranks_train_as_one_process(ranks):
    """torch.compile wraps the DDP model (DDP's own compiled path); the scaler's
    decisions follow the all-reduced gradients, so every rank agrees."""
    alone = _two_rank_run(0, 1)
    first, second = ranks(_two_rank_run)
    assert all(torch.equal(p, q) for p, q in zip(first[0], second[0], strict=True))
    assert first[2] == second[2] and first[2]["scale"] > 0
    for p, q in zip(alone[0], first[0], strict=True):
        torch.testing.assert_close(p, q, rtol=1e-2, atol=1e-2)  # fp16, summed in another order
    assert first[1] == pytest.approx(alone[1], abs=0.02)
