"""Data regimes: deterministic corruptions of a dataset's training split.

A data-selection method earns its keep on data that is not clean. Four regimes make
such data from a clean split, so a method's choices can be audited against what is
known to be wrong with each sample (``DataSplit.flags``):

- ``label_noise``: labels flipped with probability P, to any other class
  (``symmetric``) or to a look-alike class (``confusion``, :data:`CONFUSION_PAIRS`);
- ``duplicates``: K samples copied M times over other samples, optionally each copy
  shifted by up to J pixels or time steps;
- ``long_tail``: classes cut to sizes falling geometrically by a ratio R;
- ``off_target``: a fraction F of Shakespeare's sequences replaced by Python source.

Each regime's options are a frozen dataclass (:data:`REGIMES`), written on the command
line as ``VALUE[/KEY=VALUE]...`` (:func:`parse_regime`): ``0.3/kind=confusion``.
:func:`apply_regimes` applies them in a fixed order, long tail first (so duplicates
and noise fall on the data that is kept), off-target last; the test split never changes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from sievetrain.data.corruptions import (
    CONFUSION_PAIRS,
    duplicate_sources,
    long_tail_indices,
    noisy_labels,
    shift,
)
from sievetrain.data.off_target import mix_off_target, off_target_sequences
from sievetrain.data.split import DataSplit
from sievetrain.options import ArgumentError, Options, option, parse_assignments
from sievetrain.rng import make_generator

__all__ = [
    "REGIMES",
    "Duplicates",
    "LabelNoise",
    "LongTail",
    "OffTarget",
    "apply_regimes",
    "format_regime",
    "parse_regime",
]


def _knob(meaning: str) -> Any:
    """A required field (no default) with its meaning, as :func:`~sievetrain.options.option`."""
    return dataclasses.field(metadata={"meaning": meaning})


@dataclass(frozen=True)
class LabelNoise(Options):
    """Labels flipped at random (classification datasets)."""

    rate: float = _knob("P: probability that a label is flipped, in (0, 1)")
    kind: Literal["symmetric", "confusion"] = option(
        "symmetric", "symmetric: to a uniformly drawn other class; confusion: to its pair"
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.rate < 1:
            raise ValueError(f"invalid rate={self.rate!r}: must be in (0, 1)")


@dataclass(frozen=True)
class Duplicates(Options):
    """K samples, each copied M times over other samples (the size does not change)."""

    items: int = _knob("K: samples that are duplicated, >= 1")
    copies: int = option(10, "M: copies of each, the original included, >= 2")
    jitter: int = option(0, "J: each copy rolled by up to J pixels/steps per dim")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name, minimum in (("items", 1), ("copies", 2), ("jitter", 0)):
            if getattr(self, name) < minimum:
                raise ValueError(f"invalid {name}={getattr(self, name)!r}: must be >= {minimum}")


@dataclass(frozen=True)
class LongTail(Options):
    """Class sizes falling geometrically from class 0 to the last (classification datasets)."""

    ratio: float = _knob("R: largest class / smallest class, >= 1")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.ratio < math.inf:
            raise ValueError(f"invalid ratio={self.ratio!r}: must be >= 1 and finite")


@dataclass(frozen=True)
class OffTarget(Options):
    """A fraction of Shakespeare's training sequences replaced by Python source."""

    fraction: float = _knob("F: fraction of training sequences replaced, in (0, 1)")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.fraction < 1:
            raise ValueError(f"invalid fraction={self.fraction!r}: must be in (0, 1)")


# Regime name -> (options, the option its VALUE sets), in the order they are applied.
REGIMES: dict[str, tuple[type[Options], str]] = {
    "long_tail": (LongTail, "ratio"),
    "duplicates": (Duplicates, "items"),
    "label_noise": (LabelNoise, "rate"),
    "off_target": (OffTarget, "fraction"),
}


# ---------------------------------------------------------------------------- text


def parse_regime(name: str, text: str) -> Options:
    """A regime's options from ``VALUE[/KEY=VALUE]...``; VALUE sets its knob.

    ``parse_regime("duplicates", "300/copies=50/jitter=2")`` is
    ``Duplicates(items=300, copies=50, jitter=2)``.

    Raises:
        ValueError: an unknown regime. :class:`~sievetrain.options.ArgumentError`
            (a ValueError) naming the regime and the text: a missing VALUE, an
            unknown key (listing the known ones), or a bad value.
    """
    options, knob = _regime(name)
    head, *assignments = text.strip().split("/")
    try:
        if not head:
            raise ValueError(f"expected VALUE[/KEY=VALUE]..., VALUE being the {knob}")
        values = {knob: options.parse(knob, head)}
        values |= parse_assignments(options, assignments, options.names())
        return options(**values)
    except ValueError as error:
        shown = text or "''"
        raise ArgumentError(f"{{{name}}} {shown}: {error}", **{name: name}) from None


def format_regime(name: str, options: Options) -> str:
    """``options`` as :func:`parse_regime` reads them: the knob, then each option that
    differs from its default (``"300/copies=50"``)."""
    _, knob = _regime(name)
    parts = [_text(getattr(options, knob))]
    for info in options.describe():
        value = getattr(options, info.name)
        if info.name != knob and value != info.default:
            parts.append(f"{info.name}={_text(value)}")
    return "/".join(parts)


def _text(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _regime(name: str) -> tuple[type[Options], str]:
    if name not in REGIMES:
        raise ValueError(f"unknown regime {name!r}; known: {', '.join(REGIMES)}")
    return REGIMES[name]


# ---------------------------------------------------------------------------- apply


@dataclass(frozen=True)
class _Train:
    """The training split as it is being changed: ``x`` ``(N, ...)``, ``y`` ``(N,)`` or
    ``(N, T)`` for tokens, and the flags, bool ``(N,)`` each."""

    x: Tensor
    y: Tensor
    flags: dict[str, Tensor]

    def take(self, index: Tensor) -> _Train:
        """Rows ``index``, flags included: each flag follows its sample's content."""
        flags = {name: flag[index] for name, flag in self.flags.items()}
        return _Train(self.x[index], self.y[index], flags)

    def flag(self, name: str, new: Tensor) -> dict[str, Tensor]:
        """The flags with ``name`` set where ``new`` is (kept where it already was)."""
        old = self.flags.get(name)
        return {**self.flags, name: new if old is None else old | new}


def apply_regimes(data: DataSplit, regimes: Mapping[str, Options], *, seed: int = 0) -> DataSplit:
    """``data`` with its training split corrupted by ``regimes``.

    Regimes apply in the order of :data:`REGIMES` (long tail, duplicates, label noise,
    off-target), each drawing from ``make_generator(seed, "regime", name)``, so a regime
    draws the same whatever others run. The test split is untouched.

    Args:
        data: A clean split (no regimes applied yet).
        regimes: Regime name -> its options, e.g. ``{"label_noise": LabelNoise(0.2)}``.
        seed: The data seed.

    Returns:
        A new split whose ``flags`` add bool ``(N,)`` tensors ``noisy``, ``duplicate``
        and ``off_target`` for the regimes applied (flags already there follow their
        samples), and whose ``regimes`` record the data seed and each regime's options
        as plain JSON. No regimes: ``data`` itself.

    Raises:
        ValueError: an unknown regime, options of the wrong class, data with regimes
            already; :class:`~sievetrain.options.ArgumentError` naming the regime:
            label noise or long tail on token data, off-target text on any dataset but
            Shakespeare, confusion noise on a dataset without pairs, or K·M > N.
    """
    if not regimes:
        return data
    for name, options in regimes.items():
        if not isinstance(options, _regime(name)[0]):
            raise ValueError(f"regime {name!r} takes {_regime(name)[0].__name__}, got {options!r}")
        _check_fits(data, name, options)
    if data.regimes:
        raise ValueError(f"data already has regimes {dict(data.regimes)}; apply all in one call")
    x, y = data.train.tensors
    train = _Train(x, y, dict(data.flags))
    record: dict[str, Any] = {"data_seed": seed}
    for name in REGIMES:  # the order of application
        if name in regimes:
            generator = make_generator(seed, "regime", name, device=x.device)
            train, record[name] = _STEPS[name](train, regimes[name], data, generator, seed)
    return dataclasses.replace(
        data, train=TensorDataset(train.x, train.y), flags=train.flags, regimes=record
    )


def _check_fits(data: DataSplit, name: str, options: Options) -> None:
    """ArgumentError when regime ``name`` cannot apply to ``data`` at all."""
    tokens = data.train.tensors[1].dim() > 1  # (N, T) targets: no class labels
    problem = None
    if name in ("label_noise", "long_tail") and tokens:
        problem = f"{data.name} has token targets, not class labels"
    elif name == "off_target" and data.name != "shakespeare":
        problem = f"the off-target text is for shakespeare, not {data.name}"
    elif name == "label_noise" and options.kind == "confusion" and data.name not in CONFUSION_PAIRS:
        problem = (
            f"no confusion pairs for {data.name}; datasets with pairs: {', '.join(CONFUSION_PAIRS)}"
        )
    if problem:
        raise ArgumentError(f"{{{name}}} {format_regime(name, options)}: {problem}", **{name: name})


def _long_tail(
    train: _Train, options: LongTail, data: DataSplit, generator: torch.Generator, seed: int
) -> tuple[_Train, dict[str, Any]]:
    kept = long_tail_indices(train.y, options.ratio, data.num_classes, generator=generator)
    train = train.take(kept)
    sizes = torch.bincount(train.y, minlength=data.num_classes).tolist()
    return train, {"ratio": options.ratio, "class_sizes": sizes}


def _duplicates(
    train: _Train, options: Duplicates, data: DataSplit, generator: torch.Generator, seed: int
) -> tuple[_Train, dict[str, Any]]:
    k, m, n = options.items, options.copies, len(train.x)
    if k * m > n:
        raise ArgumentError(
            f"{{duplicates}} {format_regime('duplicates', options)}: "
            f"K·M = {k * m} is more than the {n} training samples",
            duplicates="duplicates",
        )
    source, duplicate, copy = duplicate_sources(n, k, m, generator=generator)
    train = train.take(source.to(train.x.device))
    x, y = train.x, train.y
    if options.jitter:
        # Images (N, 1, H, W) roll in both spatial dims; signals and tokens in their last.
        dims = 2 if x.dim() == 4 else 1
        j = options.jitter
        offsets = torch.randint(-j, j + 1, (n, dims), generator=generator, device=x.device)
        offsets[~copy.to(x.device)] = 0  # originals stay as they were
        x = shift(x, offsets)
        y = shift(y, offsets) if y.shape == x.shape else y  # token targets move with inputs
    flags = train.flag("duplicate", duplicate.to(x.device))
    return _Train(x, y, flags), {"items": k, "copies": m, "jitter": options.jitter}


def _label_noise(
    train: _Train, options: LabelNoise, data: DataSplit, generator: torch.Generator, seed: int
) -> tuple[_Train, dict[str, Any]]:
    pairs = CONFUSION_PAIRS[data.name] if options.kind == "confusion" else None
    y, noisy = noisy_labels(
        train.y, options.rate, data.num_classes, generator=generator, kind=options.kind, pairs=pairs
    )
    record: dict[str, Any] = {"rate": options.rate, "kind": options.kind}
    if pairs is not None:
        record["pairs"] = [list(pair) for pair in pairs]
    return _Train(train.x, y, train.flag("noisy", noisy)), record


def _off_target(
    train: _Train, options: OffTarget, data: DataSplit, generator: torch.Generator, seed: int
) -> tuple[_Train, dict[str, Any]]:
    x, y, off_target = mix_off_target(
        train.x, train.y, options.fraction, seq_len=train.x.shape[1], generator=generator, seed=seed
    )
    # A replaced row is no longer what its old flags said it was.
    train = _Train(x, y, {name: flag & ~off_target for name, flag in train.flags.items()})
    _, source = off_target_sequences(x.shape[1])
    record = {"fraction": options.fraction, "source": source}
    return _Train(x, y, train.flag("off_target", off_target)), record


_STEPS: dict[str, Callable[..., tuple[_Train, dict[str, Any]]]] = {
    "long_tail": _long_tail,
    "duplicates": _duplicates,
    "label_noise": _label_noise,
    "off_target": _off_target,
}
