"""StochGradAdam: Adam that uses a random subset of the gradient's entries each step.

The update rule lives in the pure function
:func:`sievetrain.optim.functional.stochgradadam` (and the fused kernel of
:mod:`sievetrain.optim.fused`); the :class:`StochGradAdam` optimizer validates
arguments, holds state and its mask stream (:mod:`sievetrain.optim.mask_stream`),
chooses the path of each group's step and (de)serialises. The unfused paths draw
their masks before choosing between per-tensor and foreach, so both see the same
random numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from sievetrain.optim import fused, stream
from sievetrain.optim.baselines import AdamOptions
from sievetrain.optim.checks import (
    IMPLEMENTATION,
    STREAM,
    check_saved_state,
    check_switches,
    plain,
    saved_stream,
    stream_entry,
    tensors_kept,
)
from sievetrain.optim.functional import MASK_BITS, draw_masks, stochgradadam
from sievetrain.optim.groups import Gathered, adam_step, gather, numbers
from sievetrain.optim.mask_stream import MaskStream
from sievetrain.options import option

__all__ = ["StochGradAdam", "StochGradAdamOptions"]


@dataclass(frozen=True)
class StochGradAdamOptions(AdamOptions):
    """StochGradAdam's options: Adam's, and the gradient sampling's (the keywords of
    :class:`StochGradAdam`, the options of the ``stochgradadam`` method)."""

    sampling_rate: float = option(0.8, "s: probability that a gradient entry is used, in (0, 1]")
    mask: Literal["element", "tensor"] = option(
        "element", "one draw per gradient entry (paper), or per parameter tensor"
    )
    masked_state: Literal["decay", "freeze"] = option(
        "decay", "a masked entry is a zero gradient (paper), or skipped: moments untouched"
    )
    rescale: bool = option(False, "divide kept entries by s, an unbiased estimate (not in paper)")

    def __post_init__(self) -> None:
        super().__post_init__()
        s = self.sampling_rate
        if not 0 < s <= 1:
            raise ValueError(f"invalid sampling_rate={s!r}: must be in (0, 1]")
        if round(s * 2**MASK_BITS) == 0:
            raise ValueError(f"invalid sampling_rate={s!r}: below the mask resolution 2**-16")


class StochGradAdam(Optimizer):
    r"""Adam on a random subset of gradient entries, fresh every step.

    At step :math:`t`, with sampling rate :math:`s`:

    .. math::
        g &\leftarrow \nabla f(\theta) + \lambda\theta
            \quad\text{(coupled L2, as torch.optim.Adam)} \\
        \omega &\sim \mathrm{Bernoulli}(s) \text{ per entry, fresh each step};
            \quad \hat g \leftarrow \omega \odot g \\
        m &\leftarrow \beta_1 m + (1-\beta_1)\hat g, \qquad
        v \leftarrow \beta_2 v + (1-\beta_2)\hat g^2 \\
        \theta &\leftarrow \theta - \mathrm{lr}\,
            \frac{m / (1-\beta_1^t)}{\sqrt{v / (1-\beta_2^t)} + \epsilon}

    With a realised rate of 1 every entry is used and the step is
    ``torch.optim.Adam``'s own (its functional ``adam`` with the same switches), so
    bitwise equal to Adam's. The mask is applied after a full backward pass, so it
    saves no backward computation: the method changes what the optimizer does with
    the gradient, not what the gradient costs.

    The paper's rule is the one above, the defaults. The options below are ours,
    offered because which one the paper used could not be confirmed:

    Args:
        params: parameters, ``named_parameters()`` (the names kept as each group's
            ``param_names``, as Adam keeps them) or parameter groups; a group may
            override any hyperparameter. Complex parameters are stepped as real views,
            as Adam does: real and imaginary parts are masked apart. DTensors (FSDP2's
            ``fully_shard``, tensor parallelism) are stepped as each rank's shard,
            their moments DTensors placed alike, as Adam keeps them.
        **hyperparameters: the fields of :class:`StochGradAdamOptions`, which are
            lr: learning rate (per step); a one-element tensor stays a tensor, as in
                Adam, whose step at rate 1 computes with it; masked steps read its value.
            betas: :math:`(\beta_1, \beta_2)`, decay rates of the moment estimates;
                tensors as ``lr``, also beside a number (Adam refuses that mix at
                construction, but steps with it where a scheduler writes one).
            eps: :math:`\epsilon`, added to the denominator.
            weight_decay: :math:`\lambda`, coupled L2 added to the gradient before masking.
            amsgrad: use the running maximum of :math:`v` in its place (AMSGrad).
            maximize: ascend the objective (the gradient's sign flipped first).
            sampling_rate: :math:`s`, the probability that an entry (or a tensor) is
                used at a step, in (0, 1]. Each entry's draw uses 16 random bits, so
                the realised rate is ``round(s * 65536) / 65536`` (within 7.7e-6 of s).
            mask: ``"element"`` (paper): one draw per gradient entry; ``"tensor"``: one
                draw per parameter tensor, which then is used or skipped whole.
            masked_state: ``"decay"`` (paper): a masked entry counts as a zero
                gradient, so its moments decay and its parameter still moves by the
                decayed momentum; ``"freeze"``: a masked entry is skipped this step,
                moments and parameter untouched (lazy, as ``torch.optim.SparseAdam``).
            rescale: divide the kept entries by :math:`s` so that :math:`\hat g` is an
                unbiased estimate of :math:`g` (ours; the paper does not rescale).
        seed: seeds the mask stream. None shares one seed over a data-parallel job:
            rank 0's, derived from ``torch.initial_seed()`` (so ``torch.manual_seed``
            makes a run reproducible) and broadcast, taken at the first ``step()``
            with gradients, where every rank steps together, not at construction: the
            optimizer may be built before the process group exists (before
            ``init_process_group``, or a Hugging Face ``TrainingArguments``). Until
            then ``seed`` (and ``state_dict()["seed"]``) is None. Two optimizers
            stepped in one process with None draw the same masks; give them
            distinct seeds if they must not. Each device type (``"cpu"``,
            ``"cuda"``) gets its own generator, seeded from (seed, device type) and
            created on the parameters' device when first needed: with one seed every
            rank draws the same masks, whichever GPU it holds.
        fused: the fused CPU step (:mod:`sievetrain.optim.fused`): one pass per
            tensor that draws the masks as it updates, no parameter-sized
            temporaries. None (default) takes it for dense float32/float64 CPU
            parameters unless ``foreach=True``; True requires such parameters; False
            never. Where the kernel cannot be built, one warning, then the unfused
            path. The fused and unfused paths draw different masks (each a Bernoulli
            stream of the same rate from the same generator), so a run keeps one path.
        foreach: the unfused path's ``torch._foreach_*`` kernels; None picks them.
        capturable, differentiable: accepted as False, as Adam's; True is refused.

    Shards draw the fused step's stream on every path, each entry keyed by its index
    in the whole tensor (:mod:`sievetrain.optim.stream`): two ranks' shards never
    draw alike (as entry i of each would, keyed by its index in the shard), and a
    sharded run draws the masks of the unsharded fused run (DDP's default on the
    CPU). The step's key is one draw from the CPU generator on every rank, so the
    generators stay equal over ranks. CPU shards holding one run of their tensor
    (FSDP2's ``Shard(0)``) take the fused kernel at their offset; others the unfused
    path (``fused=True`` refuses them). Strided and partial placements are refused.

    ``state_dict()`` saves the seed and the generators' states (keyed by device type)
    at its top level (byte tensors), and again under ``"mask_stream"`` in its first
    param group (bytes): ``torch.distributed.checkpoint``'s ``get_state_dict`` and
    ``set_state_dict`` keep only ``state`` and ``param_groups`` (moving a group's
    tensors to the parameters' device; flattened, keeping only the keys the live
    groups have, so the first group holds the key, None). ``load_state_dict`` reads
    the top level where present, else the group's: a resumed run draws the masks of
    an uninterrupted one, on any rank. A state saved before the seed was taken holds
    ``seed: None`` and no generator; its loader takes the seed at its first step. A
    loaded state waits until its device type's generator is created; old states
    keyed ``"cuda:N"`` load as ``"cuda"``. Copies (deepcopy, pickle) carry it all.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        seed: int | None = None,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
        **hyperparameters: Any,
    ) -> None:
        # Every argument is checked before ``params`` is read.
        defaults = StochGradAdamOptions(**plain(hyperparameters)).to_dict()
        defaults.update(tensors_kept(hyperparameters))  # a tensor lr stays one, as in Adam
        switches = dict(
            foreach=foreach, fused=fused, capturable=capturable, differentiable=differentiable
        )
        check_switches(switches)
        # None: rank 0's seed, taken at the first step (a collective), not here, where
        # the process group may not exist yet.
        self._stream = MaskStream(seed)
        super().__init__(params, {**defaults, **switches})
        # The key of the first group's saved copy of the mask stream, which state_dict()
        # fills: torch.distributed.checkpoint's flattened state dicts keep the keys that
        # the live groups have.
        self.param_groups[0][STREAM] = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, its options checked first (ValueError naming a
        bad one; nothing is added then)."""
        group = dict(param_group)
        if isinstance(group.get("params"), Tensor):
            group["params"] = [group["params"]]
        elif not isinstance(group.get("params"), set):  # torch refuses a set itself
            group["params"] = list(group.get("params", []))
        options = {name: group[name] for name in StochGradAdamOptions.names() if name in group}
        group.update(tensors_kept(options))
        # named_parameters(): (name, tensor) pairs, whose names torch keeps as param_names
        tensors = [p[1] if isinstance(p, tuple) else p for p in group["params"]]
        self._check_group({**self.defaults, **group}, tensors)
        super().add_param_group(group)

    @staticmethod
    def _check_group(group: dict[str, Any], params: list[Tensor] | None = None) -> None:
        """ValueError naming a bad option or switch of ``group`` (missing ones take
        their defaults), or ``params`` the fused step cannot take with fused=True."""
        defaults = {**StochGradAdamOptions().to_dict(), **IMPLEMENTATION}
        full = {name: group.get(name, default) for name, default in defaults.items()}
        StochGradAdamOptions(**plain({n: full[n] for n in StochGradAdamOptions.names()}))
        check_switches({name: full[name] for name in IMPLEMENTATION})
        params = params or []
        if full["fused"] and not fused.supports(params):
            kinds = sorted({f"{type(p).__name__} {p.dtype} on {p.device}" for p in params})
            raise ValueError(
                "invalid fused=True: the fused step takes dense float32 or float64 CPU "
                "or contiguous float32, float16 or bfloat16 CUDA parameters (DTensors: "
                f"CPU shards holding one run of their tensor, as FSDP2's), got {kinds}"
            )

    @property
    def seed(self) -> int | None:
        """The mask stream's seed; None until a seed=None optimizer's first step."""
        return self._stream.seed

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "seed": self.seed, "generators": self._stream.states()}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Restore a pickled or loaded state; options a saved group lacks (saved
        before they existed) take their defaults, step counts become CPU tensors."""
        state = dict(state)
        saved = {key: state.pop(key) for key in ("seed", "generators") if key in state}
        super().__setstate__(state)
        defaults = {**StochGradAdamOptions().to_dict(), **IMPLEMENTATION}
        for group in self.param_groups:
            for name, default in defaults.items():
                group.setdefault(name, default)
        for param_state in self.state.values():
            if "step" in param_state:  # a plain number, or a tensor loaded onto a GPU
                param_state["step"] = torch.tensor(float(param_state["step"]), dtype=torch.float32)
        self.param_groups[0][STREAM] = None  # the saved stream is read apart, in its place
        if saved:  # unpickled: seed and generators come with the state
            self._stream = MaskStream.restored(saved["seed"], saved["generators"])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lists = gather(group, self.state)
            if lists.params:
                if self._stream.seed is None:
                    # seed=None, first step with gradients: every rank steps together, so
                    # rank 0's seed is broadcast here (at construction there may be no
                    # process group yet).
                    self._stream.take_seed()
                self._step_group(group, lists)
        return loss

    def _step_group(self, group: dict[str, Any], lists: Gathered) -> None:
        tensors = lists[:6]  # params, grads, exp_avgs, exp_avg_sqs, maxima, steps
        rate = group["sampling_rate"]
        if round(rate * 2**MASK_BITS) >= 2**MASK_BITS:  # every entry used: Adam's step
            adam_step(group, *tensors)
            return
        hp = numbers(group)
        sampling = dict(
            masked_state=group["masked_state"], scale=1 / rate if group["rescale"] else 1.0
        )
        params, pieces, offsets = lists.params, lists.pieces, None
        sharded = any(pieces)
        if sharded:  # where each shard's entries start in its tensor; None: not one run
            offsets = [0 if s is None else s.start(p) for p, s in zip(params, pieces, strict=True)]
        wanted = group["fused"] is not False and not group["foreach"]
        fused_step = fused.step_for(params[0].device.type) if wanted else None
        masks = None
        if fused_step is not None or sharded:
            # The key comes from the CPU generator whatever the device: no host sync, the
            # same masks on CPU and GPU, and on every rank one draw whatever its shards.
            (key,) = fused.step_keys(self._generator(torch.device("cpu")))
            options = dict(sampling_rate=rate, mask=group["mask"], **sampling, **hp)
            if fused_step is not None and None not in (offsets or ()):
                if fused_step(*tensors, key=key, offsets=offsets, **options):
                    return
                if group["fused"]:
                    self._check_group(group, params)  # a parameter's dtype or device changed
            if sharded:  # the kernel's stream, at each shard's place in its tensor
                masks = stream.shard_masks(params, pieces, key, rate, group["mask"])
        if masks is None:
            masks = draw_masks(params, rate, mask=group["mask"], generator_for=self._generator)
        foreach = group["foreach"] is not False
        stochgradadam(*tensors, masks, foreach=foreach, **sampling, **hp)

    def _generator(self, device: torch.device) -> torch.Generator:
        """The mask generator of ``device``'s type."""
        return self._stream.generator(device)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Not per-parameter state: load_state_dict casts per-parameter tensors to the
        # parameter's dtype, which would corrupt a byte tensor. At the top level, where
        # sievetrain has always kept it, and in the first param group, all of which
        # torch.distributed.checkpoint's get_state_dict keeps (the top level it drops).
        generators = self._stream.states()
        state["seed"], state["generators"] = self.seed, generators
        state["param_groups"][0][STREAM] = stream_entry(self.seed, generators)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`; nothing changes if it is refused.

        Generator states and step counts are moved to the CPU (a state loaded with
        ``map_location="cuda"`` holds them on the GPU); a generator's state is kept
        until the generator of its device type is first needed. Options a group
        lacks (saved before they existed) take their defaults.

        Raises:
            ValueError: the state lacks what StochGradAdam keeps (its sampling options
                in every param group, the seed and the mask generators), as another
                optimizer's state would, or holds an invalid value.
        """
        check_saved_state(state_dict, _OWN_OPTIONS, self._check_group)
        loaded = MaskStream.restored(*saved_stream(state_dict))  # seed None: taken at a step
        state_dict = {k: v for k, v in state_dict.items() if k not in ("seed", "generators")}
        groups = [{k: v for k, v in g.items() if k != STREAM} for g in state_dict["param_groups"]]
        super().load_state_dict({**state_dict, "param_groups": groups})
        self._stream = loaded


# StochGradAdam's own options, which a state saved by it has in every group.
_OWN_OPTIONS = tuple(n for n in StochGradAdamOptions.names() if n not in AdamOptions.names())
