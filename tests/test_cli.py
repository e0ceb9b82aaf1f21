"""The CLI end to end, in subprocesses, as a script would call it; bad input, which
ends before any training, in-process through ``sievetrain.cli.main``."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

SMALL = ["--dataset", "mnist1d", "--train-size", "600", "--test-size", "200", "--quiet"]
REQUIRED = {
    "method",
    "seed",
    "dataset",
    "epochs",
    "final_test_accuracy",
    "train_time_s",
    "eval_time_s",
    "samples_forwarded",
    "samples_backpropagated",
    "optimizer_steps",
    "coverage",
    "history",
}


def sievetrain(*args, timeout=240, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "sievetrain", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        **kwargs,
    )


def sievetrain_in_process(capsys, *args):
    """``sievetrain ARGS`` run by ``main`` in this process: (exit code, stdout, stderr)."""
    from sievetrain.cli import main

    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's errors exit with 2
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


def records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_bench_end_to_end(tmp_path):
    out = tmp_path / "bench"
    proc = sievetrain(
        "bench",
        *SMALL,
        "--methods",
        "full,srs:0.5/interval=2,fixed:0.5,gradmatch:0.5/kappa=0",
        "--seeds",
        "0,1",
        "--epochs",
        "2",
        "--out",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    rows = records(out)
    assert [(r["method"], r["seed"]) for r in rows] == [
        ("full", 0),
        ("srs:0.5/interval=2", 0),
        ("fixed:0.5", 0),
        ("gradmatch:0.5/kappa=0", 0),
        ("full", 1),
        ("srs:0.5/interval=2", 1),
        ("fixed:0.5", 1),
        ("gradmatch:0.5/kappa=0", 1),
    ]  # interleaved: every method of a seed before the next seed
    for r in rows:
        assert REQUIRED <= set(r)
        assert 0 <= r["final_test_accuracy"] <= 1
        assert len(r["history"]) == 2
        assert all({"epoch", "test_accuracy", "train_time_s"} <= set(h) for h in r["history"])
        assert r["environment"]["torch"] and r["config"]["train"]["epochs"] == 2
    full, srs = rows[0], rows[1]
    assert full["samples_backpropagated"] == 2 * 600
    assert srs["samples_backpropagated"] == 2 * 300
    assert "| full |" in proc.stdout and "| fixed:0.5 |" in proc.stdout
    gradmatch = rows[3]  # 600 // 128 = 4 full batches, 2 chosen, selected each epoch
    assert gradmatch["samples_backpropagated"] == 2 * 2 * 128
    assert [s["epoch"] for s in gradmatch["sampler"]["per_selection"]] == [0, 1]
    assert "seconds per selection" in proc.stdout
    report = (out / "report.md").read_text()
    assert "speed-up" in report and "srs:0.5/interval=2" in report
    assert (out / "accuracy_vs_time.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "entropy_vs_epoch.png").read_bytes()[:4] == b"\x89PNG"
    assert "Normalized prediction entropy by epoch" in report
    assert all(0 <= h["test_entropy"] <= 1 for r in rows for h in r["history"])


def test_optimizer_flags(tmp_path):
    flags = "--optimizer stochgradadam --sampling-rate 0.5 --lr 0.002 --epochs 1".split()
    proc = sievetrain("train", *SMALL, *flags, "--out", str(tmp_path / "t"))
    assert proc.returncode == 0, proc.stderr
    (r,) = records(tmp_path / "t")
    assert r["method"] == "full+stochgradadam"
    optimizer = r["config"]["methods"]["optimizer"]
    assert optimizer["method"] == "stochgradadam" and optimizer["value"] == 0.5
    assert optimizer["options"]["lr"] == 0.002


def test_train_single_run_and_methods_listing(tmp_path):
    proc = sievetrain(
        "train",
        *SMALL,
        "--method",
        "srs:0.5+adam/lr=0.002",
        "--epochs",
        "1",
        "--out",
        str(tmp_path / "t"),
    )
    assert proc.returncode == 0, proc.stderr
    (r,) = records(tmp_path / "t")
    assert r["config"]["methods"]["optimizer"]["options"]["lr"] == 0.002
    listing = sievetrain("methods")
    assert listing.returncode == 0
    for name in ("full", "srs", "fixed", "sgd", "adam", "rmsprop", "stochgradadam"):
        assert f"| {name} |" in listing.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["--methods", "srs:0"], "0"),
        (["--methods", "srs:-0.2"], "-0.2"),
        (["--methods", "srs:1.5"], "1.5"),
        (["--methods", "srs:nan"], "nan"),
        (["--methods", "srs:0.0001"], "empty"),
        (["--train-size", "0"], "0"),
        (["--dataset", "cifar-1000"], "cifar-1000"),
        (["--model", "resnet9000"], "resnet9000"),
        (["--methods", "warp-drive:0.5"], "warp-drive"),
        (
            ["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fmnist"],
            "/nonexistent/fmnist",
        ),
        (["--seeds", ""], "seeds"),
        (["--seeds", "0,x"], "'x'"),
        (["--set", "lr"], "'lr'"),
        (["--optimizer", "stochgradadam", "--sampling-rate", "1.5"], "sampling_rate=1.5"),
        (["--methods", "stochgradadam:0"], "sampling_rate=0.0"),
        (["--methods", "stochgradadam/mask=rows"], "'rows'"),
        (["--optimizer", "lion"], "'lion'"),
        (["--methods", "adam", "--sampling-rate", "0.5"], "'sampling_rate'"),
        (["--methods", "gradmatch:0.3/kappa=1"], "kappa must be in [0, 1), got 1.0"),
        (["--methods", "srs:0.1+sift", "--set", "ratio=0.3"], "--set ratio=0.3 is ambiguous"),
        (["--methods", "srs:0.1+sift", "--set", "ratio=0.3"], "write srs/ratio=0.3 or sift/ratio"),
        (["--methods", "srs:0.1", "--set", "sift/ratio=0.3"], "--set sift/ratio: no run has"),
        (["--methods", "adam/betas=0.9,1.5"], "betas=(0.9, 1.5)"),
        (["--seeds", "", "--methods", "full"], "--seeds"),
        (
            ["--dataset", "fashion-mnist", "--data-dir", "/nonexistent/fmnist"],
            "--data-dir '/nonexistent/fmnist' does not hold",
        ),
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_value(tmp_path, capsys, args, fragment):
    base = ["--dataset", "mnist1d", "--train-size", "600", "--test-size", "200", "--epochs", "1"]
    code, out, err = sievetrain_in_process(
        capsys, "bench", *base, *args, "--out", str(tmp_path / "o")
    )
    assert code == 2, (out, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "o" / "results.jsonl").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = sievetrain_in_process(
        capsys, "bench", *SMALL, "--epochs", "1", "--out", str(blocker / "out")
    )
    assert code == 2 and "Traceback" not in err
    assert str(blocker / "out") in err


class Payload:
    """Unpickling this creates ``path``: what a malicious checkpoint would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["code", "truncated"])
def test_resume_refuses_an_unsafe_checkpoint_naming_it_and_keeps_results(tmp_path, capsys, kind):
    import torch

    out = tmp_path / "o"
    (out / "checkpoints").mkdir(parents=True)
    results = out / "results.jsonl"
    results.write_text('{"run_key": "finished", "method": "full", "seed": 9}\n')
    before = results.read_bytes()
    marker, checkpoint = tmp_path / "pwned", out / "checkpoints" / "full-seed0-abc.pt"
    if kind == "code":
        torch.save({"run_key": "x", "trainer": Payload(marker)}, checkpoint)
    else:
        torch.save({"run_key": "x", "trainer": {"w": torch.zeros(1000)}}, checkpoint)
        checkpoint.write_bytes(checkpoint.read_bytes()[:500])
    code, out_text, err = sievetrain_in_process(
        capsys, "bench", *SMALL, "--methods", "full", "--seeds", "0", "--epochs", "1",
        "--out", str(out), "--resume",
    )  # fmt: skip
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(checkpoint) in lines[0], err
    assert not marker.exists()
    assert results.read_bytes() == before


def test_existing_results_need_resume(tmp_path):
    out = tmp_path / "o"
    args = ["bench", *SMALL, "--methods", "full", "--seeds", "0", "--epochs", "1"]
    args += ["--out", str(out)]
    assert sievetrain(*args).returncode == 0
    again = sievetrain(*args)
    assert again.returncode == 2 and "--resume" in again.stderr
    assert len(records(out)) == 1


def test_killed_bench_keeps_finished_runs_and_resume_completes_it(tmp_path):
    args = [*SMALL, "--methods", "full,srs:0.5", "--seeds", "0,1", "--epochs", "4"]
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sievetrain", "bench", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    results = out / "results.jsonl"
    deadline = time.time() + 180
    # Wait until one run has finished and the next has checkpointed an epoch.
    while time.time() < deadline and not (
        results.exists() and list((out / "checkpoints").glob("*.pt"))
    ):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # a hard crash, not a polite interrupt
    proc.wait()
    finished = records(out)
    assert 1 <= len(finished) < 4
    assert list((out / "checkpoints").glob("*.pt")), "the run in progress left a checkpoint"

    resumed = sievetrain("bench", *args, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    after = records(out)
    assert len(after) == 4 and after[: len(finished)] == finished
    assert not list((out / "checkpoints").glob("*.pt"))

    clean = tmp_path / "clean"
    assert sievetrain("bench", *args, "--out", str(clean)).returncode == 0
    # Resuming mid-run continues the same computation: identical accuracies.
    key = lambda r: (r["method"], r["seed"])  # noqa: E731
    accs = {key(r): [h["test_accuracy"] for h in r["history"]] for r in records(clean)}
    assert {key(r): [h["test_accuracy"] for h in r["history"]] for r in after} == accs
