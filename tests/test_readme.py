"""The README's Python blocks are a contract: each runs as printed, in order and in
one namespace (a block continues the ones before it), and does what its prose says."""

import math
import os
import re
import subprocess
import sys
from pathlib import Path

from sievetrain.optim import StochGradAdam

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks() -> list[tuple[int, str]]:
    """Every ```python block of the README, with the line number it starts after."""
    text = README.read_text()
    return [
        (text.count("\n", 0, match.start(1)), match.group(1))
        for match in re.finditer(r"```python\n(.*?)```", text, flags=re.S)
    ]


def check_sampler_loop(namespace, out):
    assert "distinct samples seen" in out
    # 20 epochs of a fresh 30 % subset cover nearly everything (1 - 0.7**20 > 99.9 %).
    assert namespace["coverage"].fraction > 0.99


def check_trainer(namespace, out):
    summary = namespace["summary"]
    assert summary.final_test_accuracy > 0.5  # ten classes: chance is 0.1
    assert summary.optimizer_steps == 20 * -(-round(0.3 * 4000) // 128)


def check_stochgradadam(namespace, out):
    optimizer = namespace["optimizer"]
    assert isinstance(optimizer, StochGradAdam)
    # One step per batch of the epoch, on every parameter, with masks drawn.
    assert {int(s["step"]) for s in optimizer.state.values()} == {len(namespace["loader"])}
    assert len(optimizer.state) == len(list(namespace["model"].parameters()))
    assert "cpu" in optimizer.state_dict()["generators"]


def check_sift(namespace, out):
    sieve, sampler = namespace["sieve"], namespace["sampler"]
    batches = [min(128, len(sampler) - start) for start in range(0, len(sampler), 128)]
    kept = sum(math.ceil(0.5 * b) for b in batches)  # of each batch, one epoch
    assert sieve.samples_backpropagated == 2 * kept == 1200
    assert out.strip().endswith("1200")
    assert sieve.selector.stats()["samples_forwarded_partially"] == 2 * len(sampler)
    assert sieve.selector.exit is None  # the hook is off the model again


def check_gradmatch(namespace, out):
    # κ = 0.5 of 4 epochs at r = 0.1: round(0.5 * 4 * 0.1) = 0 full-data epochs, epochs
    # 0 and 1 skipped (empty), then floor(0.1 * 31 + 1/2) = 3 of the 31 full batches.
    assert namespace["trained"] == [0, 0, 3 * 128, 3 * 128]
    assert "[0, 0, 384, 384]" in out
    assert [s["epoch"] for s in namespace["sampler"].selections] == [2, 3]


def check_infobatch(namespace, out):
    sampler, n = namespace["sampler"], len(namespace["data"].train)
    pruned = sampler.stats()["pruned_per_epoch"]
    assert pruned[0] == 0 and out.strip().endswith("0")  # equal scores prune nothing
    assert 0 < pruned[1] < n and 0 < pruned[2] < n  # the losses fed back made the difference
    # The scores are the losses of the samples' latest training pass, not the initial 1s.
    assert not bool((sampler.scores == 1).any())


def check_regimes(namespace, out):
    noisy = namespace["noisy"]
    share = noisy.flags["noisy"].float().mean().item()
    assert abs(share - 0.3) < 5 * (0.3 * 0.7 / 1000) ** 0.5  # binomial, 5 sigma
    assert f"{share:.2f} of the training labels are wrong" in out
    records = namespace["records"]
    methods = [r for r in records if "equal_accuracy" in r]
    assert sorted({r["method"] for r in methods}) == ["random-keep", "selective-backprop"]
    assert len(methods) == 4 and out.count(" noisy x") == 4
    for record in methods:
        audit = record["selection_audit"]
        assert sum(audit["per_epoch_backpropagated"]) == record["samples_backpropagated"]
    assert "## Selection audit" in (namespace["out"] / "report.md").read_text()


def check_ddp_loop(namespace, out):
    # One process: the whole 30 % subset of the 4,000 training samples, every epoch.
    assert "rank 0 of 1: 1200 samples an epoch, in sync: True" in out


CHECKS = [
    check_sampler_loop,
    check_trainer,
    check_stochgradadam,
    check_sift,
    check_gradmatch,
    check_infobatch,
    check_regimes,
    check_ddp_loop,
]


def test_every_python_block_runs_in_order_and_does_what_it_says(capsys):
    blocks = python_blocks()
    assert len(blocks) == len(CHECKS), "one check per ```python block of the README"
    namespace: dict = {}
    for (line, block), check in zip(blocks, CHECKS, strict=True):
        # Blank lines first, so that a traceback names the README's own line.
        exec(compile("\n" * line + block, str(README), "exec"), namespace)
        check(namespace, capsys.readouterr().out)


def test_the_data_parallel_loop_runs_under_torchrun(tmp_path):
    """The README's last block, as a script under torchrun on 2 gloo ranks: each rank
    trains half of each epoch's subset, and the replicas end bitwise equal."""
    script = tmp_path / "ddp_loop.py"
    script.write_text(python_blocks()[-1][1])
    ran = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    for rank in (0, 1):
        assert f"rank {rank} of 2: 600 samples an epoch, in sync: True" in ran.stdout


def excerpt_blocks() -> list[tuple[str, list[str]]]:
    """Every ```py block of the README: an excerpt of a script, named by its first line
    (``# examples/NAME.py``), with its other lines."""
    text = README.read_text()
    blocks = [m.group(1).splitlines() for m in re.finditer(r"```py\n(.*?)```", text, flags=re.S)]
    return [(lines[0].removeprefix("# ").split()[0], lines[1:]) for lines in blocks]


def test_the_framework_excerpts_are_the_tested_example_scripts_lines():
    """The framework recipes in the README are lines of the example scripts (which the
    integration tests run), in the scripts' order; a line ``...`` skips lines."""
    blocks = excerpt_blocks()
    assert {path for path, _ in blocks} >= {
        "examples/lightning_fashion_mnist.py",
        "examples/hf_shakespeare_mlm.py",
        "examples/accelerate_mnist1d.py",
    }
    for path, lines in blocks:
        script = iter((README.parent / path).read_text().splitlines())
        for line in lines:
            if line.strip() in ("", "..."):
                continue
            assert any(s == line for s in script), f"{path} has no line {line!r} here"
