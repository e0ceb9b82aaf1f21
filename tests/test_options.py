from dataclasses import dataclass
from typing import Literal

import pytest
import torch

from sievetrain.optim import StochGradAdam
from sievetrain.options import ArgumentError, Options, option, parse_typed
from sievetrain.sampling import GradMatchSampler, SoftRandomSampler
from sievetrain.selection import SIFT, RandomKeep, SelectiveBackprop


@dataclass(frozen=True)
class Example(Options):
    rate: float = option(0.5, "a fraction")
    count: int = option(3, "how many")
    flag: bool = option(False, "on or off")
    kind: Literal["a", "b"] = option("a", "which")
    name: str | None = option(None, "optional text")
    pair: tuple[float, float] = option((0.9, 0.99), "two numbers")
    many: tuple[float, ...] = option((0.5,), "any number of numbers")


def test_defaults_meanings_and_types_come_from_the_fields():
    infos = {i.name: i for i in Example.describe()}
    assert infos["rate"].default == 0.5 and infos["rate"].meaning == "a fraction"
    assert infos["kind"].type_name == "'a' | 'b'" and infos["name"].type_name == "str | None"
    assert Example.rate == 0.5  # the class attribute is the one default


@pytest.mark.parametrize(
    "changes, fragment",
    [
        ({"rate": "0.5"}, "rate must be a number, got '0.5'"),
        ({"rate": True}, "rate must be a number, got True"),
        ({"count": 1.5}, "count must be an integer, got 1.5"),
        ({"flag": "yes"}, "flag must be a bool, got 'yes'"),
        ({"kind": "c"}, "kind must be one of 'a', 'b', got 'c'"),
        ({"name": 3}, "name must be a string, got 3"),
        ({"pair": (0.9,)}, r"pair must have 2 entries, got \(0.9,\)"),
        ({"many": 0.5}, "many must be a tuple, got 0.5"),
    ],
)
def test_a_value_of_the_wrong_type_is_refused_naming_it(changes, fragment):
    with pytest.raises(ValueError, match=fragment):
        Example(**changes)


def test_ints_widen_to_float_and_lists_to_tuples():
    example = Example(rate=1, pair=[1, 0])
    assert example.rate == 1.0 and isinstance(example.rate, float)
    assert example.pair == (1.0, 0.0)


@pytest.mark.parametrize(
    "name, raw, value",
    [
        ("rate", "0.25", 0.25),
        ("count", "7", 7),
        ("flag", "true", True),
        ("flag", "off", False),
        ("kind", "b", "b"),
        ("name", "none", None),
        ("name", "layer1", "layer1"),
        ("pair", "0.8,0.9", (0.8, 0.9)),
        ("many", "0.1,0.2,0.3", (0.1, 0.2, 0.3)),
    ],
)
def test_text_parses_to_the_fields_type(name, raw, value):
    assert Example.parse(name, raw) == value
    assert getattr(Example(**{name: value}), name) == value


@pytest.mark.parametrize(
    "raw, kind, fragment",
    [
        ("x", int, "expected an integer"),
        ("x", float, "expected a number"),
        ("inf", float, "must be finite"),
        ("maybe", bool, "expected true or false"),
    ],
)
def test_bad_text_names_the_option_and_the_text(raw, kind, fragment):
    with pytest.raises(ValueError, match=f"invalid opt='{raw}': {fragment}"):
        parse_typed(raw, kind, "opt")


def test_argument_errors_name_the_keyword_or_the_flag():
    error = ArgumentError("pass {seeds} {with braces}", seeds="seeds=")
    assert str(error) == "pass seeds= {with braces}"
    assert error.render({"seeds": "--seeds"}) == "pass --seeds {with braces}"


def _params():
    return [torch.nn.Parameter(torch.zeros(2))]


@pytest.mark.parametrize(
    "build, fragment",
    [
        (lambda: SoftRandomSampler(100, "0.5"), "ratio must be a number, got '0.5'"),
        (lambda: SoftRandomSampler(100, 0.5, seed="1"), "seed must be an integer, got '1'"),
        (
            lambda: GradMatchSampler(100, "0.5", batch_size=10, epochs=4),
            "ratio must be a number, got '0.5'",
        ),
        (
            lambda: GradMatchSampler(100, 0.5, batch_size=10, epochs="4"),
            "epochs must be an integer, got '4'",
        ),
        (lambda: SIFT("0.5"), "ratio must be a number, got '0.5'"),
        (lambda: SIFT(0.5, num_classes="10"), "num_classes must be an integer, got '10'"),
        (lambda: SIFT(0.5, num_classes=0), "num_classes must be >= 1, got 0"),
        (lambda: RandomKeep("0.5"), "ratio must be a number, got '0.5'"),
        (lambda: RandomKeep(0.5, seed=1.5), "seed must be an integer, got 1.5"),
        (lambda: SelectiveBackprop("3"), "beta must be a number, got '3'"),
        (lambda: SelectiveBackprop(3.0, seed=None), "seed must be an integer, got None"),
        (
            lambda: StochGradAdam(_params(), sampling_rate="0.5"),
            "sampling_rate must be a number, got '0.5'",
        ),
        (lambda: StochGradAdam(_params(), seed="x"), "seed must be an integer, got 'x'"),
    ],
)
def test_every_library_class_names_a_bad_argument_and_its_value(build, fragment):
    with pytest.raises(ValueError, match=fragment):
        build()
