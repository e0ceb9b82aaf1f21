"""The method registry: what ``--methods`` accepts, and how each method is built.

A method acts at one of three levels: which samples an epoch sees (``sampler``),
which samples of a batch are backpropagated (``selector``), or how the optimizer
steps (``optimizer``). A run composes at most one method of each level with ``+``;
a level left out takes its default (full data, keep every sample, SGD).

Every method's options are one frozen dataclass (:class:`~sievetrain.options.Options`)
that the library class takes as keywords: the registry holds no default of its
own. Grammar of one method: ``NAME[:VALUE][/KEY=VALUE]...`` where VALUE sets the
method's main option (its ``knob``, e.g. a sampler's ``ratio``) and each
``/KEY=VALUE`` one of its options, e.g. ``srs:0.1/interval=10+adam/lr=0.003``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from sievetrain.options import ArgumentError, Options, RunContext, naming, parse_assignments

__all__ = [
    "LEVELS",
    "Method",
    "Component",
    "RunSpec",
    "REGISTRY",
    "register",
    "parse_run",
]

Level = Literal["sampler", "selector", "optimizer"]
LEVELS: tuple[Level, ...] = ("sampler", "selector", "optimizer")
DEFAULTS: dict[Level, str | None] = {"sampler": "full", "selector": None, "optimizer": "sgd"}


@dataclass(frozen=True)
class Method:
    """A registered method: its options class, and how to build it for a run.

    ``build(options, context)`` returns the sampler, selector or optimizer (an
    optimizer is built over ``context.model``'s parameters). ``pinned`` fixes some
    options (``fixed`` is SRS with ``interval=0``); ``exposed`` lists the options a
    user may set (default: all that are not pinned).
    """

    name: str
    level: Level
    summary: str
    options: type[Options]
    build: Callable[[Any, RunContext], Any]
    knob: str | None = None  # the option VALUE sets in NAME:VALUE, e.g. "ratio"
    pinned: Mapping[str, Any] = field(default_factory=dict)
    exposed: tuple[str, ...] | None = None
    card: str | None = None  # the method card, docs/methods/<card>.md

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r} for method {self.name!r}")
        names = self.options.names()
        exposed = self.exposed if self.exposed is not None else names
        object.__setattr__(self, "exposed", tuple(n for n in exposed if n not in self.pinned))
        object.__setattr__(self, "pinned", MappingProxyType(dict(self.pinned)))
        unknown = (set(self.pinned) | set(self.exposed) | {self.knob} - {None}) - set(names)
        if unknown:
            raise ValueError(f"method {self.name!r}: no option {sorted(unknown)[0]!r}")
        if self.knob is not None and self.knob not in self.exposed:
            raise ValueError(f"method {self.name!r}: its knob {self.knob!r} is not exposed")

    def defaults(self) -> Options:
        """The options a run of this method has when it sets none."""
        return self.options(**self.pinned)


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered already")
    REGISTRY[method.name] = method
    return method


@dataclass(frozen=True)
class Component:
    """One method of a run with its resolved options."""

    method: Method
    options: Options

    @property
    def value(self) -> Any:
        """The knob's value (e.g. the ratio), None for a method without one."""
        return getattr(self.options, self.method.knob) if self.method.knob else None

    def build(self, context: RunContext) -> Any:
        return self.method.build(self.options, context)

    def describe(self) -> dict[str, Any]:
        options = {k: v for k, v in self.options.to_dict().items() if k != self.method.knob}
        return {"method": self.method.name, "value": self.value, "options": options}

    def settable(self, key: str) -> bool:
        """Whether ``--set key=...`` reaches this component (``key`` or ``name/key``)."""
        name, _, option = key.rpartition("/")
        return option in self.method.exposed and name in ("", self.method.name)

    def set(self, key: str, raw: Any) -> Component:
        """This component with option ``key`` (``name/key`` too) parsed from ``raw``."""
        option = key.rpartition("/")[2]
        value = self.options.parse(option, raw)
        return Component(self.method, self.options.replace(**{option: value}))


@dataclass(frozen=True)
class RunSpec:
    """A run's methods, one per level (``selector`` may be None: keep every sample)."""

    label: str
    sampler: Component
    selector: Component | None
    optimizer: Component

    def components(self) -> list[Component]:
        return [c for c in (self.sampler, self.selector, self.optimizer) if c is not None]

    def describe(self) -> dict[str, Any]:
        return {c.method.level: c.describe() for c in self.components()}


def parse_run(
    text: str,
    sets: Mapping[str, Any] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> RunSpec:
    """Parse ``a+b+c`` into a ``RunSpec``.

    ``sets`` (the CLI's ``--set``) map ``KEY`` or ``NAME/KEY`` to a value, as text
    (parsed by the option's type) or typed; each applies to the component of the run
    that has that option. ``defaults`` maps a level to the method a run without one
    of that level takes (e.g. ``{"optimizer": "stochgradadam"}``).

    Raises:
        ValueError: naming an unknown method or option, a bad value, two methods of
            one level, or an override that more than one component of the run has.
    """
    text = text.strip()
    if not text:
        raise ValueError("empty method name")
    chosen: dict[str, Component] = {}
    for part in text.split("+"):
        component = _parse_component(part.strip(), text)
        level = component.method.level
        if level in chosen:
            raise ValueError(
                f"{text!r} has two {level}-level methods "
                f"({chosen[level].method.name!r} and {component.method.name!r}); "
                "compose one of each"
            )
        chosen[level] = component
    for level, name in {**DEFAULTS, **(defaults or {})}.items():
        if level not in chosen and name is not None:
            if re.split("[:/]", name)[0] not in REGISTRY:
                known = ", ".join(m.name for m in REGISTRY.values() if m.level == level)
                raise ValueError(f"unknown {level} {name!r}; known: {known}")
            chosen[level] = _parse_component(name, name)
            if chosen[level].method.level != level:
                raise ValueError(
                    f"{name!r} is a {chosen[level].method.level}-level method, "
                    f"expected one of level {level!r}"
                )
            if name != DEFAULTS[level]:  # a run's label names what it runs
                text = f"{text}+{name}"
    for key, raw in (sets or {}).items():
        hits = [level for level, c in chosen.items() if c.settable(key)]
        if len(hits) > 1:
            option = key.rpartition("/")[2]
            names = [chosen[level].method.name for level in hits]
            forms = " or ".join(f"{name}/{option}={raw}" for name in names)
            raise ArgumentError(
                f"{{sets}} {key}={raw} is ambiguous in {text!r}: {' and '.join(names)} both "
                f"have an option {option!r}; write {forms}",
                sets="sets:",
            )
        for level in hits:
            chosen[level] = chosen[level].set(key, raw)
    return RunSpec(text, chosen["sampler"], chosen.get("selector"), chosen["optimizer"])


def _parse_component(part: str, whole: str) -> Component:
    head, *assignments = part.split("/")
    name, sep, raw_value = head.partition(":")
    if name not in REGISTRY:
        raise ValueError(
            f"unknown method {name!r} in {whole!r}; known: {', '.join(sorted(REGISTRY))}"
        )
    method = REGISTRY[name]
    with naming(part):
        return _component(method, part, raw_value if sep else None, assignments)


def _component(
    method: Method, part: str, raw_value: str | None, assignments: list[str]
) -> Component:
    name = method.name
    values: dict[str, Any] = {}
    if raw_value is not None:
        if method.knob is None:
            raise ValueError(f"method {name!r} takes no value, got {raw_value!r}")
        values[method.knob] = method.options.parse(method.knob, raw_value)
    values |= parse_assignments(
        method.options,
        assignments,
        method.exposed,
        where=f" in {part!r}",
        owner=f" for method {name!r}",
    )
    return Component(method, method.options(**{**method.pinned, **values}))
