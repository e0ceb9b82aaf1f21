"""The Triton fused step (CUDA): it keeps the entries of the CPU kernel's stream, its
update is the functional one given those masks (to float32 round-off), and the
optimizer takes it on CUDA and resumes bitwise. Marked gpu; the kernel tests also
run on the CPU under Triton's interpreter (``TRITON_INTERPRET=1 pytest -m gpu``)."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import torch

from sievetrain.optim import StochGradAdam, fused, stochgradadam

pytestmark = pytest.mark.gpu
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"  # cpu: Triton's interpreter


@pytest.fixture
def triton_step():
    if DEVICE == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs a CUDA device or TRITON_INTERPRET=1")
    return pytest.importorskip("sievetrain.optim.fused_triton").stochgradadam_triton


HYPERPARAMETERS = dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)


def test_the_triton_kernel_keeps_the_entries_of_the_cpu_stream(triton_step):
    params = [torch.randn(5000, device=DEVICE), torch.randn(33, 3, device=DEVICE)]
    grads = [torch.rand_like(p) + 0.5 for p in params]
    exp_avgs = [torch.zeros_like(p) for p in params]
    exp_avg_sqs = [torch.zeros_like(p) for p in params]
    steps = [torch.tensor(0.0) for _ in params]
    key = 0xDEADBEEF12345678
    assert triton_step(
        params, grads, exp_avgs, exp_avg_sqs, None, steps, key=key, sampling_rate=0.3,
        mask="element", masked_state="decay", scale=1.0, maximize=False, **HYPERPARAMETERS,
    )  # fmt: skip
    for j, m in enumerate(exp_avgs):
        kept = m.flatten().cpu().numpy() != 0
        assert np.array_equal(kept, fused.keep_flags(key, j, m.numel(), 0.3))


@pytest.mark.parametrize(
    "options",
    [{}, {"masked_state": "freeze"}, {"mask": "tensor"}, {"amsgrad": True, "maximize": True}],
    ids=lambda o: ",".join(o) or "defaults",
)
def test_the_triton_update_is_the_functional_update_given_its_masks(triton_step, options):
    torch.manual_seed(0)
    params = [torch.randn(s, device=DEVICE) for s in [(300, 7), (65,), (4000,)]]
    reference = [p.clone() for p in params]
    states = [[torch.zeros_like(p) for p in params] for _ in range(6)]
    (m, v, vmax), (m_ref, v_ref, vmax_ref) = states[:3], states[3:]
    steps, steps_ref = [torch.tensor(0.0) for _ in params], [torch.tensor(0.0) for _ in params]
    mask, freeze = options.get("mask", "element"), options.get("masked_state", "decay")
    amsgrad, maximize = options.get("amsgrad", False), options.get("maximize", False)
    for key in fused.step_keys(torch.Generator().manual_seed(3), 4):
        grads = [torch.randn_like(p) for p in params]
        triton_step(
            params, grads, m, v, vmax if amsgrad else None, steps, key=key, sampling_rate=0.6,
            mask=mask, masked_state=freeze, scale=1.0, maximize=maximize, **HYPERPARAMETERS,
        )  # fmt: skip
        masks = fused.masks(reference, key, 0.6, mask)
        stochgradadam(
            reference, grads, m_ref, v_ref, vmax_ref if amsgrad else None, steps_ref, masks,
            foreach=False, masked_state=freeze, scale=1.0, maximize=maximize, **HYPERPARAMETERS,
        )  # fmt: skip
    for got, expected in zip(params + m + v, reference + m_ref + v_ref, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def _on_cuda(saved=None):
    """A CUDA parameter and its StochGradAdam (default switches), from ``saved``."""
    start = torch.randn(64, 32, generator=torch.Generator().manual_seed(0))
    params = [torch.nn.Parameter(start.to("cuda"))]
    optimizer = StochGradAdam(params, sampling_rate=0.5, seed=2)
    if saved is not None:
        params[0].data.copy_(saved["param"])
        optimizer.load_state_dict(saved["optimizer"])
    return params, optimizer


def _train(params, optimizer, steps, seed):
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        params[0].grad = torch.randn(64, 32, generator=generator).to("cuda")
        optimizer.step()
    return params[0].detach()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the optimizer's CUDA dispatch")
def test_the_optimizer_takes_the_triton_step_on_cuda_with_the_cpu_streams_masks():
    fresh = StochGradAdam([torch.nn.Parameter(torch.zeros(1))], sampling_rate=0.5, seed=2)
    replay = torch.Generator().set_state(fresh._generator(torch.device("cpu")).get_state())
    (key,) = fused.step_keys(replay)
    params, optimizer = _on_cuda()
    _train(params, optimizer, 1, seed=1)
    kept = optimizer.state[params[0]]["exp_avg"].flatten().cpu().numpy() != 0
    assert np.array_equal(kept, fused.keep_flags(key, 0, 64 * 32, 0.5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the optimizer's CUDA dispatch")
def test_a_resumed_triton_run_is_bitwise_the_uninterrupted_one():
    params, optimizer = _on_cuda()
    _train(params, optimizer, 3, seed=1)
    buffer = io.BytesIO()
    torch.save({"param": params[0].detach(), "optimizer": optimizer.state_dict()}, buffer)
    straight = _train(params, optimizer, 3, seed=2).clone()
    buffer.seek(0)
    resumed_params, resumed = _on_cuda(torch.load(buffer, weights_only=True))
    assert torch.equal(_train(resumed_params, resumed, 3, seed=2), straight)
