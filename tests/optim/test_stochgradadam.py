"""StochGradAdam on each of its paths (fused; unfused foreach and per-tensor): equal
to Adam at rate 1, the unfused paths agree, masks behave as documented, state
round-trips bitwise, and it trains the reference model."""

from __future__ import annotations

import copy
import io
import itertools
import math
import pickle

import pytest
import torch
import torch.nn.functional as F

from sievetrain.models import build_model
from sievetrain.optim import StochGradAdam, build_optimizer, draw_masks, fused
from sievetrain.train import TrainConfig, Trainer

# Each path's switches, and the torch.optim.Adam it equals at rate 1.
PATHS = {
    "fused": {"fused": True},
    "foreach": {"fused": False, "foreach": True},
    "per-tensor": {"fused": False, "foreach": False},
}
MASKED_PATHS = ["fused", "foreach"]  # the two mask streams


def replay_masks(optimizer, params, rate, mask="element"):
    """The masks ``optimizer``'s next step will draw, from a copy of its generator."""
    replay = torch.Generator().set_state(optimizer._generator(torch.device("cpu")).get_state())
    if optimizer.param_groups[0]["fused"] is False:
        return draw_masks(params, rate, mask=mask, generator_for=lambda device: replay)
    (key,) = fused.step_keys(replay)
    return fused.masks(params, key, rate, mask)


def real_batch(mnist1d, n=128):
    x, y = mnist1d.train.tensors
    return x[:n].double(), y[:n]


def reference_model(mnist1d, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model("mnist1d-cnn", num_classes=10, input_shape=mnist1d.input_shape)
    return model.double()


def train(model, optimizer, x, y, steps):
    for _ in range(steps):
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize(
    ("options", "rate"),
    [({}, 1.0), ({}, 1 - 2**-18), ({"weight_decay": 1e-2, "amsgrad": True}, 1.0)],
    ids=["rate 1", "rate rounding to 1", "weight_decay+amsgrad"],
)
@pytest.mark.parametrize("path", PATHS)
def test_sampling_rate_one_is_adam(mnist1d, path, options, rate):
    """The degenerate case: with every entry used (also at a rate that rounds to 1 in
    16 bits), 40 steps on a real model land bitwise where torch.optim.Adam with the
    same switches lands."""
    x, y = real_batch(mnist1d, 32)
    model = reference_model(mnist1d)
    twin = copy.deepcopy(model)
    adam = torch.optim.Adam(model.parameters(), lr=3e-3, **options, **PATHS[path])
    ours = StochGradAdam(twin.parameters(), lr=3e-3, sampling_rate=rate, **options, **PATHS[path])
    expected = train(model, adam, x, y, 40)
    got = train(twin, ours, x, y, 40)
    assert torch.equal(got, expected)
    assert not torch.equal(
        expected, torch.cat([p.flatten() for p in reference_model(mnist1d).parameters()])
    )


OPTIONS = list(
    itertools.product(["element", "tensor"], ["decay", "freeze"], [False, True], [0.0, 0.1])
)


@pytest.mark.parametrize(("mask", "masked_state", "rescale", "weight_decay"), OPTIONS)
def test_foreach_and_per_tensor_paths_agree(mnist1d, mask, masked_state, rescale, weight_decay):
    x, y = real_batch(mnist1d, 64)
    runs = []
    for foreach in (True, False):
        model = reference_model(mnist1d)
        optimizer = StochGradAdam(
            model.parameters(),
            sampling_rate=0.6,
            weight_decay=weight_decay,
            mask=mask,
            masked_state=masked_state,
            rescale=rescale,
            seed=3,
            foreach=foreach,
            fused=False,
        )
        runs.append(train(model, optimizer, x, y, 20))
    assert torch.equal(runs[0], runs[1])


def _params(*shapes, dtype=torch.float32):
    torch.manual_seed(0)
    return [torch.nn.Parameter(torch.randn(*s, dtype=dtype)) for s in shapes]


@pytest.mark.parametrize("path", MASKED_PATHS)
@pytest.mark.parametrize("rate", [0.05, 0.5, 0.8])
def test_fraction_of_updated_entries_matches_the_rate(rate, path):
    params = _params((300, 200), (500,), (40, 10, 3, 3))
    for p in params:
        p.grad = torch.randn_like(p)  # nonzero everywhere
    optimizer = StochGradAdam(
        params, sampling_rate=rate, masked_state="freeze", seed=0, **PATHS[path]
    )
    optimizer.step()
    # From zero moments, one step leaves m != 0 exactly where the entry was used.
    used = sum(int((optimizer.state[p]["exp_avg"] != 0).sum()) for p in params)
    n = sum(p.numel() for p in params)
    realised = round(rate * 2**16) / 2**16
    bound = 5 * math.sqrt(realised * (1 - realised) / n)  # five binomial standard deviations
    assert abs(used / n - realised) < bound
    # A fresh mask every step: the next step (masked entries frozen) uses about as
    # many entries, and not the same ones.
    before = [optimizer.state[p]["exp_avg"].clone() for p in params]
    first = [b != 0 for b in before]
    optimizer.step()
    changed = [optimizer.state[p]["exp_avg"] != b for p, b in zip(params, before, strict=True)]
    fresh_used = sum(int(c.sum()) for c in changed)
    assert abs(fresh_used / n - realised) < bound
    both = sum(int((c & f).sum()) for c, f in zip(changed, first, strict=True))
    assert abs(both / n - realised**2) < 5 * math.sqrt(realised**2 * (1 - realised**2) / n)


def test_tensor_masks_keep_or_drop_whole_tensors():
    params = _params(*[(7, 5)] * 40)
    generator = torch.Generator().manual_seed(0)
    kept = 0
    for _ in range(25):
        masks = draw_masks(params, 0.3, mask="tensor", generator_for=lambda device: generator)
        for m in masks:
            assert torch.all(m == m.flatten()[0]), "a tensor is partly masked"
        kept += sum(int(m.flatten()[0]) for m in masks)
    trials = 25 * 40
    assert abs(kept / trials - 0.3) < 5 * math.sqrt(0.3 * 0.7 / trials)


def test_element_masks_are_0_1_in_the_parameter_dtype():
    params = _params((30, 20), (20,), dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    masks = draw_masks(params, 0.5, mask="element", generator_for=lambda device: generator)
    for m, p in zip(masks, params, strict=True):
        assert m.shape == p.shape and m.dtype == p.dtype
        assert set(m.unique().tolist()) == {0.0, 1.0}
    assert draw_masks(params, 1.0, mask="element", generator_for=None) is None


@pytest.mark.parametrize("path", PATHS)
def test_freeze_leaves_masked_moments_and_parameters_untouched(path):
    params = _params((50, 40), (40,), dtype=torch.float64)
    optimizer = StochGradAdam(
        params, sampling_rate=0.5, masked_state="freeze", seed=1, **PATHS[path]
    )
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer.step()  # moments now nonzero where used
    for p in params:
        p.grad = torch.randn_like(p)
    before = {
        id(p): (
            p.detach().clone(),
            *(optimizer.state[p][k].clone() for k in ("exp_avg", "exp_avg_sq")),
        )
        for p in params
    }
    masks = replay_masks(optimizer, params, 0.5)
    optimizer.step()
    for p, keep in zip(params, masks, strict=True):
        masked = keep == 0
        old_p, old_m, old_v = before[id(p)]
        new = (p.detach(), optimizer.state[p]["exp_avg"], optimizer.state[p]["exp_avg_sq"])
        for old, now in zip((old_p, old_m, old_v), new, strict=True):
            assert torch.equal(now[masked], old[masked])
            assert torch.all(now[~masked] != old[~masked])


@pytest.mark.parametrize("path", MASKED_PATHS)
def test_decay_moves_masked_entries_by_their_momentum(path):
    params = _params((50, 40), dtype=torch.float64)
    optimizer = StochGradAdam(params, sampling_rate=0.5, seed=1, **PATHS[path])
    params[0].grad = torch.randn_like(params[0])
    optimizer.step()
    m_before = optimizer.state[params[0]]["exp_avg"].clone()
    p_before = params[0].detach().clone()
    (keep,) = replay_masks(optimizer, params, 0.5)
    optimizer.step()
    masked = keep == 0
    # A masked entry counts as a zero gradient: its first moment decays by beta1 (to
    # round-off: the fused step computes m + (1 - beta1)(0 - m) with one rounding)...
    decayed = m_before * 0.9
    m_now = optimizer.state[params[0]]["exp_avg"]
    torch.testing.assert_close(m_now[masked], decayed[masked], rtol=1e-15, atol=0)
    # ...and its parameter still moves, by the decayed momentum (if it has any).
    drifting = masked & (m_before != 0)
    assert drifting.sum() > 100
    assert torch.all(params[0].detach()[drifting] != p_before[drifting])


@pytest.mark.parametrize("path", PATHS)
def test_save_load_continue_is_bitwise_an_uninterrupted_run(mnist1d, path):
    x, y = mnist1d.train.tensors[0][:64], mnist1d.train.tensors[1][:64]

    def fresh():
        model = reference_model(mnist1d).float()
        return model, StochGradAdam(model.parameters(), sampling_rate=0.5, seed=7, **PATHS[path])

    model, optimizer = fresh()
    straight = train(model, optimizer, x, y, 20)

    model, optimizer = fresh()
    train(model, optimizer, x, y, 10)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    model, _ = fresh()
    optimizer = StochGradAdam(  # the seed is restored too
        model.parameters(), sampling_rate=0.5, seed=999, **PATHS[path]
    )
    model.load_state_dict(saved["model"])
    optimizer.load_state_dict(saved["optimizer"])
    resumed = train(model, optimizer, x, y, 10)
    assert torch.equal(resumed, straight)


@pytest.mark.parametrize("path", MASKED_PATHS)
def test_same_seed_same_masks_different_seed_different_masks(path):
    def run(seed):
        params = _params((20, 20))
        optimizer = StochGradAdam(params, sampling_rate=0.5, seed=seed, **PATHS[path])
        for _ in range(3):
            params[0].grad = torch.ones_like(params[0])
            optimizer.step()
        return params[0].detach()

    assert torch.equal(run(1), run(1))  # what keeps data-parallel replicas in sync
    assert not torch.equal(run(1), run(2))


def test_it_trains_the_reference_model(mnist1d):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = build_model("mnist1d-cnn", num_classes=10, input_shape=mnist1d.input_shape)
    optimizer = build_optimizer("stochgradadam", model.parameters(), seed=0, lr=3e-3)
    trainer = Trainer(
        model,
        optimizer,
        mnist1d.train,
        mnist1d.test,
        config=TrainConfig(epochs=6, batch_size=64, schedule="constant"),
    )
    first_loss = trainer.evaluate()["test_loss"]
    summary = trainer.fit()
    assert summary.final_test_loss < 0.5 * first_loss
    assert summary.final_test_accuracy > 0.6  # chance is 0.1


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"lr": -1.0}, "lr=-1.0"),
        ({"lr": float("nan")}, "lr=nan"),
        ({"sampling_rate": 0.0}, "sampling_rate=0.0"),
        ({"sampling_rate": 1.5}, "sampling_rate=1.5"),
        ({"sampling_rate": 1e-6}, "sampling_rate=1e-06"),
        ({"betas": (0.9, 1.0)}, r"betas=\(0.9, 1.0\)"),
        ({"betas": (-0.1, 0.99)}, r"betas=\(-0.1, 0.99\)"),
        ({"eps": -1e-8}, "eps=-1e-08"),
        ({"weight_decay": -0.1}, "weight_decay=-0.1"),
        ({"mask": "row"}, "'row'"),
        ({"masked_state": "keep"}, "'keep'"),
        ({"sampling_rate": "0.5"}, "sampling_rate must be a number, got '0.5'"),
        ({"seed": "x"}, "seed must be an integer, got 'x'"),
        ({"seed": 1.5}, "seed must be an integer, got 1.5"),
        ({"foreach": "yes"}, "foreach must be True, False or None, got 'yes'"),
    ],
)
def test_invalid_arguments_name_the_value(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        StochGradAdam(_params((2,)), **kwargs)


def test_invalid_group_option_and_unknown_factory_option():
    params = _params((2,), (3,))
    with pytest.raises(ValueError, match="sampling_rate=2"):
        StochGradAdam([{"params": params[:1]}, {"params": params[1:], "sampling_rate": 2}])
    with pytest.raises(ValueError, match="'momentum'"):
        build_optimizer("stochgradadam", params, momentum=0.9)


def _stepped(seed=0):
    params = _params((4,))
    optimizer = StochGradAdam(params, sampling_rate=0.5, seed=seed)
    params[0].grad = torch.ones(4)
    optimizer.step()
    return params, optimizer


def _without(state, *keys, group_keys=()):
    state = {k: v for k, v in state.items() if k not in keys}
    state["param_groups"] = [
        {k: v for k, v in g.items() if k not in group_keys} for g in state["param_groups"]
    ]
    return state


@pytest.mark.parametrize(
    ("make_state", "fragment"),
    [
        (  # Adam's state_dict has the same per-parameter state, but no sampling options
            lambda params: torch.optim.Adam(params).state_dict(),
            r"another optimizer's\?\): it lacks 'seed', 'generators'; param group 0's "
            "'sampling_rate', 'mask', 'masked_state', 'rescale'",
        ),
        (
            lambda params: _without(_stepped()[1].state_dict(), "generators"),
            "it lacks 'generators'$",
        ),
        (
            lambda params: _without(_stepped()[1].state_dict(), group_keys=["sampling_rate"]),
            "it lacks param group 0's 'sampling_rate'$",
        ),
        (
            lambda params: {**_stepped()[1].state_dict(), "seed": "7"},
            "seed must be an integer, got '7'",
        ),
        (
            lambda params: {**_stepped()[1].state_dict(), "generators": {"cpu": torch.zeros(3)}},
            "invalid generator state for device 'cpu'",
        ),
        (
            lambda params: {**_stepped()[1].state_dict(), "generators": [torch.zeros(3)]},
            "generators must be a dict",
        ),
        (
            lambda params: {**_stepped()[1].state_dict(), "generators": {"gpu": torch.zeros(3)}},
            "invalid generator device 'gpu'",
        ),
        (
            lambda params: {
                **_stepped()[1].state_dict(),
                "generators": {k: torch.zeros(16, dtype=torch.uint8) for k in ("cuda:0", "cuda:1")},
            },
            "generators 'cuda:0' and 'cuda:1' are both for device type 'cuda'",
        ),
    ],
)
def test_load_state_dict_refuses_a_state_that_is_not_its_own_and_changes_nothing(
    make_state, fragment
):
    params, optimizer = _stepped(seed=3)
    before = copy.deepcopy(optimizer.state_dict())
    with pytest.raises(ValueError, match=fragment):
        optimizer.load_state_dict(make_state(params))
    after = optimizer.state_dict()
    assert after["seed"] == 3 and after["param_groups"] == before["param_groups"]
    assert torch.equal(after["generators"]["cpu"], before["generators"]["cpu"])
    optimizer.step()  # still a working StochGradAdam


def _masked_run(seed=None, steps=3):
    params = _params((20, 20))
    optimizer = StochGradAdam(params, sampling_rate=0.5, seed=seed)
    for _ in range(steps):
        params[0].grad = torch.ones_like(params[0])
        optimizer.step()
    return params[0].detach(), optimizer


def _unresolved_run(optimizer, params, global_seed, steps=3):
    """Steps ``optimizer`` under ``torch.manual_seed(global_seed)``, which seed=None takes
    at the first step with gradients; the seed and the parameters after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(global_seed)
        for _ in range(steps):
            params[0].grad = torch.ones_like(params[0])
            optimizer.step()
    return optimizer.seed, params[0].detach()


def test_seed_none_is_taken_at_the_first_step_from_torch_manual_seed():
    """Not at construction, where a data-parallel job may have no process group yet:
    at the first step with gradients (a collective there: every rank steps together)."""

    def run(global_seed):
        params = _params((20, 20))
        optimizer = StochGradAdam(params, sampling_rate=0.5)
        assert optimizer.seed is None
        optimizer.step()  # no gradients: nothing stepped, nothing drawn, the seed still open
        assert optimizer.seed is None and optimizer.state_dict()["seed"] is None
        return _unresolved_run(optimizer, params, global_seed)

    (seed, first), (seed_again, again), (other_seed, other) = run(5), run(5), run(6)
    assert seed == seed_again and torch.equal(first, again)
    assert other_seed != seed and not torch.equal(first, other)


def test_a_state_saved_before_the_seed_is_taken_loads_and_takes_it_at_the_first_step():
    """Before its first step a seed=None optimizer saves ``seed: None`` and no generator;
    loaded (also over a given seed), copied or pickled, it takes the seed at its own
    first step, as the original does."""
    params = _params((20, 20))
    original = StochGradAdam(params, sampling_rate=0.5)
    buffer = io.BytesIO()
    torch.save(original.state_dict(), buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    assert saved["seed"] is None and saved["generators"] == {}
    loaded_params = _params((20, 20))
    loaded = StochGradAdam(loaded_params, sampling_rate=0.5, seed=3)
    loaded.load_state_dict(saved)
    assert loaded.seed is None
    twins = [copy.deepcopy((params, original)), pickle.loads(pickle.dumps((params, original)))]
    expected = _unresolved_run(original, params, 5)
    for twin_params, twin in [(loaded_params, loaded), *twins]:
        seed, stepped = _unresolved_run(twin, twin_params, 5)
        assert seed == expected[0] and torch.equal(stepped, expected[1])


def test_generators_are_keyed_by_device_type_and_old_cuda_keys_map_to_cuda():
    """A state saved as "cuda:1" (before generators were keyed by device type) loads as
    "cuda" and waits, reported by state_dict, until a CUDA parameter needs it; the CPU
    stream meanwhile resumes exactly."""
    straight, _ = _masked_run(seed=4, steps=6)
    midway, optimizer = _masked_run(seed=4, steps=3)
    saved = optimizer.state_dict()
    assert list(saved["generators"]) == ["cpu"]
    cuda_state = torch.arange(16, dtype=torch.uint8)  # a CUDA generator's (seed, offset)
    saved["generators"] = {**saved["generators"], "cuda:1": cuda_state}
    params = _params((20, 20))
    resumed = StochGradAdam(params, sampling_rate=0.5, seed=0)
    resumed.load_state_dict(saved)
    params[0].data.copy_(midway)
    assert sorted(resumed.state_dict()["generators"]) == ["cpu", "cuda"]
    for _ in range(3):
        params[0].grad = torch.ones_like(params[0])
        resumed.step()
    assert torch.equal(params[0].detach(), straight)
    generators = resumed.state_dict()["generators"]
    assert sorted(generators) == ["cpu", "cuda"] and torch.equal(generators["cuda"], cuda_state)


@pytest.mark.gpu
def test_a_checkpoint_loaded_onto_the_gpu_resumes_exactly():
    """``torch.load(map_location="cuda")`` hands back CUDA byte tensors; they are moved
    to the CPU for ``set_state``, an old "cuda:N" key maps to "cuda", and the GPU
    stream of the unfused path resumes exactly (the fused CUDA step draws its keys
    from the CPU generator; test_fused_triton.py resumes it)."""

    def run(steps, params=None, saved=None):
        torch.manual_seed(0)
        fresh = [torch.nn.Parameter(torch.randn(64, 32, device="cuda"))]
        if params is not None:
            fresh[0].data.copy_(params[0])
        optimizer = StochGradAdam(fresh, sampling_rate=0.5, seed=2, fused=False)
        if saved is not None:
            optimizer.load_state_dict(saved)
        for _ in range(steps):
            fresh[0].grad = torch.ones_like(fresh[0])
            optimizer.step()
        return fresh, optimizer

    straight, _ = run(6)
    midway, optimizer = run(3)
    buffer = io.BytesIO()
    torch.save(optimizer.state_dict(), buffer)
    for key in ("cuda", "cuda:1"):
        buffer.seek(0)
        saved = torch.load(buffer, map_location="cuda", weights_only=True)
        assert list(saved["generators"]) == ["cuda"] and saved["generators"]["cuda"].is_cuda
        saved["generators"] = {key: saved["generators"]["cuda"]}
        resumed, _ = run(3, midway, saved)
        assert torch.equal(resumed[0], straight[0]), key
