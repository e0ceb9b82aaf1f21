import pytest
import torch

from sievetrain.bench import REGISTRY, parse_run, prepare
from sievetrain.bench.cards import format_value
from sievetrain.bench.registry import LEVELS, Component
from sievetrain.options import RunContext
from sievetrain.sampling import SRSOptions
from sievetrain.selection import SIFTOptions


def context(n=100, **changes):
    fields = dict(n=n, batch_size=64, epochs=3, num_classes=10, seed=0)
    return RunContext(**(fields | changes))


def test_defaults_fill_the_levels_left_out():
    run = parse_run("srs:0.1")
    assert run.sampler.method.name == "srs" and run.sampler.value == 0.1
    assert run.selector is None
    assert run.optimizer.method.name == "sgd"
    assert parse_run("srs").sampler.value == SRSOptions.ratio


def test_options_and_composition():
    run = parse_run("srs:0.2/interval=10/within_epoch_replacement=true+adam/lr=0.003")
    assert run.sampler.options.interval == 10
    assert run.sampler.options.within_epoch_replacement is True
    assert run.optimizer.method.name == "adam"
    assert run.optimizer.options.lr == 0.003
    assert run.label == "srs:0.2/interval=10/within_epoch_replacement=true+adam/lr=0.003"
    # One method per level: an epoch-level subset, SIFT within each batch, Adam.
    run = parse_run("srs:0.3+sift:0.25/stage=stage1/warmup_steps=100+adam")
    assert (run.sampler.value, run.selector.value, run.optimizer.method.name) == (0.3, 0.25, "adam")
    assert run.selector.options.stage == "stage1" and run.selector.options.warmup_steps == 100
    selector = run.selector.build(context())
    options = selector.options
    assert (options.ratio, options.stage, options.warmup_steps) == (0.25, "stage1", 100)


def test_set_overrides_apply_to_every_component_that_has_the_option():
    run = parse_run("srs:0.3+adam", {"lr": "0.01", "interval": "5"})
    assert run.optimizer.options.lr == 0.01
    assert run.sampler.options.interval == 5
    assert parse_run("full", {"lr": "0.2"}).optimizer.options.lr == 0.2


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("bogus:0.1", "'bogus'"),
        ("srs:abc", "'abc'"),
        ("srs:0.1/lr=0.1", "'lr'"),
        ("srs:0.1/interval=two", "'two'"),
        ("srs:0.1/interval", "'interval'"),
        ("full:0.5", "'0.5'"),
        ("srs:0.1+fixed:0.2", "two sampler-level"),
        ("sgd+adam", "two optimizer-level"),
        ("", "empty"),
        ("srs:inf", "'inf'"),
    ],
)
def test_bad_method_text_names_the_value(text, fragment):
    with pytest.raises(ValueError, match=fragment):
        parse_run(text)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_registered_method_builds(name, mnist1d):
    """Adding a method to the registry tests it here automatically."""
    method = REGISTRY[name]
    assert method.level in LEVELS
    run = parse_run(name)
    component = {"sampler": run.sampler, "selector": run.selector, "optimizer": run.optimizer}[
        method.level
    ]
    built = component.build(context(len(mnist1d.train), model=torch.nn.Linear(3, 2)))
    assert hasattr(built, "state_dict") and hasattr(built, "load_state_dict")


@pytest.mark.parametrize(
    "methods, seeds, sets, fragment",
    [
        (["srs:0"], [0], {}, "0"),
        (["srs:1.5"], [0], {}, "1.5"),
        (["srs:nan"], [0], {}, "nan"),
        (["srs:0.0001"], [0], {}, "empty"),
        (["full"], [], {}, "no seeds"),
        (["full"], [0], {"lr": "-1"}, "-1"),
        (["full"], [0], {"epochs": "0"}, "epochs=0"),
        (["full"], [0], {"warp": "9"}, "'warp'"),
        (["full", "full"], [0], {}, "twice"),
        (["sift:0.5/stage=nope"], [0], {}, "'nope'"),
        (["sift:0.5/stage=stem/head=reuse"], [0], {}, "use head='linear'"),
        (["selective-backprop:0"], [0], {}, "beta=0.0"),
        (["gradmatch:0.3/kappa=1"], [0], {}, "kappa must be in"),
        (["gradmatch:0.3/lam=-1"], [0], {}, "lam=-1.0"),
        (["gradmatch:0.3/interval=-2"], [0], {}, "interval must be >= 0, got -2"),
    ],
)
def test_prepare_rejects_bad_input_before_training(mnist1d, methods, seeds, sets, fragment):
    with pytest.raises(ValueError, match=fragment):
        prepare(mnist1d, methods, seeds, sets=sets)


def test_prepare_rejects_unknown_model(mnist1d):
    with pytest.raises(ValueError, match="'resnet9000'"):
        prepare(mnist1d, ["full"], [0], model="resnet9000")


def test_knob_overrides_and_default_optimizer():
    run = parse_run("stochgradadam:0.5")
    assert run.optimizer.method.name == "stochgradadam" and run.optimizer.value == 0.5
    # --set reaches a method's knob as well as its options
    run = parse_run("srs:0.3+stochgradadam", {"sampling_rate": "0.25", "ratio": "0.2"})
    assert run.optimizer.value == 0.25 and run.sampler.value == 0.2
    # a default optimizer for runs that name none, and the label says so
    run = parse_run("srs:0.3", defaults={"optimizer": "rmsprop"})
    assert run.optimizer.method.name == "rmsprop" and run.label == "srs:0.3+rmsprop"
    assert parse_run("srs:0.3+adam", defaults={"optimizer": "rmsprop"}).optimizer.method.name == (
        "adam"
    )
    with pytest.raises(
        ValueError, match="'srs' is a sampler-level method, expected one of level 'optimizer'"
    ):
        parse_run("full", defaults={"optimizer": "srs"})


def test_an_ambiguous_set_is_refused_naming_the_components_and_the_unambiguous_form():
    with pytest.raises(ValueError, match="srs and sift both have an option 'ratio'") as info:
        parse_run("srs:0.1+sift", {"ratio": "0.3"})
    assert "sift/ratio=0.3" in str(info.value) and "srs/ratio=0.3" in str(info.value)
    run = parse_run("srs:0.1+sift", {"sift/ratio": "0.3"})
    assert (run.sampler.value, run.selector.value) == (0.1, 0.3)
    run = parse_run("srs:0.1+sift", {"srs/ratio": "0.3"})
    assert (run.sampler.value, run.selector.value) == (0.3, SIFTOptions.ratio)


def test_a_set_that_matches_nothing_is_refused(mnist1d):
    with pytest.raises(ValueError, match="no run has an option 'sift/ratio'"):
        prepare(mnist1d, ["srs:0.1"], [0], sets={"sift/ratio": "0.3"})
    # a key some run has applies to that run only
    bench = prepare(mnist1d, ["full", "srs:0.1"], [0], sets={"interval": "3"})
    assert bench.runs[1].sampler.options.interval == 3


def test_values_are_typed_from_the_options_dataclass(mnist1d):
    run = parse_run("adam/betas=0.8,0.99+srs:0.5/granularity=batch", {"eps": "1e-7"})
    assert run.optimizer.options.betas == (0.8, 0.99)
    assert run.optimizer.options.eps == 1e-7 and run.sampler.options.granularity == "batch"
    with pytest.raises(ValueError, match="'rows'"):
        parse_run("srs/granularity=rows")
    with pytest.raises(ValueError, match="betas"):
        parse_run("adam/betas=0.9,1.5")
    bench = prepare(mnist1d, ["full"], [0], sets={"milestones": "0.3,0.6", "schedule": "cosine"})
    assert bench.config.milestones == (0.3, 0.6) and bench.config.schedule == "cosine"


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_every_option_has_a_meaning_and_its_default_round_trips_through_text(name):
    method = REGISTRY[name]
    method.defaults()  # the defaults, with any pinned values, pass their own validation
    for info in method.options.describe():
        assert info.meaning, f"{name}: option {info.name} has no meaning"
        assert method.options.parse(info.name, format_value(info.default)) == info.default


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_the_library_class_takes_the_options_by_the_same_names(name, mnist1d):
    """What the CLI parsed is what the built object runs with, name for name."""
    method = REGISTRY[name]
    defaults = method.defaults()
    built = Component(method, defaults).build(
        context(len(mnist1d.train), model=torch.nn.Linear(3, 2))
    )
    if method.level == "optimizer":
        got = {k: built.param_groups[0][k] for k in defaults.names()}
    elif name == "full":  # full data on a budget F is RS2 at ratio F
        got = {"budget": built.ratio}
    else:
        got = built.options.to_dict()
    assert got == defaults.to_dict()


def test_sets_may_be_typed_values_as_well_as_text(mnist1d):
    bench = prepare(mnist1d, ["srs:0.1+adam"], [0], sets={"lr": 0.01, "epochs": 3})
    assert bench.runs[0].optimizer.options.lr == 0.01 and bench.config.epochs == 3
    with pytest.raises(ValueError, match="lr must be a number, got 'x'|expected a number"):
        prepare(mnist1d, ["full"], [0], sets={"lr": "x"})
