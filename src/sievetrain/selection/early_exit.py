"""Early exits: score a batch from an intermediate stage of a model, cheaply.

An :class:`EarlyExit` attaches a forward hook to one named submodule of any
``nn.Module``. A scoring pass runs the model without gradients; when the hooked
stage has produced its output the hook stops the pass (the rest of the network
is never computed) and an exit head turns that output into logits. The user's
model is not edited: no submodule is added, and :meth:`EarlyExit.remove` takes
the hook away again.

Exit heads:

- ``"reuse"``: the model's own output head (its submodule named ``head``) applied
  to the intermediate output. Parameter-free; it needs the stage to emit what
  the head takes, as every layer of a transformer does (hidden size is shared).
- ``"linear"``: a small head of its own, average pooling then one linear layer,
  trained on every scored batch's exit loss. It is trained on the detached stage
  output with its own Adam, so the trunk's gradients are never touched.
- ``"auto"``: ``"reuse"`` when the model's head accepts the stage's output,
  else ``"linear"``.

Under ``DistributedDataParallel`` an exit takes the wrapper and works on the module
inside it (:func:`sievetrain.distributed.unwrap`): stage and head names are that
module's, and a scoring pass runs no DDP collective. A linear head's gradients are
averaged over the ranks before each step (:func:`~sievetrain.distributed.average_gradients`,
a no-op in one process), so heads that start alike (zero-initialised) stay bitwise
identical on every rank; every rank must then train its head on every batch.
"""

from __future__ import annotations

import copy
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn

from sievetrain.distributed import average_gradients, unwrap
from sievetrain.losses import batch_loss
from sievetrain.scoring import scoring_mode

__all__ = ["EXIT_HEADS", "EarlyExit", "ExitHead", "check_exit", "exit_stage"]

ExitHead = Literal["auto", "reuse", "linear"]
EXIT_HEADS: tuple[str, ...] = get_args(ExitHead)
_POOLED_SIZE = 4  # the linear head pools each spatial dimension to 4 (16 cells for images)


class _StopForward(Exception):
    """Raised by the exit hook to end a scoring pass at the exit."""


class EarlyExit:
    """An exit after ``model.<stage>``, removable, with a reused or trained head.

    Args:
        model: any ``nn.Module``, or a DDP wrapper (the exit goes on the module
            inside it); it is not modified (one forward hook is added).
        stage: dotted name of the submodule after which to exit, e.g. ``"stem"``
            or ``"layer1"`` (``model.get_submodule(stage)``).
        head: ``"auto"``, ``"reuse"`` or ``"linear"`` (see the module docstring).
        num_classes: outputs of a linear head (classes, or vocabulary size).
        head_module: name of the model's own output head, for ``"reuse"``.
        lr: learning rate of the linear head's Adam.

    Raises:
        ValueError: unknown ``stage``, ``head`` or ``head_module``; a linear head
            without ``num_classes``.
    """

    def __init__(
        self,
        model: nn.Module,
        stage: str,
        *,
        head: str = "auto",
        num_classes: int | None = None,
        head_module: str = "head",
        lr: float = 1e-3,
    ) -> None:
        if head not in EXIT_HEADS:
            raise ValueError(f"unknown exit head {head!r}; known: {', '.join(EXIT_HEADS)}")
        model = unwrap(model)
        self.stage, self.lr, self.num_classes = stage, lr, num_classes
        self._model_head = _find(model, head_module, "head_module") if head != "linear" else None
        if head == "reuse" and stage == head_module:  # exit at the output: logits as they are
            self._model_head = nn.Identity()
        self.kind = head  # resolved to "reuse" or "linear" on the first pass
        if head == "linear" and num_classes is None:
            raise ValueError("a linear exit head needs num_classes")
        self.linear: nn.Module | None = None
        self.optimizer: torch.optim.Optimizer | None = None
        self._pending_state: dict[str, Any] | None = None
        self._features: Tensor | None = None
        self._armed = False
        self._handle = _find(model, stage, "stage").register_forward_hook(self._hook)

    def remove(self) -> None:
        """Take the hook off the model; it behaves exactly as before."""
        self._handle.remove()

    def _hook(self, module: nn.Module, inputs: Any, output: Tensor) -> None:
        if self._armed:
            self._features = output
            raise _StopForward

    def features(self, model: nn.Module, x: Tensor) -> Tensor:
        """The stage's output for ``x``, computed without gradients and without
        running the rest of the model (nor a DDP wrapper's collectives)."""
        model = unwrap(model)
        self._armed = True
        try:
            with torch.no_grad():
                model(x)
        except _StopForward:
            pass
        finally:
            self._armed = False
        features, self._features = self._features, None
        if features is None:
            raise ValueError(f"stage {self.stage!r} did not run in the model's forward pass")
        return features

    def logits(self, model: nn.Module, x: Tensor, y: Tensor, *, train_head: bool = True) -> Tensor:
        """Exit logits for ``x`` (same layout as the model's output); with
        ``train_head`` a linear head also takes one step on this batch's exit loss."""
        features = self.features(model, x)
        if self.kind == "auto":
            self.kind = "reuse" if self._reuse_fits(features) else "linear"
            if self.kind == "linear" and self.num_classes is None:
                raise ValueError(
                    f"the model's head does not take the output of stage {self.stage!r} "
                    f"(shape {tuple(features.shape)}), and a linear head needs num_classes"
                )
        if self.kind == "reuse":
            with torch.no_grad():
                try:
                    return self._model_head(features)
                except RuntimeError as error:
                    raise ValueError(
                        f"the model's head cannot take the output of stage {self.stage!r} "
                        f"(shape {tuple(features.shape)}): use head='linear' ({error})"
                    ) from None
        if self.linear is None:
            self._build_linear(features, token_targets=y.dim() == 2)
        # At least float32, whatever the features' precision (autocast may give bf16):
        # the head is built in that dtype and trains in it.
        features = features.to(torch.promote_types(features.dtype, torch.float32))
        if not train_head:
            with torch.no_grad():
                return self.linear(features)
        return self._train_linear(features, y)

    def _reuse_fits(self, features: Tensor) -> bool:
        try:
            with torch.no_grad():
                self._model_head(features[:1])
        except RuntimeError:
            return False
        return True

    def _train_linear(self, features: Tensor, y: Tensor) -> Tensor:
        # The logits returned are those before this step's update.
        with torch.enable_grad():
            logits = self.linear(features.detach())
            self.optimizer.zero_grad(set_to_none=True)
            batch_loss(logits, y).backward()
            # Under DDP: the mean over ranks keeps every rank's head identical.
            average_gradients(list(self.linear.parameters()))
            self.optimizer.step()
        return logits.detach()

    def _build_linear(self, features: Tensor, *, token_targets: bool) -> None:
        # Token targets (B, T): features are (B, T, d), one prediction per position.
        # Otherwise features are channels first, (B, C, *spatial): pool, then flatten.
        if token_targets or features.dim() == 2:
            layers: list[nn.Module] = [nn.Linear(features.shape[-1], self.num_classes)]
        else:
            spatial = features.dim() - 2
            pool = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)[spatial - 1]
            width = features.shape[1] * _POOLED_SIZE**spatial
            layers = [pool(_POOLED_SIZE), nn.Flatten(), nn.Linear(width, self.num_classes)]
        dtype = torch.promote_types(features.dtype, torch.float32)  # float32 under autocast
        self.linear = nn.Sequential(*layers).to(features.device, dtype)
        # Zero init: no randomness to own, and a fresh head ranks all samples alike
        # (uniform prediction) until its first step.
        nn.init.zeros_(layers[-1].weight)
        nn.init.zeros_(layers[-1].bias)
        self.optimizer = torch.optim.Adam(self.linear.parameters(), lr=self.lr)
        if self._pending_state is not None:
            self._load_linear(self._pending_state)
            self._pending_state = None

    def state_dict(self) -> dict[str, Any]:
        """A snapshot: copies, so later steps do not change it (torch's state dicts
        alias the live tensors, and loading one in the same process would share them)."""
        state: dict[str, Any] = {"kind": self.kind}
        if self.linear is not None:
            state["linear"] = copy.deepcopy(self.linear.state_dict())
            state["optimizer"] = copy.deepcopy(self.optimizer.state_dict())
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.kind = state["kind"]
        if "linear" in state:
            if self.linear is None:  # built on the first pass, from the features' shape
                self._pending_state = state
            else:
                self._load_linear(state)

    def _load_linear(self, state: dict[str, Any]) -> None:
        self.linear.load_state_dict(state["linear"])
        self.optimizer.load_state_dict(state["optimizer"])


def exit_stage(model: nn.Module, stage: str | None) -> str:
    """``stage``, or the model's own ``exit_stage`` (the reference models name one;
    under DDP, the module inside the wrapper)."""
    stage = stage or getattr(unwrap(model), "exit_stage", None)
    if stage is None:
        raise ValueError("an early exit needs stage= (the model declares no exit_stage)")
    return stage


def check_exit(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    stage: str | None,
    head: str = "auto",
    num_classes: int | None = None,
) -> str:
    """Check that an exit after ``stage`` with ``head`` fits ``model`` for batches like
    ``(x, y)`` (two or more samples), by one scoring pass that trains nothing and
    leaves the model as it was. Returns the head kind ``"auto"`` resolves to.

    Raises:
        ValueError: unknown stage, or a head that cannot take the stage's output.
    """
    model = unwrap(model)
    early_exit = EarlyExit(model, exit_stage(model, stage), head=head, num_classes=num_classes)
    try:
        with scoring_mode(model):
            early_exit.logits(model, x, y, train_head=False)
    finally:
        early_exit.remove()
    return early_exit.kind


def _find(model: nn.Module, name: str, what: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError:
        known = ", ".join(n for n, _ in model.named_children())
        raise ValueError(
            f"model has no submodule {name!r} for {what}; its top-level stages: {known}"
        ) from None
