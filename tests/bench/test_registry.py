import pytest
import torch

from sievetrain.bench import REGISTRY, parse_run, prepare
from sievetrain.bench.registry import LEVELS


def test_defaults_fill_the_levels_left_out():
    run = parse_run("srs:0.1")
    assert run.sampler.method.name == "srs" and run.sampler.value == 0.1
    assert run.selector is None
    assert run.optimizer.method.name == "sgd"
    assert parse_run("srs").sampler.value == REGISTRY["srs"].default


def test_options_and_composition():
    run = parse_run("srs:0.2/interval=10/replacement=true+adam/lr=0.003")
    assert run.sampler.options["interval"] == 10
    assert run.sampler.options["replacement"] is True
    assert run.optimizer.method.name == "adam"
    assert run.optimizer.options["lr"] == 0.003
    assert run.label == "srs:0.2/interval=10/replacement=true+adam/lr=0.003"
    # One method per level: an epoch-level subset, SIFT within each batch, Adam.
    run = parse_run("srs:0.3+sift:0.25/stage=stage1/warmup=100+adam")
    assert (run.sampler.value, run.selector.value, run.optimizer.method.name) == (0.3, 0.25, "adam")
    assert run.selector.options["stage"] == "stage1" and run.selector.options["warmup"] == 100
    selector = run.selector.build(seed=0, num_classes=10)
    assert (selector.ratio, selector.stage, selector.warmup_steps) == (0.25, "stage1", 100)


def test_set_overrides_apply_to_every_component_that_has_the_option():
    run = parse_run("srs:0.3+adam", {"lr": "0.01", "interval": "5"})
    assert run.optimizer.options["lr"] == 0.01
    assert run.sampler.options["interval"] == 5
    assert parse_run("full", {"lr": "0.2"}).optimizer.options["lr"] == 0.2


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
    built = component.build(
        n=len(mnist1d.train),
        seed=0,
        batch_size=64,
        epochs=3,
        num_classes=10,
        params=[torch.nn.Parameter(torch.zeros(3))],
    )
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
