"""The optimizers methods are compared against (torch's SGD, Adam, RMSprop): their
options, with the defaults sievetrain runs them at."""

from __future__ import annotations

from dataclasses import dataclass

from sievetrain.options import Options, option

__all__ = ["AdamOptions", "RMSpropOptions", "SGDOptions", "check_nonnegative"]


def check_nonnegative(options: Options, *names: str) -> None:
    """ValueError naming the first of ``names`` whose value is negative or NaN."""
    for name in names:
        value = getattr(options, name)
        if not value >= 0:  # "not >=" also rejects NaN
            raise ValueError(f"invalid {name}={value!r}: must be >= 0")


@dataclass(frozen=True)
class SGDOptions(Options):
    """``torch.optim.SGD``: Nesterov momentum, as in the SRS paper's CIFAR-10 recipe."""

    lr: float = option(0.05, "learning rate per step (tuned for batch 128)")
    momentum: float = option(0.9, "momentum factor")
    nesterov: bool = option(True, "Nesterov momentum")
    weight_decay: float = option(5e-4, "coupled L2 penalty")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonnegative(self, "lr", "momentum", "weight_decay")


@dataclass(frozen=True)
class AdamOptions(Options):
    """``torch.optim.Adam`` with torch's defaults."""

    lr: float = option(1e-3, "learning rate per step")
    betas: tuple[float, float] = option((0.9, 0.999), "β1, β2: decay rates of the moments")
    eps: float = option(1e-8, "ε: added to the denominator")
    weight_decay: float = option(0.0, "λ: coupled L2 penalty added to the gradient")
    amsgrad: bool = option(False, "AMSGrad: the running maximum of the second moment in its place")
    maximize: bool = option(False, "ascend the objective instead of descending it")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonnegative(self, "lr", "eps", "weight_decay")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"invalid betas={self.betas!r}: each must be in [0, 1)")


@dataclass(frozen=True)
class RMSpropOptions(Options):
    """``torch.optim.RMSprop`` at Adam's learning rate (torch's own default is 1e-2)."""

    lr: float = option(1e-3, "learning rate per step")
    alpha: float = option(0.99, "smoothing constant of the squared-gradient average")
    eps: float = option(1e-8, "ε: added to the denominator")
    momentum: float = option(0.0, "momentum factor")
    weight_decay: float = option(0.0, "coupled L2 penalty")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_nonnegative(self, "lr", "alpha", "eps", "momentum", "weight_decay")
