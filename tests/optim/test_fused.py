"""The fused StochGradAdam step: the kernel keeps the entries of its documented
stream (mirrored in numpy), both mask streams are statistically sound, the fused
update is the functional one given the same masks, threads do not change a bit, the
build is cached, and without a compiler the optimizer warns once and steps unfused."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from sievetrain.optim import StochGradAdam, draw_masks, fused, stochgradadam, stream


@pytest.fixture(scope="module")
def kernel():
    library = fused.kernel()
    assert library is not None, "the fused kernel did not build (is a C++ compiler installed?)"
    return library


def _bound(p: float, n: int) -> float:
    return 5 * math.sqrt(p * (1 - p) / n)  # five binomial standard deviations


HYPERPARAMETERS = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernel_keeps_the_entries_of_the_documented_stream(kernel, dtype):
    # One tensor spans three parallel work items (32768 entries each); odd sizes.
    params = [torch.randn(70001, dtype=dtype), torch.randn(33, 3, dtype=dtype)]
    params.append(torch.ones(1, dtype=dtype))
    grads = [torch.rand_like(p) + 0.5 for p in params]  # nonzero everywhere
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    key = 0xDEADBEEF12345678
    fused.stochgradadam_fused(
        params, grads, exp_avgs, exp_avg_sqs, None, steps, library=kernel, key=key,
        sampling_rate=0.3, mask="element", masked_state="decay", scale=1.0, maximize=False,
        **HYPERPARAMETERS,
    )  # fmt: skip
    for j, m in enumerate(exp_avgs):  # from zero moments, m != 0 exactly where kept
        assert np.array_equal(m.flatten().numpy() != 0, fused.keep_flags(key, j, m.numel(), 0.3))
    assert [s.item() for s in steps] == [1.0, 1.0, 1.0]


@pytest.mark.parametrize("offset", [0, 5, 16, 70_013])
def test_a_shard_at_an_offset_keeps_its_tensors_entries_there(kernel, offset):
    """A shard holding entries [offset, offset + n) of its tensor (FSDP2) draws the whole
    tensor's flags there, at any offset (the stream's layout repeats every 16 entries),
    in the kernel, in numpy and in torch (sievetrain.optim.stream, for other paths)."""
    n, key = 40_000, 0xDEADBEEF12345678
    whole = fused.keep_flags(key, 1, offset + n, 0.3)
    assert np.array_equal(fused.keep_flags(key, 1, n, 0.3, offset), whole[offset:])
    index = torch.arange(offset, offset + n)
    assert np.array_equal(
        stream.keep_flags_at(key, 1, index, round(0.3 * 2**16)).numpy(), whole[offset:]
    )
    params = [torch.ones(1), torch.randn(n)]  # the shard is tensor 1 of its group
    grads = [torch.rand_like(p) + 0.5 for p in params]  # nonzero everywhere
    exp_avgs = [torch.zeros_like(p) for p in params]
    fused.stochgradadam_fused(
        params, grads, exp_avgs, [torch.zeros_like(p) for p in params], None,
        [torch.tensor(0.0) for _ in params], library=kernel, key=key, sampling_rate=0.3,
        mask="element", masked_state="decay", scale=1.0, maximize=False, offsets=[0, offset],
        **HYPERPARAMETERS,
    )  # fmt: skip
    assert np.array_equal(exp_avgs[1].numpy() != 0, whole[offset:])


def test_the_torch_stream_is_the_kernels_at_any_index():
    """Indices past 2**32 too, where the stream's 32-bit word counter wraps."""
    key, rate = 0x0123456789ABCDEF, 0.7
    for start in (0, 2**33 - 40):
        index = torch.arange(start, start + 1000)
        expected = fused.keep_flags(key, 3, 1000, rate, start)
        got = stream.keep_flags_at(key, 3, index, round(rate * 2**16)).numpy()
        assert np.array_equal(got, expected), start


def _fused_stream(rate: float, n: int, step: int, tensor: int) -> np.ndarray:
    keys = fused.step_keys(torch.Generator().manual_seed(0), 2)
    return fused.keep_flags(keys[step], tensor, n, rate)


def _unfused_stream(rate: float, n: int, step: int, tensor: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    params = [torch.empty(n), torch.empty(n)]
    for _ in range(step + 1):
        masks = draw_masks(params, rate, mask="element", generator_for=lambda device: generator)
    return masks[tensor].numpy() == 1


@pytest.mark.parametrize("stream", [_fused_stream, _unfused_stream], ids=["fused", "unfused"])
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_masks_are_bernoulli_and_independent_across_entries_steps_and_tensors(stream, rate):
    n = 100_000
    a = stream(rate, n, step=0, tensor=0)
    realised = round(rate * 2**16) / 2**16
    assert abs(a.mean() - realised) < _bound(realised, n)
    # Neighbouring entries, within and across the fused stream's 8- and 16-entry layout.
    for lag in (1, 2, 4, 7, 8, 9, 15, 16, 17):
        both = (a[:-lag] & a[lag:]).mean()
        assert abs(both - realised**2) < _bound(realised**2, n - lag), lag
    # The same entries at the next step, and the same positions of the next tensor.
    for other in (stream(rate, n, step=1, tensor=0), stream(rate, n, step=0, tensor=1)):
        assert abs(other.mean() - realised) < _bound(realised, n)
        assert abs((a & other).mean() - realised**2) < _bound(realised**2, n)


def test_tensor_masks_of_the_fused_stream_keep_whole_tensors_at_the_rate():
    params = [torch.empty(3, 4) for _ in range(50)]
    keys = fused.step_keys(torch.Generator().manual_seed(1), 40)
    kept = []
    for key in keys:
        masks = fused.masks(params, key, 0.3, "tensor")
        assert all(torch.all(m == m.flatten()[0]) for m in masks), "a tensor is partly masked"
        kept += [bool(m.flatten()[0]) for m in masks]
    assert abs(np.mean(kept) - 0.3) < _bound(0.3, len(kept))
    threshold = round(0.3 * 2**16)
    assert all(fused.tensor_kept(k, j, threshold) == fused.keep_flags(k, j, 1, 0.3)[0]
               for k in keys[:5] for j in range(50))  # fmt: skip


CASES = [
    {},
    {"masked_state": "freeze"},
    {"mask": "tensor"},
    {"rescale": True, "weight_decay": 0.1},
    {"amsgrad": True, "maximize": True},
    {"mask": "tensor", "masked_state": "freeze", "amsgrad": True},
]


FLOAT64 = (torch.float64,) * 3
MIXED = (torch.float64, torch.float32, torch.float64)  # one group, two dtypes


@pytest.mark.parametrize("dtypes", [FLOAT64, MIXED], ids=["float64", "float32+float64"])
@pytest.mark.parametrize("options", CASES, ids=lambda o: ",".join(o) or "defaults")
def test_the_fused_update_is_the_functional_update_given_its_masks(kernel, options, dtypes):
    """Five steps of the optimizer's fused path against the readable per-tensor function
    fed the masks replayed from the fused stream: equal to round-off, float32 tensors
    beside float64 ones too."""
    torch.manual_seed(0)
    shapes = [(300, 7), (65,), (40000,)]
    params = [
        torch.nn.Parameter(torch.randn(s, dtype=d)) for s, d in zip(shapes, dtypes, strict=True)
    ]
    optimizer = StochGradAdam(params, sampling_rate=0.6, seed=5, fused=True, lr=1e-2, **options)
    group = optimizer.param_groups[0]
    reference = [p.detach().clone() for p in params]
    m, v, vmax = ([torch.zeros_like(p) for p in reference] for _ in range(3))
    steps = [torch.tensor(0.0) for _ in reference]
    for _ in range(5):
        grads = [torch.randn_like(p) for p in params]
        for p, g in zip(params, grads, strict=True):
            p.grad = g
        replay = torch.Generator().set_state(optimizer._generator(torch.device("cpu")).get_state())
        masks = fused.masks(reference, fused.step_keys(replay)[0], 0.6, group["mask"])
        optimizer.step()
        stochgradadam(
            reference, grads, m, v, vmax if group["amsgrad"] else None, steps, masks,
            foreach=False, lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8,
            weight_decay=group["weight_decay"], masked_state=group["masked_state"],
            scale=1 / 0.6 if group["rescale"] else 1.0, maximize=group["maximize"],
        )  # fmt: skip
    for i, p in enumerate(params):
        state = optimizer.state[p]
        pairs = [(p.detach(), reference[i]), (state["exp_avg"], m[i]), (state["exp_avg_sq"], v[i])]
        if group["amsgrad"]:
            pairs.append((state["max_exp_avg_sq"], vmax[i]))
        exact = p.dtype == torch.float64
        for got, expected in pairs:
            torch.testing.assert_close(
                got, expected, rtol=1e-12 if exact else 1e-5, atol=1e-15 if exact else 1e-6
            )
    assert not torch.equal(params[2].detach(), torch.zeros(1))  # it moved


def test_one_and_two_threads_give_the_same_bits(kernel):
    def run(threads: int) -> list[torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            torch.manual_seed(0)
            params = [torch.nn.Parameter(torch.randn(100_000)) for _ in range(3)]
            optimizer = StochGradAdam(params, sampling_rate=0.5, seed=1, fused=True)
            for _ in range(3):
                for p in params:
                    p.grad = torch.randn_like(p)
                optimizer.step()
            return [p.detach() for p in params]
        finally:
            torch.set_num_threads(before)

    for one, two in zip(run(1), run(2), strict=True):
        assert torch.equal(one, two)


def test_a_build_is_cached_and_a_failed_one_names_the_compiler(tmp_path):
    first = fused.build("c++", tmp_path)
    stamp = first.stat().st_mtime_ns
    assert fused.build("c++", tmp_path) == first and first.stat().st_mtime_ns == stamp
    assert [path.name for path in tmp_path.iterdir()] == [first.name]  # no scratch left
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler 'no-such-c\\+\\+'"):
        fused.build("no-such-c++", tmp_path)


def test_without_a_compiler_it_warns_once_and_steps_unfused(monkeypatch):
    def run(**switches):
        torch.manual_seed(0)
        params = [torch.nn.Parameter(torch.randn(30, 20))]
        optimizer = StochGradAdam(params, sampling_rate=0.5, seed=2, **switches)
        for _ in range(3):
            params[0].grad = torch.ones_like(params[0])
            optimizer.step()
        return params[0].detach()

    monkeypatch.setenv("CXX", "no-such-c++")
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", "/nonexistent/empty-cache")
    fused.kernel.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fallen_back = [run(), run(fused=True)]
        messages = [str(w.message) for w in caught if w.category is RuntimeWarning]
        assert len(messages) == 1 and "no C++ compiler 'no-such-c++'" in messages[0]
        assert "using the unfused path" in messages[0]
    finally:
        fused.kernel.cache_clear()  # the next caller builds with the real compiler
    unfused = run(fused=False)
    assert all(torch.equal(x, unfused) for x in fallen_back)
