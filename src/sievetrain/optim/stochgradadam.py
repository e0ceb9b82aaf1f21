"""StochGradAdam: Adam that uses a random subset of the gradient's entries each step.

The update rule lives in the pure function
:func:`sievetrain.optim.functional.stochgradadam`; the :class:`StochGradAdam`
optimizer validates arguments, holds state, draws the masks and (de)serialises.
Masks are drawn before the path is chosen, so both paths see the same random
numbers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from sievetrain import distributed
from sievetrain.optim.baselines import AdamOptions
from sievetrain.optim.functional import MASK_BITS, draw_masks, stochgradadam
from sievetrain.options import as_int, option
from sievetrain.rng import derive_seed

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

    With ``sampling_rate=1`` every entry is used and the update is exactly
    ``torch.optim.Adam``'s. The mask is applied after a full backward pass, so it
    saves no backward computation: the method changes what the optimizer does
    with the gradient, not what the gradient costs.

    The paper's rule is the one above, the defaults. The options below are ours,
    offered because which one the paper used could not be confirmed:

    Args:
        params: parameters or parameter groups, as for any torch optimizer; a
            group may override any hyperparameter.
        **hyperparameters: the fields of :class:`StochGradAdamOptions`, which are
            lr: learning rate (per step).
            betas: :math:`(\beta_1, \beta_2)`, decay rates of the moment estimates.
            eps: :math:`\epsilon`, added to the denominator.
            weight_decay: :math:`\lambda`, coupled L2 added to the gradient before masking.
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
            makes a run reproducible) and broadcast, a collective: every rank then
            constructs the optimizer together. Two optimizers built in one process
            with None draw the same masks; give them distinct seeds if they must not.
            Each device type (``"cpu"``, ``"cuda"``) gets its own generator, seeded
            from (seed, device type) and created on the parameters' device when
            first needed: with one seed every rank draws the same masks, whichever
            GPU it holds, so the replicas stay in sync.
        foreach: use the ``torch._foreach_*`` path; None picks it.

    The seed and the generators' states (CPU byte tensors, keyed by device type)
    are saved at the top level of ``state_dict()``, so a resumed run draws the same
    masks as an uninterrupted one, on any rank. A loaded state waits until its
    device type's generator is created; old states keyed ``"cuda:N"`` load as
    ``"cuda"``.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        *,
        seed: int | None = None,
        foreach: bool | None = None,
        **hyperparameters: Any,
    ) -> None:
        defaults = StochGradAdamOptions(**hyperparameters).to_dict()
        if foreach is not None and not isinstance(foreach, bool):
            raise ValueError(f"foreach must be True, False or None, got {foreach!r}")
        super().__init__(params, {**defaults, "foreach": foreach})
        for group in self.param_groups:  # any per-group override is checked too
            StochGradAdamOptions(**{name: group[name] for name in defaults})
        self.seed = distributed.shared_seed(seed, "stochgradadam")
        # Keyed by device type: "cuda" on every rank, whichever GPU it holds.
        self._generators: dict[str, torch.Generator] = {}
        self._pending: dict[str, Tensor] = {}  # loaded states of generators not yet made

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = self._gather(group)
            if not params:
                continue
            masks = draw_masks(
                params,
                group["sampling_rate"],
                mask=group["mask"],
                generator_for=self._generator,
            )
            beta1, beta2 = group["betas"]
            stochgradadam(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                masks,
                foreach=group["foreach"] is not False,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                masked_state=group["masked_state"],
                scale=1 / group["sampling_rate"] if group["rescale"] else 1.0,
            )
        return loss

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise RuntimeError("StochGradAdam does not support sparse gradients")
            if torch.is_complex(p):
                raise RuntimeError("StochGradAdam does not support complex parameters")
            state = self.state[p]
            if not state:
                # A float32 step count on the CPU, as torch.optim.Adam keeps it.
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps

    def _generator(self, device: torch.device) -> torch.Generator:
        """The generator of ``device``'s type, made on ``device`` when first needed
        (seeded, then given the state loaded for it, if any)."""
        key = device.type
        if key not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(self.seed, "stochgradadam", key))
            if key in self._pending:
                generator.set_state(self._pending.pop(key))
            self._generators[key] = generator
        return self._generators[key]

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Top level, not per-parameter state: load_state_dict casts per-parameter
        # tensors to the parameter's dtype, which would corrupt a byte tensor.
        state["seed"] = self.seed
        made = {k: g.get_state() for k, g in self._generators.items()}
        state["generators"] = {**self._pending, **made}  # a loaded state not yet used too
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a state saved by :meth:`state_dict`; nothing changes if it is refused.

        Generator states and step counts are moved to the CPU (a state loaded with
        ``map_location="cuda"`` holds them on the GPU); a generator's state is kept
        until the generator of its device type is first needed.

        Raises:
            ValueError: the state lacks what StochGradAdam keeps (its options in every
                param group, the seed and the mask generators), as another optimizer's
                state would, or holds an invalid value.
        """
        _check_saved_state(state_dict)
        state_dict = dict(state_dict)
        seed = as_int("seed", state_dict.pop("seed"))
        pending = _generator_states(state_dict.pop("generators"))
        super().load_state_dict(state_dict)
        for state in self.state.values():  # a state loaded with map_location="cuda"
            if isinstance(state.get("step"), Tensor):  # keeps step counts on the GPU
                state["step"] = state["step"].cpu()  # where step() expects them: the CPU
        self.seed, self._generators, self._pending = seed, {}, pending


def _generator_states(saved: Any) -> dict[str, Tensor]:
    """Saved generator states keyed by device type, as CPU byte tensors; ValueError
    for a bad key or state. Old states keyed ``"cuda:N"`` map to ``"cuda"``."""
    if not isinstance(saved, dict):
        raise ValueError(f"generators must be a dict of device to state, got {type(saved)}")
    states: dict[str, Tensor] = {}
    names: dict[str, str] = {}
    for name, state in saved.items():
        try:
            kind = torch.device(name).type if isinstance(name, str) else None
        except RuntimeError:
            kind = None
        if kind is None:
            raise ValueError(f"invalid generator device {name!r}: expected 'cpu', 'cuda', ...")
        if kind in names:
            raise ValueError(
                f"generators {names[kind]!r} and {name!r} are both for device type {kind!r}: "
                f"one stream per device type"
            )
        if not isinstance(state, Tensor) or state.dtype != torch.uint8 or state.dim() != 1:
            raise ValueError(
                f"invalid generator state for device {name!r}: expected a 1-D byte tensor"
            )
        state = state.detach().to("cpu", copy=True)  # set_state takes a CPU ByteTensor
        _try_state(kind, name, state)
        names[kind], states[kind] = name, state
    return states


def _try_state(kind: str, name: str, state: Tensor) -> None:
    """ValueError if a generator of device type ``kind`` refuses ``state``; unchecked
    where this process cannot make one (no such device here)."""
    try:
        scratch = torch.Generator(device=kind)
    except RuntimeError:
        return
    try:
        scratch.set_state(state)
    except (RuntimeError, TypeError) as error:
        raise ValueError(f"invalid generator state for device {name!r}: {error}") from None


def _check_saved_state(state_dict: dict[str, Any]) -> None:
    """ValueError naming what a StochGradAdam ``state_dict`` lacks, or its first bad option."""
    required = (*StochGradAdamOptions.names(), "foreach")  # what step() reads of a group
    top = [repr(k) for k in ("state", "param_groups", "seed", "generators") if k not in state_dict]
    missing = [", ".join(top)] if top else []
    for i, group in enumerate(state_dict.get("param_groups", [])):
        if lacking := [repr(k) for k in required if k not in group]:
            missing.append(f"param group {i}'s {', '.join(lacking)}")
    if missing:
        raise ValueError(
            f"not a StochGradAdam state_dict (another optimizer's?): it lacks {'; '.join(missing)}"
        )
    for group in state_dict["param_groups"]:
        StochGradAdamOptions(**{name: group[name] for name in StochGradAdamOptions.names()})
