"""StochGradAdam against the checks that optimizer test suites run over every
optimizer (PyTorch's own test_optim.py, pytorch-optimizer's): copies and pickles,
state dicts from older versions or with plain-number steps, argument checking in
every entry point, Adam's switches, and complex and half-precision parameters."""

from __future__ import annotations

import copy
import pickle
import types

import pytest
import torch

import sievetrain.optim
from sievetrain.optim import StochGradAdam, functional

PATHS = {
    "fused": {"fused": True},
    "foreach": {"fused": False, "foreach": True},
    "per-tensor": {"fused": False, "foreach": False},
}


def _params(*shapes, dtype=torch.float32, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*s, generator=generator, dtype=dtype)) for s in shapes]


def _steps(params, optimizer, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in params])


def _copy_deep(pair):
    return copy.deepcopy(pair)


def _copy_pickle(pair):
    return pickle.loads(pickle.dumps(pair))


@pytest.mark.parametrize("make_copy", [_copy_deep, _copy_pickle], ids=["deepcopy", "pickle"])
@pytest.mark.parametrize("path", ["fused", "foreach"])
def test_a_copy_keeps_the_seed_and_generators_and_steps_as_the_original(make_copy, path):
    params = _params((30, 20), (20,))
    optimizer = StochGradAdam(params, sampling_rate=0.5, seed=3, **PATHS[path])
    _steps(params, optimizer, 2)
    twin_params, twin = make_copy((params, optimizer))
    assert twin.seed == 3
    state = twin.state_dict()  # no AttributeError
    assert torch.equal(state["generators"]["cpu"], optimizer.state_dict()["generators"]["cpu"])
    assert torch.equal(_steps(twin_params, twin, 3, seed=1), _steps(params, optimizer, 3, seed=1))


def _older(state, *group_keys):
    """``state`` as a version without the options ``group_keys`` would have saved it."""
    for group in state["param_groups"]:
        for key in group_keys:
            del group[key]
    return state


def _resumed(saved, **switches):
    params = _params((30, 20), (20,), seed=9)
    optimizer = StochGradAdam(params, sampling_rate=0.5, seed=0, **switches)
    optimizer.load_state_dict(saved["optimizer"])
    for p, value in zip(params, saved["params"], strict=True):
        p.data.copy_(value)
    return params, optimizer


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: _older(s, "foreach", "fused", "capturable", "differentiable"),
        lambda s: _older(s, "amsgrad", "maximize"),
        lambda s: {**s, "state": {k: {**v, "step": int(v["step"])} for k, v in s["state"].items()}},
    ],
    ids=["without the switches", "without amsgrad and maximize", "plain-number steps"],
)
def test_an_older_or_plainer_state_dict_loads_and_resumes_exactly(edit):
    params = _params((30, 20), (20,))
    optimizer = StochGradAdam(params, sampling_rate=0.5, seed=4)
    _steps(params, optimizer, 2)
    saved = {
        "optimizer": edit(copy.deepcopy(optimizer.state_dict())),  # the live moments move on
        "params": [p.detach().clone() for p in params],
    }
    straight = _steps(params, optimizer, 3, seed=1)
    resumed_params, resumed = _resumed(saved)
    group = resumed.param_groups[0]
    assert group["fused"] is None and group["foreach"] is None and group["amsgrad"] is False
    assert all(isinstance(s["step"], torch.Tensor) for s in resumed.state.values())
    assert torch.equal(_steps(resumed_params, resumed, 3, seed=1), straight)


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        ({"lr": -1.0}, "lr=-1.0"),
        ({"betas": (0.9, 1.5)}, r"betas=\(0.9, 1.5\)"),
        ({"eps": -1e-8}, "eps=-1e-08"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1"),
        ({"sampling_rate": 2.0}, "sampling_rate=2.0"),
        ({"mask": "bogus"}, "'bogus'"),
        ({"amsgrad": "yes"}, "amsgrad"),
        ({"fused": "yes"}, "fused must be True, False or None, got 'yes'"),
        ({"capturable": True}, "capturable=True"),
        ({"lr": torch.tensor([1e-3, 2e-3])}, r"invalid lr=tensor\(\[0.0010, 0.0020\]\)"),
    ],
)
def test_add_param_group_checks_the_group_and_adds_nothing_bad(options, fragment):
    optimizer = StochGradAdam(_params((3,)), seed=0)
    with pytest.raises(ValueError, match=fragment):
        optimizer.add_param_group({"params": _params((2,), seed=1), **options})
    assert len(optimizer.param_groups) == 1
    optimizer.add_param_group({"params": _params((2,), seed=1), "lr": 0.1})
    assert optimizer.param_groups[1]["lr"] == 0.1
    assert optimizer.param_groups[1]["sampling_rate"] == 0.8  # the default filled in


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"lr": -1}, "lr=-1"),
        ({"sampling_rate": 2}, "sampling_rate=2"),
        ({"differentiable": True}, "differentiable=True"),
        ({"foreach": True, "fused": True}, "foreach=True with fused=True"),
    ],
)
def test_arguments_are_checked_before_params_are_read(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        StochGradAdam(None, **kwargs)


def test_fused_true_refuses_parameters_the_kernel_cannot_take():
    with pytest.raises(ValueError, match=r"fused=True.*torch.float16 on cpu"):
        StochGradAdam(_params((4,), dtype=torch.float16), fused=True)


def test_one_element_tensor_hyperparameters_are_read_as_their_values():
    def run(**options):
        params = _params((20, 10))
        return _steps(params, StochGradAdam(params, seed=1, **options), 3)

    expected = run(lr=1e-2, betas=(0.8, 0.99))
    as_tensor = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    got = run(lr=as_tensor(1e-2), betas=(as_tensor([0.8]), 0.99))
    assert torch.equal(got, expected)
    with pytest.raises(ValueError, match=r"invalid betas=tensor\(\[0.8000, 0.7000\]\)"):
        StochGradAdam(_params((2,)), betas=(torch.tensor([0.8, 0.7]), 0.99))


def test_the_functional_api_is_what_the_package_exports_by_that_name():
    assert sievetrain.optim.stochgradadam is functional.stochgradadam
    for name in sievetrain.optim.__all__:
        assert not isinstance(getattr(sievetrain.optim, name), types.ModuleType), name


@pytest.mark.parametrize("path", PATHS)
def test_maximize_ascends_what_it_would_descend(path):
    def run(maximize, sign):
        params = _params((40, 30))
        optimizer = StochGradAdam(
            params, sampling_rate=0.5, seed=2, maximize=maximize, **PATHS[path]
        )
        generator = torch.Generator().manual_seed(0)
        for _ in range(3):
            params[0].grad = sign * torch.randn(40, 30, generator=generator)
            optimizer.step()
        return params[0].detach()

    assert torch.equal(run(True, 1.0), run(False, -1.0))


@pytest.mark.parametrize("path", PATHS)
def test_amsgrad_keeps_the_running_maximum_of_the_second_moment(path):
    params = _params((40, 30))
    optimizer = StochGradAdam(params, sampling_rate=0.5, seed=2, amsgrad=True, **PATHS[path])
    generator = torch.Generator().manual_seed(0)
    seen = torch.zeros(40, 30)
    for scale in (1.0, 3.0, 0.1, 0.1):  # large gradients, then small: v falls, max stays
        params[0].grad = scale * torch.randn(40, 30, generator=generator)
        optimizer.step()
        seen = torch.maximum(seen, optimizer.state[params[0]]["exp_avg_sq"])
    state = optimizer.state[params[0]]
    assert torch.equal(state["max_exp_avg_sq"], seen)
    assert torch.any(state["max_exp_avg_sq"] > state["exp_avg_sq"])


@pytest.mark.parametrize("rate", [1.0, 0.5])
@pytest.mark.parametrize("path", PATHS)
def test_complex_parameters_step_as_their_real_views(path, rate):
    """As Adam: a complex parameter is stepped as its real view, so it lands where
    the same optimizer lands on the real view itself (and at rate 1 where Adam does)."""
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(40, 5, dtype=torch.complex64, generator=generator)
    as_complex = [torch.nn.Parameter(z.clone())]
    as_real = [torch.nn.Parameter(torch.view_as_real(z).clone())]
    optimizers = [
        StochGradAdam(p, sampling_rate=rate, seed=2, **PATHS[path]) for p in (as_complex, as_real)
    ]
    for _ in range(3):
        g = torch.randn(40, 5, dtype=torch.complex64, generator=generator)
        as_complex[0].grad, as_real[0].grad = g, torch.view_as_real(g).clone()
        for optimizer in optimizers:
            optimizer.step()
    assert torch.equal(torch.view_as_real(as_complex[0].detach()), as_real[0].detach())
    assert not torch.equal(as_complex[0].detach(), z)


@pytest.mark.parametrize("options", [{}, {"masked_state": "freeze"}, {"amsgrad": True}])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_parameters_stay_finite_and_follow_float32(dtype, options):
    """ε = 1e-8 is 0 in float16, and an entry masked before its first use has m = v = 0:
    the step is computed in float32, as torch's fused Adam does, so it stays finite
    and lands, to the 16-bit rounding, where the float32 run (same masks) lands."""
    half = _params((1000,), dtype=dtype)
    single = [torch.nn.Parameter(half[0].detach().float())]
    runs = []
    for params in (half, single):
        optimizer = StochGradAdam(params, sampling_rate=0.8, seed=0, fused=False, **options)
        generator = torch.Generator().manual_seed(1)
        for _ in range(5):
            g = torch.randn(1000, generator=generator)
            params[0].grad = g.to(params[0].dtype)
            optimizer.step()
        state = optimizer.state[params[0]]
        assert all(torch.isfinite(t).all() for t in (params[0], *state.values()))
        runs.append(params[0].detach().float())
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-2, atol=1e-2)
