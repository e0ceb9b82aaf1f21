"""StochGradAdam's fused step on CUDA: a Triton kernel that draws each entry's mask
from the CPU kernel's counter-based stream (``fused.cpp``) inside the update pass.

One launch per tensor; each program handles a block of entries, hashes their
counters and updates moments and parameter in registers, so no parameter-sized
temporary is written. It computes in float32, as torch's fused Adam does on CUDA:
float16 and bfloat16 tensors are stored back in their dtype; float64 ones take the
unfused path. The masks are the ones
:func:`sievetrain.optim.fused.keep_flags` gives for the same key, so a run draws the
same masks on CPU and GPU, and every rank draws the same.

Only importable where Triton is installed (it comes with torch's CUDA builds).
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from sievetrain.optim.fused import MASK_BITS, SUPPORTED, tensor_kept, tensor_key
from sievetrain.optim.shards import is_plain

__all__ = ["stochgradadam_triton"]

BLOCK = 1024  # entries per program


@triton.jit
def _mix32(x):
    # fused.cpp's mix32, on uint32 (wrapping multiplication, logical shifts)
    x ^= x >> 16
    x *= 0x7FEB352D
    x ^= x >> 15
    x *= 0x846CA68B
    return x ^ (x >> 16)


@triton.jit
def _update(
    p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, n, klo, khi, threshold,
    step_size, bc2_inv, beta1, beta2, eps, weight_decay, scale, sign,
    MODE: tl.constexpr, FREEZE: tl.constexpr, AMSGRAD: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = i < n
    if MODE == 0:  # entry i: lane (i / 8) % 2 of word 8 * (i / 16) + i % 8
        word = (8 * (i // 16) + i % 8).to(tl.uint32)
        bits = _mix32(_mix32(word + klo.to(tl.uint32)) ^ khi.to(tl.uint32))
        lane = (bits >> (16 * ((i // 8) % 2)).to(tl.uint32)) & 0xFFFF
        kept = (lane < threshold.to(tl.uint32)).to(tl.float32)
    else:
        kept = tl.full((BLOCK,), 1 if MODE == 1 else 0, tl.float32)
    p = tl.load(p_ptr + i, mask=inside).to(tl.float32)
    grad = (sign * tl.load(g_ptr + i, mask=inside).to(tl.float32) + weight_decay * p) * scale
    m = tl.load(m_ptr + i, mask=inside).to(tl.float32)
    v = tl.load(v_ptr + i, mask=inside).to(tl.float32)
    if FREEZE:  # masked: moments and parameter unchanged
        m = m + (1 - beta1) * ((grad - m) * kept)
        v = v + (1 - beta2) * ((grad * grad - v) * kept)
    else:  # masked: a zero gradient
        masked = grad * kept
        m = m + (1 - beta1) * (masked - m)
        v = beta2 * v + (1 - beta2) * masked * masked
    second = v
    if AMSGRAD:
        second = tl.maximum(tl.load(vmax_ptr + i, mask=inside).to(tl.float32), v)
        tl.store(vmax_ptr + i, second, mask=inside)
    direction = m * kept if FREEZE else m
    p = p - step_size * direction / (tl.sqrt(second) * bc2_inv + eps)
    tl.store(m_ptr + i, m, mask=inside)
    tl.store(v_ptr + i, v, mask=inside)
    tl.store(p_ptr + i, p, mask=inside)


def stochgradadam_triton(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    state_steps: list[Tensor],
    *,
    key: int,
    sampling_rate: float,
    mask: str,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    masked_state: str,
    scale: float,
    maximize: bool,
    offsets: list[int] | None = None,
) -> bool:
    """The fused step of :func:`sievetrain.optim.fused.stochgradadam_fused`, on CUDA
    tensors (and on CPU ones under ``TRITON_INTERPRET=1``), computed in float32;
    returns False, having changed nothing, where a tensor is not a plain contiguous
    float32, float16 or bfloat16 one with contiguous state (float64 goes unfused:
    Triton passes the step's scalars in float32), or for shards (``offsets`` given:
    their masks are computed apart, :mod:`sievetrain.optim.stream`)."""
    tensors = [params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs or []]
    if offsets is not None or not all(is_plain(t) for group in tensors for t in group):
        return False
    if any(p.dtype not in SUPPORTED["cuda"] for p in params):
        return False
    if not all(t.is_contiguous() for group in tensors for t in group):
        return False
    threshold = round(sampling_rate * 2**MASK_BITS)
    for j, p in enumerate(params):
        state_steps[j] += 1
        step = state_steps[j].item()
        k = tensor_key(key, j)
        if mask == "tensor":
            mode = 1 if tensor_kept(key, j, threshold) else 2
        else:
            mode = 0 if threshold < 2**MASK_BITS else 1
        vmax = max_exp_avg_sqs[j] if max_exp_avg_sqs is not None else exp_avgs[j]
        _update[(triton.cdiv(p.numel(), BLOCK),)](
            p, grads[j], exp_avgs[j], exp_avg_sqs[j], vmax, p.numel(),
            k & 0xFFFFFFFF, k >> 32, threshold,
            lr / (1 - beta1**step), 1 / (1 - beta2**step) ** 0.5, beta1, beta2, eps,
            weight_decay, scale, -1.0 if maximize else 1.0,
            MODE=mode, FREEZE=masked_state == "freeze",
            AMSGRAD=max_exp_avg_sqs is not None, BLOCK=BLOCK,
        )  # fmt: skip
    return True
