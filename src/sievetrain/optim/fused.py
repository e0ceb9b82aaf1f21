"""StochGradAdam's fused CPU step: one pass per tensor that draws each entry's mask
from a counter-based stream and updates moments and parameter, with no
parameter-sized temporaries.

The kernel is ``fused.cpp``, compiled on first use with the system's C++ compiler
(``$CXX``, else ``c++``) into ``kernels/`` of sievetrain's cache folder
(:func:`sievetrain.files.cache_dir`), keyed by a hash of its source, flags, compiler
and CPU, and loaded with ctypes. It needs no torch headers, so a build takes about
a second, and its OpenMP threads are torch's own (the process's one libgomp). Where
it cannot be built, :func:`kernel` warns once and returns None, and StochGradAdam
takes its unfused path.

The fused stream is not the unfused path's: a step draws one 64-bit key from the
optimizer's generator, and each entry's 16 bits are a hash of (key, tensor, entry)
(``fused.cpp`` says which; :mod:`sievetrain.optim.stream` computes the same flags
in numpy and in torch; its names are also this module's, as before). The entry is
its index in the whole tensor: a shard (a DTensor's local tensor, FSDP2) passes the
offset of its first entry and draws the whole tensor's masks there.
"""

from __future__ import annotations

import array
import ctypes
import functools
import hashlib
import itertools
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor

from sievetrain.files import cache_dir
from sievetrain.optim.shards import PLAIN, is_plain, local
from sievetrain.optim.stream import (  # the stream's definition, named here as before
    MASK_BITS,
    keep_flags,
    masks,
    step_keys,
    tensor_kept,
    tensor_key,
)

__all__ = [
    "DTYPES",
    "build",
    "keep_flags",
    "kernel",
    "masks",
    "step_keys",
    "stochgradadam_fused",
    "step_for",
    "supports",
    "tensor_key",
    "tensor_kept",
]

SOURCE = Path(__file__).with_name("fused.cpp")
DTYPES = {torch.float32: 0, torch.float64: 1}  # the kernel's dtype codes
# Compiler flags to try in turn: native vector units and OpenMP threads, then less.
# No errno from sqrt and no trapping FP: what lets the update loop vectorise.
_OPT = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
_FLAGS = ([*_OPT, "-march=native", "-fopenmp"], [*_OPT, "-fopenmp"], _OPT)


# What each device's fused step takes: the CPU kernel, and the Triton kernel on CUDA
# (which computes in float32, so float64 takes the unfused path there).
SUPPORTED = {
    "cpu": tuple(DTYPES),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}


def supports(params: list[Tensor]) -> bool:
    """Whether a fused step can take ``params`` (complex ones as their real views): CPU
    float32/float64 tensors dense in memory (contiguous, channels-last, ...: the CPU
    kernel walks each in memory order, which is therefore the order of its masks), or
    contiguous CUDA float32, float16 or bfloat16 tensors. A DTensor is taken where its
    local shard is a contiguous CPU one of these holding one run of its tensor's
    entries (FSDP2's ``Shard(0)``); any other tensor subclass never."""
    for p in params:
        p, piece = local(p)
        if p.is_complex():
            p, piece = torch.view_as_real(p), piece and piece.as_real()
        if not is_plain(p) or p.dtype not in SUPPORTED.get(p.device.type, ()):
            return False
        if piece is not None and (p.device.type != "cpu" or piece.start(p) is None):
            return False  # a shard's masks need its offset: the CPU kernel alone takes one
        if not (p.is_contiguous() if p.device.type == "cuda" else _dense(p)):
            return False
    return True


def step_for(device_type: str) -> Callable[..., bool] | None:
    """The fused step for tensors of ``device_type`` (with the arguments of
    :func:`stochgradadam_fused` but ``library``), or None: none for that device, or
    it cannot be built or imported (one warning per process, then None)."""
    if device_type == "cpu":
        library = kernel()
        return None if library is None else functools.partial(stochgradadam_fused, library=library)
    if device_type == "cuda":
        return _triton_step()
    return None


@functools.cache
def _triton_step() -> Callable[..., bool] | None:
    try:
        from sievetrain.optim.fused_triton import stochgradadam_triton
    except ImportError as error:
        warnings.warn(
            f"StochGradAdam's fused CUDA step needs Triton ({error}); using the unfused path",
            RuntimeWarning,
            stacklevel=3,
        )
        return None
    return stochgradadam_triton


def _dense(t: Tensor) -> bool:
    """Whether ``t``'s entries fill one block of memory, in any order of dimensions."""
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda x: x[1]):
        if size != 1 and stride != expected:
            return False
        expected *= size
    return True


def _flat(t: Tensor) -> Tensor:
    """A dense tensor's memory as a 1-D view, in memory order."""
    return t.as_strided((t.numel(),), (1,))


@functools.cache
def kernel() -> ctypes.CDLL | None:
    """The compiled kernel, built on first use; None, after one warning, where it
    cannot be built (no compiler, or the build fails)."""
    compiler = os.environ.get("CXX", "c++")
    try:
        return _load(build(compiler, cache_dir() / "kernels"))
    except (OSError, RuntimeError) as error:
        warnings.warn(
            f"StochGradAdam's fused step is unavailable ({error}); using the unfused path",
            RuntimeWarning,
            stacklevel=2,
        )
        return None


def build(compiler: str, directory: Path) -> Path:
    """The shared library compiled from ``fused.cpp`` by ``compiler``, from
    ``directory`` if built there before; a new build is written atomically.

    Raises:
        RuntimeError: no such compiler, or no flag set compiles the source.
    """
    path = shutil.which(compiler)
    if path is None:
        raise RuntimeError(f"no C++ compiler {compiler!r} found (set $CXX)")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    errors = []
    for flags in _FLAGS:
        key = hashlib.sha256(
            "\0".join([SOURCE.read_text(), path, version, *flags, _cpu()]).encode()
        ).hexdigest()[:16]
        target = directory / f"stochgradadam-{key}.so"
        if target.exists():
            return target
        with tempfile.TemporaryDirectory(dir=directory) as scratch:
            built = Path(scratch) / target.name
            command = [path, *flags, "-shared", "-fPIC", str(SOURCE), "-o", str(built)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode == 0:
                os.replace(built, target)  # atomic: a concurrent build writes the same file
                return target
            errors.append(result.stderr.strip().splitlines()[-1:] or ["failed"])
    raise RuntimeError(f"{compiler} could not build {SOURCE.name}: {errors[-1][0]}")


def _cpu() -> str:
    """What -march=native compiles for: the CPU's model and flags, where Linux says."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    lines = [line for line in text.splitlines() if line.startswith(("model name", "flags"))]
    return "\n".join(lines[:2])


def _load(path: Path) -> ctypes.CDLL:
    library = ctypes.CDLL(str(path))
    function = library.sievetrain_stochgradadam
    function.restype = None
    function.argtypes = [
        ctypes.c_int64, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint32,
        *[ctypes.c_double] * 6, ctypes.c_int, ctypes.c_int,
    ]  # fmt: skip
    return library


def stochgradadam_fused(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor] | None,
    state_steps: list[Tensor],
    *,
    library: ctypes.CDLL,
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
    """One StochGradAdam step of ``params``, in place, its masks drawn from the stream
    keyed by ``key``: the update of :func:`sievetrain.optim.functional.stochgradadam`,
    computed in the parameters' precision. ``max_exp_avg_sqs``: AMSGrad's running
    maxima, or None; ``state_steps``: float32 CPU counts, incremented by the kernel;
    ``offsets``: where a shard's entries start in its whole tensor (0 for a whole one),
    its masks being the whole tensor's there.

    Returns:
        False, having changed nothing, where a tensor is not one the kernel takes
        (see :func:`supports`; a step count must be a float32 CPU tensor; a tensor
        subclass such as a DTensor never: pass its local shard).
    """
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs or (), state_steps)
    if not PLAIN.issuperset(map(type, itertools.chain(*lists))):
        return False  # a subclass's (DTensor's) data_ptr() is not its entries' memory
    threshold = round(sampling_rate * 2**MASK_BITS)
    rows, copies = array.array("q"), []  # one row of int64 per tensor, as fused.cpp reads
    for j, p in enumerate(params):
        code, stride, step = DTYPES.get(p.dtype), p.stride(), state_steps[j]
        m, v, g = exp_avgs[j], exp_avg_sqs[j], grads[j]
        vmax = max_exp_avg_sqs[j] if max_exp_avg_sqs is not None else m  # m: a stand-in
        if code is None or p.device.type != "cpu" or not (p.is_contiguous() or _dense(p)):
            return False
        if not m.stride() == v.stride() == vmax.stride() == stride:
            return False
        if step.dtype != torch.float32 or step.device.type != "cpu":
            return False
        if g.stride() != stride or g.dtype != p.dtype:
            g = torch.empty_like(p).copy_(g)  # in p's layout, as the kernel reads it
            copies.append(g)  # alive until the kernel has run
        if mask == "tensor":
            mode = 1 if tensor_kept(key, j, threshold) else 2
        else:
            mode = 0 if threshold < 2**MASK_BITS else 1
        maxima = vmax.data_ptr() if max_exp_avg_sqs is not None else 0
        pointers = (p.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), maxima)
        offset = 0 if offsets is None else offsets[j]
        rows.extend((*pointers, step.data_ptr(), p.numel(), mode, code, offset))
    flags = maximize | (masked_state == "freeze") << 1 | (max_exp_avg_sqs is not None) << 2
    library.sievetrain_stochgradadam(
        len(params), rows.buffer_info()[0], key, threshold, lr, beta1, beta2, eps, weight_decay,
        scale, flags, torch.get_num_threads(),
    )  # fmt: skip
    return True
