"""Method options: one frozen dataclass per method, the one home of every knob.

Each method declares its hyperparameters once, as fields of a subclass of
:class:`Options` made with :func:`option` (default and meaning)::

    @dataclass(frozen=True)
    class SRSOptions(Options):
        ratio: float = option(0.3, "r: fraction of the data an epoch sees, in (0, 1]")

The base checks every value against its annotated type (``bool``, ``int``,
``float``, ``str``, ``Literal[...]``, ``X | None``, ``tuple[float, ...]``), and
subclasses check ranges in ``__post_init__``, raising ``ValueError`` that names the
option and the value. From the same fields come the library class's keyword
arguments, the CLI's ``NAME:VALUE/KEY=VALUE`` and ``--set KEY=VALUE`` parsing
(:meth:`Options.parse`), ``sievetrain methods`` and the method cards' option
tables (:meth:`Options.describe`).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, get_args, get_origin

__all__ = [
    "ArgumentError",
    "OptionInfo",
    "Options",
    "RunContext",
    "as_int",
    "naming",
    "option",
    "parse_assignments",
    "parse_typed",
]


class ArgumentError(ValueError):
    """A bad argument whose message names it the way the caller wrote it.

    ``template`` holds ``{name}`` fields; the library spells each as given here
    (``seeds="seeds="``), the CLI as its flag (``--seeds``), via :meth:`render`.
    """

    def __init__(self, template: str, **spelled: str) -> None:
        self.template, self.spelled = template, spelled
        super().__init__(self.render({}))

    def render(self, flags: dict[str, str]) -> str:
        """The message with each argument spelled by ``flags`` where it has one."""
        message = self.template
        for name, spelling in self.spelled.items():
            message = message.replace("{" + name + "}", flags.get(name, spelling))
        return message


@contextmanager
def naming(label: str) -> Iterator[None]:
    """Prefix ``label`` to a ValueError raised inside (``'fixed:0': ratio must ...``),
    so the message says which method or run a bad value belongs to. An
    :class:`ArgumentError` passes unchanged: it already names its argument."""
    try:
        yield
    except ArgumentError:
        raise
    except ValueError as error:
        raise ValueError(f"{label!r}: {error}") from None


def option(default: Any, meaning: str) -> Any:
    """A dataclass field with its default and a one-line meaning (unit, range)."""
    return dataclasses.field(default=default, metadata={"meaning": meaning})


@dataclass(frozen=True)
class OptionInfo:
    """One option as ``sievetrain methods`` and the method cards show it."""

    name: str
    type: Any  # the resolved annotation, e.g. float or Literal["sample", "batch"]
    default: Any
    meaning: str

    @property
    def type_name(self) -> str:
        return _type_name(self.type)


@dataclass(frozen=True)
class RunContext:
    """What a method needs from the run besides its own options."""

    n: int  # training samples
    batch_size: int  # samples per training batch
    epochs: int  # epochs of the run
    num_classes: int  # classes (or vocabulary size) the model predicts
    seed: int = 0  # run seed; each method derives its own streams from it
    model: Any = None  # a throwaway model, for checks that need one (Options.needs_model)
    sample: Any = None  # (x, y) of a few training samples, with ``model``
    input_shape: tuple[int, ...] = ()  # one sample's input shape (e.g. to build a model)
    flags: Any = None  # name -> bool (N,) of a data regime (e.g. "off_target")


class Options:
    """Base of the per-method option dataclasses (subclasses are frozen dataclasses)."""

    needs_model: ClassVar[bool] = False  # check() reads context.model and context.sample

    def __post_init__(self) -> None:
        for info in self.describe():
            value = _check_type(info.name, getattr(self, info.name), info.type)
            object.__setattr__(self, info.name, value)  # e.g. int 1 -> float 1.0

    def check(self, context: RunContext) -> None:
        """Checks that need the run (dataset size, batch size, a model); none by default.

        Raises:
            ValueError: naming the option and the value that cannot work in this run.
        """

    def backprop_fraction(self, context: RunContext) -> float | None:
        """Expected backward passes of a run with these options, as a fraction of full
        data's over the same epochs (what a budget-matched baseline gets); None when only
        a run can tell. 1 by default: the method does not change what is backpropagated."""
        return 1.0

    @classmethod
    @functools.cache
    def describe(cls) -> tuple[OptionInfo, ...]:
        """Every option: name, type, default and meaning, in declaration order."""
        hints = typing.get_type_hints(cls)
        return tuple(
            OptionInfo(f.name, hints[f.name], f.default, f.metadata.get("meaning", ""))
            for f in dataclasses.fields(cls)
        )

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(info.name for info in cls.describe())

    @classmethod
    def parse(cls, name: str, raw: Any) -> Any:
        """The value of option ``name`` written as text (``"0.3"``, ``"true"``,
        ``"0.9,0.99"``); a value that is not text is taken as it is (and checked
        when the options are built)."""
        (info,) = [i for i in cls.describe() if i.name == name]
        return parse_typed(raw, info.type, name) if isinstance(raw, str) else raw

    @classmethod
    def of(cls, source: Any) -> Options:
        """These options as read from ``source``'s attributes of the same names."""
        return cls(**{name: getattr(source, name) for name in cls.names()})

    def replace(self, **changes: Any) -> Options:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def parse_assignments(
    options: type[Options],
    assignments: list[str],
    allowed: tuple[str, ...],
    *,
    where: str = "",
    owner: str = "",
) -> dict[str, Any]:
    """The values of ``KEY=VALUE`` texts (the ``/KEY=VALUE`` parts of a method or a data
    regime), each parsed by ``options``' type for KEY, which must be in ``allowed``.

    Raises:
        ValueError: a part without ``=`` (``where`` says where it stood), a key not in
            ``allowed`` (``owner`` says whose), or a bad value.
    """
    values: dict[str, Any] = {}
    for assignment in assignments:
        key, eq, raw = assignment.partition("=")
        if not eq:
            raise ValueError(f"expected KEY=VALUE after '/'{where}, got {assignment!r}")
        if key not in allowed:
            known = ", ".join(allowed) or "none"
            raise ValueError(f"unknown option {key!r}{owner}; its options: {known}")
        values[key] = options.parse(key, raw)
    return values


def parse_typed(raw: str, kind: Any, name: str) -> Any:
    """Convert the text ``raw`` to a value of type ``kind`` (see the module docstring).

    Raises:
        ValueError: ``invalid NAME='RAW': expected ...``.
    """
    text = raw.strip()
    origin, args = get_origin(kind), get_args(kind)
    if origin in (typing.Union, types.UnionType):  # X | None: "" or "none" is None
        if text.lower() in ("", "none"):
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return parse_typed(text, kind, name)
    if origin is tuple:
        parts = [p for p in text.strip("()").split(",") if p.strip()]
        return tuple(parse_typed(p, args[0], name) for p in parts)
    if origin is Literal or kind is str:
        return text
    if kind is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"invalid {name}={raw!r}: expected true or false")
    if kind is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"invalid {name}={raw!r}: expected an integer") from None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"invalid {name}={raw!r}: expected a number") from None
    if math.isinf(value):
        raise ValueError(f"invalid {name}={raw!r}: must be finite")
    return value


def as_int(name: str, value: object, minimum: int | None = None, limit: int | None = None) -> int:
    """``value`` as an int in ``[minimum, limit)``, else ValueError naming it (bools rejected)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):  # numpy ints pass
        raise ValueError(f"{name} must be an integer, got {value!r}")
    number = int(value)
    if (minimum is not None and number < minimum) or (limit is not None and number >= limit):
        bounds = f">= {minimum}" if limit is None else f"in [{minimum}, {limit})"
        raise ValueError(f"{name} must be {bounds}, got {value!r}")
    return number


def _check_type(name: str, value: Any, kind: Any) -> Any:
    """``value`` if it has type ``kind`` (ints widened to float), else ValueError."""
    origin, args = get_origin(kind), get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _check_type(name, value, kind)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            raise ValueError(f"{name} must be one of {choices}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, tuple | list):
            raise ValueError(f"{name} must be a tuple, got {value!r}")
        if len(args) != 2 or args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ValueError(f"{name} must have {len(args)} entries, got {tuple(value)!r}")
        return tuple(_check_type(name, v, args[0]) for v in value)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be a bool, got {value!r}")
        return value
    if kind is int:
        return as_int(name, value)
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ValueError(f"{name} must be a number, got {value!r}")
        return float(value)
    if kind is str and not isinstance(value, str):
        raise ValueError(f"{name} must be a string, got {value!r}")
    return value


def _type_name(kind: Any) -> str:
    origin, args = get_origin(kind), get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is tuple:
        return f"tuple[{', '.join(_type_name(a) for a in args)}]"
    if kind is Ellipsis:
        return "..."
    if kind is type(None):
        return "None"
    return getattr(kind, "__name__", str(kind))
