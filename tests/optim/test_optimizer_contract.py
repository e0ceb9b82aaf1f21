"""StochGradAdam against the checks that optimizer test suites run over every
optimizer (PyTorch's own test_optim.py, pytorch-optimizer's): copies and pickles,
state dicts from older versions or with plain-number steps, argument checking in
every entry point, Adam's switches, and complex and half-precision parameters."""

from __future__ import annotations

import copy
import io
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


def _model(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def _train(model, optimizer, n, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        optimizer.zero_grad()
        x, y = torch.randn(16, 6, generator=generator), torch.randint(3, (16,), generator=generator)
        torch.nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("grouped", [False, True], ids=["named_parameters()", "named groups"])
@pytest.mark.parametrize("path", PATHS)
def test_named_parameters_are_taken_as_adam_takes_them(path, grouped):
    """torch >= 2.6 takes (name, parameter) pairs and keeps the names as each group's
    param_names, in state_dict() too; at rate 1 the steps are Adam's, bitwise."""

    def params(model):
        named = list(model.named_parameters())
        if not grouped:
            return named
        return [{"params": named[:2], "lr": 1e-2}, {"params": named[2:]}]

    models = [_model(), _model()]
    adam = torch.optim.Adam(params(models[0]), lr=3e-3, **PATHS[path])
    ours = StochGradAdam(params(models[1]), lr=3e-3, sampling_rate=1.0, **PATHS[path])
    assert torch.equal(_train(models[1], ours, 5), _train(models[0], adam, 5))
    names = [g["param_names"] for g in ours.state_dict()["param_groups"]]
    assert names == [g["param_names"] for g in adam.state_dict()["param_groups"]]
    assert sum(names, []) == [name for name, _ in models[1].named_parameters()]
    masked = StochGradAdam(params(_model()), sampling_rate=0.5, seed=0, **PATHS[path])
    masked.load_state_dict(ours.state_dict())  # ours, at rate 1: the options come along
    assert [g["param_names"] for g in masked.param_groups] == names


def _mixed_params(seed=0):
    """float32 and float64 tensors in one group, a complex one, a channels-last one."""
    generator = torch.Generator().manual_seed(seed)
    conv = torch.randn(4, 3, 3, 3, generator=generator).to(memory_format=torch.channels_last)
    tensors = [
        torch.randn(30, 20, generator=generator),
        torch.randn(20, generator=generator, dtype=torch.float64),
        torch.randn(7, 5, generator=generator, dtype=torch.complex64),
        conv,
    ]
    return [torch.nn.Parameter(t) for t in tensors]


def _stepped(params, optimizer, n, seed=0):
    """``params``, flattened to float64 (complex ones as real views), after ``n`` steps on
    random gradients."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p in params:
            p.grad = torch.randn(p.shape, generator=generator, dtype=p.dtype)
        optimizer.step()
    real = [torch.view_as_real(p.detach()) if p.is_complex() else p.detach() for p in params]
    return torch.cat([t.flatten().double() for t in real])


@pytest.mark.parametrize("weights_only", [True, False])
@pytest.mark.parametrize("options", [{}, {"amsgrad": True, "mask": "tensor"}], ids=["", "amsgrad"])
@pytest.mark.parametrize("path", PATHS)
def test_a_saved_and_loaded_state_continues_bitwise_on_every_path(path, options, weights_only):
    """Through torch.save and torch.load, on a group of float32, float64, complex and
    channels-last parameters: the resumed run is bitwise the uninterrupted one."""

    def fresh(seed):
        params = _mixed_params()
        optimizer = StochGradAdam(params, sampling_rate=0.5, seed=seed, **options, **PATHS[path])
        return params, optimizer

    params, optimizer = fresh(2)
    _stepped(params, optimizer, 3)
    straight = _stepped(params, optimizer, 3, seed=1)

    params, optimizer = fresh(2)
    _stepped(params, optimizer, 3)
    buffer = io.BytesIO()
    torch.save(
        {"params": [p.detach() for p in params], "optimizer": optimizer.state_dict()}, buffer
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=weights_only)
    params, optimizer = fresh(99)  # the seed is restored too
    for p, value in zip(params, saved["params"], strict=True):
        p.data.copy_(value)
    optimizer.load_state_dict(saved["optimizer"])
    assert torch.equal(_stepped(params, optimizer, 3, seed=1), straight)


def _f32(x):
    return torch.tensor(x)  # float32, as a user's torch.tensor(0.9) is


def _pair(path, betas, adam_betas=None):
    """Adam and StochGradAdam at rate 1 on twin models, with ``betas`` (Adam's changed
    to ``adam_betas`` after construction, where given)."""
    models = [_model(), _model()]
    adam = torch.optim.Adam(models[0].parameters(), lr=3e-3, betas=betas, **PATHS[path])
    if adam_betas is not None:
        adam.param_groups[0]["betas"] = adam_betas
    ours = StochGradAdam(
        models[1].parameters(), lr=3e-3, betas=adam_betas or betas, sampling_rate=1.0, **PATHS[path]
    )
    return models, adam, ours


@pytest.mark.parametrize("path", ["fused", "per-tensor"])  # Adam refuses tensors on foreach
def test_tensor_betas_are_computed_with_as_adam_computes_with_them(path):
    """Adam keeps tensor betas as tensors and computes with them in their dtype: at rate
    1 the step is Adam's, bitwise, with both tensors, with one (given so, which Adam
    itself refuses at construction but steps with), and with the float β1 that
    OneCycleLR(cycle_momentum=True) then writes beside the tensor β2."""
    (adam_model, model), adam, ours = _pair(path, (_f32(0.9), _f32(0.999)))
    assert torch.equal(_train(model, ours, 4), _train(adam_model, adam, 4))
    saved = [o.state_dict()["param_groups"][0]["betas"] for o in (ours, adam)]
    assert [type(b) for b in saved[0]] == [type(b) for b in saved[1]] == [torch.Tensor] * 2

    (adam_model, model), adam, ours = _pair(path, (_f32(0.9), _f32(0.999)), (_f32(0.8), 0.999))
    assert torch.equal(_train(model, ours, 4), _train(adam_model, adam, 4))

    schedulers = []
    for optimizer in (adam, ours):
        optimizer.param_groups[0]["betas"] = (0.9, _f32(0.999))
        schedulers.append(torch.optim.lr_scheduler.OneCycleLR(optimizer, 1e-2, total_steps=8))
    for _ in range(4):  # β1 cycled as a float, β2 still a tensor
        assert torch.equal(_train(model, ours, 1), _train(adam_model, adam, 1))
        for scheduler in schedulers:
            scheduler.step()
    betas = ours.param_groups[0]["betas"]
    assert isinstance(betas[0], float) and isinstance(betas[1], torch.Tensor)


@pytest.mark.parametrize("path", PATHS)
def test_float32_and_float64_parameters_in_one_group_step_as_adams(path):
    """One group of both dtypes: at rate 1 Adam's step on every path, bitwise; masked,
    the two unfused paths agree bitwise (test_fused.py checks the fused one against the
    functional update)."""

    def mixed():
        return _params((30, 20), seed=0) + _params((20,), (4, 5), dtype=torch.float64, seed=1)

    adam_params, ours_params = mixed(), mixed()
    adam = torch.optim.Adam(adam_params, lr=1e-2, **PATHS[path])
    ours = StochGradAdam(ours_params, lr=1e-2, sampling_rate=1.0, **PATHS[path])
    assert torch.equal(_stepped(ours_params, ours, 4), _stepped(adam_params, adam, 4))
    runs = []
    for foreach in (True, False):
        params = mixed()
        optimizer = StochGradAdam(params, sampling_rate=0.5, seed=1, fused=False, foreach=foreach)
        runs.append(_stepped(params, optimizer, 4))
    assert torch.equal(runs[0], runs[1])


def _real(t):
    return torch.view_as_real(t.detach()) if t.is_complex() else t.detach()


@pytest.mark.parametrize("path", PATHS)
def test_complex_matrices_step_as_adams(path):
    """At rate 1, complex matrices step as Adam steps them (fused: Adam refuses complex
    parameters, so against Adam on their real views, as both step them)."""
    generator = torch.Generator().manual_seed(0)
    z = [
        torch.randn(40, 5, dtype=d, generator=generator)
        for d in (torch.complex64, torch.complex128)
    ]
    ours_params = [torch.nn.Parameter(t.clone()) for t in z]
    adam_params = [torch.nn.Parameter((_real(t) if path == "fused" else t).clone()) for t in z]
    ours = StochGradAdam(ours_params, lr=1e-2, sampling_rate=1.0, **PATHS[path])
    adam = torch.optim.Adam(adam_params, lr=1e-2, **PATHS[path])
    for _ in range(4):
        for mine, theirs in zip(ours_params, adam_params, strict=True):
            mine.grad = torch.randn(mine.shape, dtype=mine.dtype, generator=generator)
            theirs.grad = torch.view_as_real(mine.grad) if path == "fused" else mine.grad.clone()
        ours.step()
        adam.step()
    for mine, theirs in zip(ours_params, adam_params, strict=True):
        assert torch.equal(_real(mine), _real(theirs))
    assert not torch.equal(ours_params[0].detach(), z[0])
