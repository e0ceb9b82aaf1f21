"""The method registry: what ``--methods`` accepts, and how each method is built.

A method acts at one of three levels: which samples an epoch sees (``sampler``),
which samples of a batch are backpropagated (``selector``), or how the optimizer
steps (``optimizer``). A run composes at most one method of each level with ``+``;
a level left out takes its default (full data, keep every sample, SGD).

Grammar of one method: ``NAME[:VALUE][/KEY=VALUE]...`` where VALUE is the method's
main knob (e.g. the ratio of a sampler) and each ``/KEY=VALUE`` overrides one of
its options, e.g. ``srs:0.1/interval=10+adam/lr=0.003``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

__all__ = [
    "LEVELS",
    "Method",
    "Component",
    "RunSpec",
    "REGISTRY",
    "register",
    "parse_run",
    "parse_value",
]

Level = Literal["sampler", "selector", "optimizer"]
LEVELS: tuple[Level, ...] = ("sampler", "selector", "optimizer")
DEFAULTS: dict[Level, str | None] = {"sampler": "full", "selector": None, "optimizer": "sgd"}


@dataclass(frozen=True)
class Method:
    """A registered method.

    ``build`` receives ``(value, options, context)`` where ``context`` carries what
    the level needs: for samplers ``n``, ``seed``, ``batch_size``, ``epochs``; for selectors
    ``seed`` and ``num_classes``; for optimizers ``params`` and ``seed``.
    """

    name: str
    level: Level
    summary: str
    build: Callable[[float | None, dict[str, Any], dict[str, Any]], Any]
    knob: str | None = None  # meaning of VALUE, e.g. "ratio"
    default: float | None = None  # VALUE when none is written
    options: Mapping[str, Any] = field(default_factory=dict)  # option -> default (gives the type)

    def __post_init__(self) -> None:
        if self.level not in LEVELS:
            raise ValueError(f"unknown level {self.level!r} for method {self.name!r}")
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))


REGISTRY: dict[str, Method] = {}


def register(method: Method) -> Method:
    """Add ``method`` to the registry (its name must be new)."""
    if method.name in REGISTRY:
        raise ValueError(f"method {method.name!r} is registered already")
    REGISTRY[method.name] = method
    return method


@dataclass(frozen=True)
class Component:
    """One method of a run with its knob and resolved options."""

    method: Method
    value: float | None
    options: Mapping[str, Any]

    def build(self, **context: Any) -> Any:
        return self.method.build(self.value, dict(self.options), context)

    def describe(self) -> dict[str, Any]:
        return {"method": self.method.name, "value": self.value, "options": dict(self.options)}


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
        return {
            level: c.describe()
            for level, c in zip(LEVELS, self._by_level(), strict=True)
            if c is not None
        }

    def _by_level(self) -> tuple[Component | None, ...]:
        return (self.sampler, self.selector, self.optimizer)


def parse_run(
    text: str,
    overrides: Mapping[str, str] | None = None,
    defaults: Mapping[str, str] | None = None,
) -> RunSpec:
    """Parse ``a+b+c`` into a ``RunSpec``; ``overrides`` (from ``--set``) apply to
    every component that has the option, or whose knob has that name (e.g.
    ``sampling_rate``). ``defaults`` maps a level to the method a run without one
    of that level takes (e.g. ``{"optimizer": "stochgradadam"}``).

    Raises:
        ValueError: naming an unknown method or option, a bad value, or two methods
            of one level.
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
    for key, raw in (overrides or {}).items():
        for level, comp in chosen.items():
            if key in comp.method.options:
                chosen[level] = _with_option(comp, key, raw)
            elif key == comp.method.knob:
                value = _to_float(raw, f"{comp.method.name} {key}")
                chosen[level] = Component(comp.method, value, comp.options)
    return RunSpec(text, chosen["sampler"], chosen.get("selector"), chosen["optimizer"])


def _parse_component(part: str, whole: str) -> Component:
    head, *assignments = part.split("/")
    name, sep, raw_value = head.partition(":")
    if name not in REGISTRY:
        raise ValueError(
            f"unknown method {name!r} in {whole!r}; known: {', '.join(sorted(REGISTRY))}"
        )
    method = REGISTRY[name]
    value = method.default
    if sep:
        if method.knob is None:
            raise ValueError(f"method {name!r} takes no value, got {raw_value!r}")
        value = _to_float(raw_value, f"{name} {method.knob}")
    comp = Component(method, value, method.options)
    for assignment in assignments:
        key, eq, raw = assignment.partition("=")
        if not eq:
            raise ValueError(f"expected KEY=VALUE after '/' in {part!r}, got {assignment!r}")
        if key not in method.options:
            known = ", ".join(method.options) or "none"
            raise ValueError(f"unknown option {key!r} for method {name!r}; its options: {known}")
        comp = _with_option(comp, key, raw)
    return comp


def _with_option(comp: Component, key: str, raw: str) -> Component:
    value = parse_value(raw, comp.method.options[key], f"{comp.method.name} option {key}")
    return Component(comp.method, comp.value, {**comp.options, key: value})


def parse_value(raw: str, like: Any, what: str) -> Any:
    """Convert the string ``raw`` to the type of ``like`` (bool, int, float or str)."""
    raw = raw.strip()
    if isinstance(like, bool):
        if raw.lower() in ("1", "true", "yes", "on"):
            return True
        if raw.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"invalid {what}={raw!r}: expected true or false")
    if isinstance(like, int):
        try:
            return int(raw)
        except ValueError:
            raise ValueError(f"invalid {what}={raw!r}: expected an integer") from None
    if isinstance(like, float) or like is None:
        return _to_float(raw, what)
    return raw


def _to_float(raw: str, what: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"invalid {what}={raw!r}: expected a number") from None
    if math.isinf(value):
        raise ValueError(f"invalid {what}={raw!r}: must be finite")
    return value
