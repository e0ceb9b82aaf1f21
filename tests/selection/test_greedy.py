"""Greedy SGD on MNIST-1D logistic regression: the closed-form gradient is autograd's,
R = 1 is plain SGD, the pick is the exact-loss argmax, runs are reproducible, and
GSGD (R = 4) is ahead of SGD early in training at the step size 1 / mean smoothness."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sievetrain.rng import make_generator
from sievetrain.selection.greedy import (
    approx_softmax_losses,
    greedy_sgd,
    softmax_gradient,
    softmax_losses,
)


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Batch-size-1 steps are tiny ops: a second intra-op thread only adds sync cost,
    and after ``mnist1d.data`` is imported (to generate the dataset) two OpenMP
    runtimes share the process and 2-thread ops slowed ~100x when measured."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def problem(mnist1d):
    """Flattened, per-feature standardised MNIST-1D train set (2000, 40), float64."""
    x, y = mnist1d.train.tensors
    x = x.flatten(1).double()
    return (x - x.mean(0)) / x.std(0), y


def mean_smoothness(x):
    """Mean over samples of the per-sample smoothness bound (||x_i||² + 1) / 2 of the
    softmax cross-entropy (the softmax Hessian's norm is at most 1/2; + 1 for the bias)."""
    return ((x.pow(2).sum(1) + 1) / 2).mean().item()


def reference_run(x, y, candidates, *, lr, num_classes=10):
    """GSGD written independently: autograd gradients, losses recomputed from scratch.

    Returns the final parameters and, per step, whether the chosen sample (the first
    exact-loss argmax) has the largest exact loss among the step's candidates.
    """
    weight = x.new_zeros(x.shape[1], num_classes, requires_grad=True)
    bias = x.new_zeros(num_classes, requires_grad=True)
    chosen = []
    for idx in candidates:
        with torch.no_grad():
            losses = F.cross_entropy(x[idx] @ weight + bias, y[idx], reduction="none")
        j = idx[int(losses.argmax())]
        chosen.append(int(j))
        loss = F.cross_entropy((x[j] @ weight + bias)[None], y[j][None])
        grad_weight, grad_bias = torch.autograd.grad(loss, [weight, bias])
        with torch.no_grad():
            weight -= lr * grad_weight
            bias -= lr * grad_bias
    return weight.detach(), bias.detach(), torch.tensor(chosen)


def test_closed_form_gradient_is_autograds(problem):
    x, y = problem
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(40, 10, generator=gen, dtype=torch.float64)
    bias = torch.randn(10, generator=gen, dtype=torch.float64)
    for i in (0, 7, 1999):
        w, b = weight.clone().requires_grad_(), bias.clone().requires_grad_()
        loss = softmax_losses(x[i : i + 1], y[i : i + 1], w, b).sum()
        expected = torch.autograd.grad(loss, [w, b])
        got = softmax_gradient(x[i], y[i], weight, bias)
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def test_approx_losses_with_every_coordinate_are_exact(problem):
    x, y = problem
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(40, 10, generator=gen, dtype=torch.float64)
    bias = torch.randn(10, generator=gen, dtype=torch.float64)
    exact = softmax_losses(x, y, weight, bias)
    coords = torch.randperm(40, generator=gen)
    torch.testing.assert_close(approx_softmax_losses(x, y, weight, bias, coords), exact)
    half = approx_softmax_losses(x, y, weight, bias, coords[:20])
    assert half.shape == exact.shape and not torch.allclose(half, exact)


def test_one_candidate_is_plain_sgd(problem):
    """The degenerate case: R = 1 lands where an autograd SGD loop on the same draws lands."""
    x, y = problem
    steps, lr = 300, 0.5 / mean_smoothness(x)
    result = greedy_sgd(
        x, y, candidates=1, steps=steps, lr=lr, generator=make_generator(0, "sgd"), record_every=100
    )
    draws = torch.randint(2000, (steps, 1), generator=make_generator(0, "sgd"))
    weight, bias, chosen = reference_run(x, y, draws, lr=lr)
    assert torch.equal(result["candidates"], draws)
    assert torch.equal(result["chosen"], draws[:, 0]) and torch.equal(chosen, draws[:, 0])
    torch.testing.assert_close(result["weight"], weight, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(result["bias"], bias, rtol=1e-10, atol=1e-12)
    assert result["iterations"].tolist() == [0, 100, 200, 300]
    torch.testing.assert_close(result["loss"][-1], softmax_losses(x, y, weight, bias).mean())
    assert result["loss"][0].item() == pytest.approx(torch.log(torch.tensor(10.0)).item())


@pytest.mark.parametrize("candidates", [2, 8])
def test_exact_score_picks_the_largest_loss(problem, candidates):
    """Replaying the run's own candidates, every pick is the exact-loss argmax and the
    parameters match to round-off."""
    x, y = problem
    lr = 1 / mean_smoothness(x)
    result = greedy_sgd(
        x, y, candidates=candidates, steps=300, lr=lr, generator=make_generator(1, "gsgd")
    )
    weight, _, chosen = reference_run(x, y, result["candidates"], lr=lr)
    assert torch.equal(result["chosen"], chosen)
    assert result["argmax_agreement"] == 1.0
    torch.testing.assert_close(result["weight"], weight, rtol=1e-10, atol=1e-12)
    # Not a trivial pick: the argmax is often not the first candidate.
    assert (result["chosen"] != result["candidates"][:, 0]).float().mean() > 0.3


def test_same_seed_same_trajectory(problem):
    x, y = problem
    kwargs = dict(candidates=4, steps=200, lr=0.02, score="approx", record_every=50)
    first = greedy_sgd(x, y, generator=make_generator(3, "gsgd"), **kwargs)
    again = greedy_sgd(x, y, generator=make_generator(3, "gsgd"), **kwargs)
    other = greedy_sgd(x, y, generator=make_generator(4, "gsgd"), **kwargs)
    for key in ("loss", "candidates", "chosen", "weight", "bias"):
        assert torch.equal(first[key], again[key]), key
    assert first["argmax_agreement"] == again["argmax_agreement"]
    assert not torch.equal(first["candidates"], other["candidates"])


def test_scores_share_candidates_and_approx_is_measured(problem):
    x, y = problem
    kwargs = dict(candidates=4, steps=200, lr=0.02, record_every=50)
    exact = greedy_sgd(x, y, generator=make_generator(5, "gsgd"), **kwargs)
    approx = greedy_sgd(
        x, y, generator=make_generator(5, "gsgd"), score="approx", approx_fraction=0.25, **kwargs
    )
    full = greedy_sgd(
        x, y, generator=make_generator(5, "gsgd"), score="approx", approx_fraction=1.0, **kwargs
    )
    assert torch.equal(exact["candidates"], approx["candidates"])
    assert 0.0 < approx["argmax_agreement"] < 1.0
    assert full["argmax_agreement"] == 1.0 and torch.equal(full["chosen"], exact["chosen"])


def test_greedy_is_ahead_of_sgd_early(problem):
    """The paper's claim, at the same step size and number of gradient steps: over
    the first 1000 steps (20 records), R = 4 has the lower average training loss,
    for every one of 3 seeds. Measured margin on this data about 0.18 nats with a
    seed spread of about 0.02; at a quarter of this step size the order reverses
    (see benchmarks/greedy_sgd.md), so this can fail."""
    x, y = problem
    lr = 1 / mean_smoothness(x)  # about 0.049
    for seed in range(3):
        early = {}
        for candidates in (1, 4):
            result = greedy_sgd(
                x,
                y,
                candidates=candidates,
                steps=1000,
                lr=lr,
                generator=make_generator(seed, "claim"),
                record_every=50,
            )
            early[candidates] = result["loss"][1:].mean().item()
        assert early[4] < early[1] - 0.05, (seed, early)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(candidates=0), "candidates"),
        (dict(candidates=2.0), "candidates"),
        (dict(steps=0), "steps"),
        (dict(record_every=0), "record_every"),
        (dict(lr=0.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(score="entropy"), "score"),
        (dict(approx_fraction=0.0), "approx_fraction"),
        (dict(approx_fraction=1.5), "approx_fraction"),
        (dict(num_classes=5), "num_classes"),
    ],
)
def test_bad_arguments_raise(problem, kwargs, match):
    x, y = problem
    args = dict(candidates=2, steps=10, lr=0.01, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=match):
        greedy_sgd(x, y, **{**args, **kwargs})


def test_bad_data_raises(problem):
    x, y = problem
    args = dict(candidates=2, steps=10, lr=0.01, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="y int64"):
        greedy_sgd(x, y.float(), **args)
    with pytest.raises(ValueError, match="x must be"):
        greedy_sgd(x[:, None], y, **args)
