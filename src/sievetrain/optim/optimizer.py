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
from torch.optim.adam import adam

from sievetrain import distributed
from sievetrain.optim import fused
from sievetrain.optim.baselines import AdamOptions
from sievetrain.optim.checks import (
    IMPLEMENTATION,
    check_saved_state,
    check_switches,
    generator_states,
    plain,
)
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

    With a realised rate of 1 every entry is used and the step is
    ``torch.optim.Adam``'s own (its functional ``adam`` with the same switches), so
    bitwise equal to Adam's. The mask is applied after a full backward pass, so it
    saves no backward computation: the method changes what the optimizer does with
    the gradient, not what the gradient costs.

    The paper's rule is the one above, the defaults. The options below are ours,
    offered because which one the paper used could not be confirmed:

    Args:
        params: parameters or parameter groups, as for any torch optimizer; a
            group may override any hyperparameter. Complex parameters are stepped
            as real views, as Adam does: real and imaginary parts are masked apart.
        **hyperparameters: the fields of :class:`StochGradAdamOptions`, which are
            lr: learning rate (per step); a one-element tensor is read as its value.
            betas: :math:`(\beta_1, \beta_2)`, decay rates of the moment estimates.
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
            makes a run reproducible) and broadcast, a collective: every rank then
            constructs the optimizer together. Two optimizers built in one process
            with None draw the same masks; give them distinct seeds if they must not.
            Each device type (``"cpu"``, ``"cuda"``) gets its own generator, seeded
            from (seed, device type) and created on the parameters' device when
            first needed: with one seed every rank draws the same masks, whichever
            GPU it holds, so the replicas stay in sync.
        fused: the fused CPU step (:mod:`sievetrain.optim.fused`): one pass per
            tensor that draws the masks as it updates, no parameter-sized
            temporaries. None (default) takes it for dense float32/float64 CPU
            parameters unless ``foreach=True``; True requires such parameters; False
            never. Where the kernel cannot be built, one warning, then the unfused
            path. The fused and unfused paths draw different masks (each a Bernoulli
            stream of the same rate from the same generator), so a run keeps one path.
        foreach: the unfused path's ``torch._foreach_*`` kernels; None picks them.
        capturable, differentiable: accepted as False, as Adam's; True is refused.

    The seed and the generators' states (CPU byte tensors, keyed by device type)
    are saved at the top level of ``state_dict()``, so a resumed run draws the same
    masks as an uninterrupted one, on any rank. A loaded state waits until its
    device type's generator is created; old states keyed ``"cuda:N"`` load as
    ``"cuda"``. Copies (``copy.deepcopy``, pickle) carry the seed and generators too.
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
        switches = dict(
            foreach=foreach, fused=fused, capturable=capturable, differentiable=differentiable
        )
        check_switches(switches)
        seed = distributed.shared_seed(seed, "stochgradadam")
        # Keyed by device type: "cuda" on every rank, whichever GPU it holds.
        self._generators: dict[str, torch.Generator] = {}
        self._pending: dict[str, Tensor] = {}  # loaded states of generators not yet made
        self.seed = seed
        super().__init__(params, {**defaults, **switches})

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters, its options checked first (ValueError naming a
        bad one; nothing is added then)."""
        group = dict(param_group)
        if isinstance(group.get("params"), Tensor):
            group["params"] = [group["params"]]
        elif not isinstance(group.get("params"), set):  # torch refuses a set itself
            group["params"] = list(group.get("params", []))
        names = StochGradAdamOptions.names()
        group.update(plain({name: group[name] for name in names if name in group}))
        self._check_group({**self.defaults, **group}, list(group["params"]))
        super().add_param_group(group)

    @staticmethod
    def _check_group(group: dict[str, Any], params: list[Tensor] | None = None) -> None:
        """ValueError naming a bad option or switch of ``group`` (missing ones take
        their defaults), or ``params`` the fused step cannot take with fused=True."""
        defaults = {**StochGradAdamOptions().to_dict(), **IMPLEMENTATION}
        full = {name: group.get(name, default) for name, default in defaults.items()}
        StochGradAdamOptions(**plain({n: full[n] for n in StochGradAdamOptions.names()}))
        check_switches({name: full[name] for name in IMPLEMENTATION})
        params = [torch.view_as_real(p) if p.is_complex() else p for p in params or []]
        if full["fused"] and not fused.supports(params):
            kinds = sorted({f"{p.dtype} on {p.device}" for p in params})
            raise ValueError(
                "invalid fused=True: the fused step takes dense float32 or float64 CPU "
                f"or contiguous float32, float16 or bfloat16 CUDA parameters, got {kinds}"
            )

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "seed": self.seed, "generators": self._states()}

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
        if saved:  # unpickled: seed and generators come with the state
            self.seed, self._generators = saved["seed"], {}
            self._pending = generator_states(saved["generators"])

    @torch.no_grad()
    def step(self, closure=None):
        """Perform one optimization step; ``closure`` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lists = self._gather(group)
            if lists[0]:
                self._step_group(group, *lists)
        return loss

    def _step_group(self, group, params, grads, exp_avgs, exp_avg_sqs, maxima, steps) -> None:
        beta1, beta2 = (float(beta) for beta in group["betas"])
        hp = dict(
            lr=float(group["lr"]),
            beta1=beta1,
            beta2=beta2,
            eps=float(group["eps"]),
            weight_decay=float(group["weight_decay"]),
            maximize=group["maximize"],
        )
        rate = group["sampling_rate"]
        if round(rate * 2**MASK_BITS) >= 2**MASK_BITS:  # every entry used: Adam's step
            adam(
                params, grads, exp_avgs, exp_avg_sqs, maxima or [], steps,
                foreach=group["foreach"], fused=group["fused"], amsgrad=group["amsgrad"], **hp,
            )  # fmt: skip
            return
        sampling = dict(
            masked_state=group["masked_state"], scale=1 / rate if group["rescale"] else 1.0
        )
        lists = (params, grads, exp_avgs, exp_avg_sqs, maxima, steps)
        wanted = group["fused"] is not False and not group["foreach"]
        fused_step = fused.step_for(params[0].device.type) if wanted else None
        if fused_step is not None:
            # The key comes from the CPU generator whatever the device: no host sync,
            # and the same masks on CPU and GPU.
            (key,) = fused.step_keys(self._generator(torch.device("cpu")))
            options = dict(sampling_rate=rate, mask=group["mask"], **sampling, **hp)
            if fused_step(*lists, key=key, **options):
                return
            if group["fused"]:
                self._check_group(group, params)  # a parameter's dtype or device changed
        masks = draw_masks(params, rate, mask=group["mask"], generator_for=self._generator)
        foreach = group["foreach"] is not False
        stochgradadam(*lists, masks, foreach=foreach, **sampling, **hp)

    def _gather(self, group: dict[str, Any]) -> tuple[list | None, ...]:
        """The group's tensors with gradients, and their states (made on first use)."""
        params, grads, exp_avgs, exp_avg_sqs, maxima, steps = [], [], [], [], [], []
        amsgrad, has_complex = group["amsgrad"], False
        for p in group["params"]:
            grad = p.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise RuntimeError("StochGradAdam does not support sparse gradients")
            state = self.state[p]
            if not state:
                # A float32 step count on the CPU, as torch.optim.Adam keeps it.
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if amsgrad:
                if "max_exp_avg_sq" not in state:  # also where amsgrad was turned on later
                    state["max_exp_avg_sq"] = torch.zeros_like(state["exp_avg_sq"])
                maxima.append(state["max_exp_avg_sq"])
            params.append(p)
            grads.append(grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            steps.append(state["step"])
            has_complex = has_complex or p.is_complex()
        lists = [params, grads, exp_avgs, exp_avg_sqs, maxima]
        if has_complex:  # as Adam: the real and imaginary parts side by side
            lists = [[torch.view_as_real(t) if t.is_complex() else t for t in x] for x in lists]
        return (*lists[:4], lists[4] if amsgrad else None, steps)

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

    def _states(self) -> dict[str, Tensor]:
        """The generators' states, a loaded one not yet used too."""
        return {**self._pending, **{k: g.get_state() for k, g in self._generators.items()}}

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        # Top level, not per-parameter state: load_state_dict casts per-parameter
        # tensors to the parameter's dtype, which would corrupt a byte tensor.
        state["seed"] = self.seed
        state["generators"] = self._states()
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
        state_dict = dict(state_dict)
        seed = as_int("seed", state_dict.pop("seed"))
        pending = generator_states(state_dict.pop("generators"))
        super().load_state_dict(state_dict)
        self.seed, self._generators, self._pending = seed, {}, pending


# StochGradAdam's own options, which a state saved by it has in every group.
_OWN_OPTIONS = tuple(n for n in StochGradAdamOptions.names() if n not in AdamOptions.names())
