"""The CLI end to end, in subprocesses, as a script would call it; bad input, which
ends before any training, in-process through ``sievetrain.cli.main``."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

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
        # The faults a new user met (issue 13):
        (["--methods", "srs:0.3,fixed:0"], "'fixed:0': ratio"),  # names the method
        (["--methods", "srs:0.3,fixed:0.0001"], "'fixed:0.0001'"),
        (["--seeds", "0,0"], "--seeds lists seed 0 more than once"),
        (["--seeds", "3,1,3"], "seed 3"),
        (["--device", "bogus"], "device='bogus': not a torch device"),
        (["--set", "device=bogus"], "device='bogus'"),
        (["--device", "meta"], "device='meta'"),
        (["--set", "milestones=0.5,x"], "milestones='x'"),
        (["--set", "milestones=1.5"], "milestones=(1.5,)"),
        (["--resume"], "--resume needs --out"),
        # Budget-matched baselines, InfoBatch and RS2 (issue 14):
        (["--methods", "full/budget=0"], "'full/budget=0': budget"),
        (["--methods", "full/budget=1.5"], "1.5"),
        (["--methods", "full/budget=-0.2"], "-0.2"),
        (["--methods", "infobatch:0"], "'infobatch:0': prune"),
        (["--methods", "infobatch:1"], "'infobatch:1': prune"),
        (["--methods", "infobatch/delta=0"], "'infobatch/delta=0': delta"),
        (["--methods", "infobatch/delta=1.2"], "1.2"),
        (["--methods", "rs2:0"], "'rs2:0': ratio"),
        (["--methods", "rs2:1.5", "--matched"], "1.5"),
        (["--methods", "infobatch", "--set", "schedule_unit=step"], "'infobatch' prunes by"),
        (["--train-size", "100000000"], "would take about"),
        (["--data-dir", "/nonexistent"], "--data-dir '/nonexistent' is for Fashion-MNIST"),
        # Data regimes (issue 26): the value, named as written, before any folder exists.
        (["--label-noise", "1"], "--label-noise"),
        (["--label-noise", "1.5"], "1.5"),
        (["--label-noise", "0.2/kind=sideways"], "sideways"),
        (["--label-noise", "0.2/flavour=x"], "flavour"),
        (["--duplicates", "100/copies=50"], "5000"),  # K·M larger than the 600 samples
        (["--duplicates", "x"], "'x'"),
        (["--long-tail", "0.5"], "0.5"),
        (["--off-target", "0.5"], "--off-target"),  # shakespeare only
        # Reference-model selection (issue 27):
        (["--methods", "rho-loss:0.3/candidates=5"], "invalid candidates=5"),
        (["--methods", "rho-loss:0"], "'rho-loss:0': invalid ratio=0.0"),
        (["--methods", "rho-loss/holdout=0.9"], "holdout=0.9"),
        (["--methods", "rho-loss/reference=triplet"], "'triplet'"),
        (["--methods", "rho-loss/ref_model=nope"], "unknown model 'nope'"),
        (["--methods", "rho-loss/ref_model=fashion-cnn"], "input_shape=(1, 40)"),
        (["--methods", "rho1"], "'rho1': rho1 selects tokens"),  # one label per sample
    ],
)
def test_bad_input_exits_2_with_one_line_naming_the_value(tmp_path, capsys, args, fragment):
    base = ["--dataset", "mnist1d", "--train-size", "600", "--test-size", "200", "--epochs", "1"]
    out = [] if "--resume" in args else ["--out", str(tmp_path / "o")]
    code, stdout, err = sievetrain_in_process(capsys, "bench", *base, *args, *out)
    assert code == 2, (stdout, err)
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
    assert not (tmp_path / "o").exists(), "a rejected bench creates no folder"


@pytest.mark.skipif(
    __import__("torch").cuda.is_available(), reason="checks the error on a machine without CUDA"
)
def test_unavailable_cuda_is_a_clear_error_before_any_folder(tmp_path, capsys):
    code, _, err = sievetrain_in_process(
        capsys, "bench", *SMALL, "--device", "cuda", "--out", str(tmp_path / "o")
    )
    assert code == 2 and err.count("\n") == 1
    assert "device='cuda': CUDA is not available" in err
    assert not (tmp_path / "o").exists()


def test_unwritable_output_dir(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    code, _, err = sievetrain_in_process(
        capsys, "bench", *SMALL, "--epochs", "1", "--out", str(blocker / "out")
    )
    assert code == 2 and "Traceback" not in err
    assert str(blocker / "out") in err and "is a file" in err
    code, _, err = sievetrain_in_process(
        capsys, "bench", *SMALL, "--epochs", "1", "--out", str(blocker)
    )
    assert code == 2 and f"--out {str(blocker)!r} is a file, not a folder" in err
    assert blocker.read_text() == "not a directory"


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


# -- The output folder: nothing of the user's is overwritten, --resume continues only
# -- the same bench, damaged files are named or moved aside (issue 13).

ONE = [*SMALL, "--methods", "full", "--seeds", "0", "--epochs", "1"]


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_folder_with_a_report_or_plots_is_refused_and_left_as_it_was(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "report.md").write_text("my own notes")
    (out / "accuracy_vs_time.png").write_bytes(b"my plot")
    before = snapshot(out)
    code, _, err = sievetrain_in_process(capsys, "bench", *ONE, "--out", str(out))
    assert code == 2 and err.count("\n") == 1
    assert "already holds a bench's output (report.md, accuracy_vs_time.png)" in err
    assert snapshot(out) == before


def test_files_of_the_users_own_survive_a_bench_in_their_folder(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    (out / ".draft.tmp").write_text("not the writer's temporary file")
    code, _, err = sievetrain_in_process(capsys, "bench", *ONE, "--out", str(out))
    assert code == 0, err
    assert (out / "notes.txt").read_text() == "keep me"
    assert (out / ".draft.tmp").exists()
    assert not (out / "checkpoints").exists(), "no empty checkpoints/ left behind"
    assert {p.name for p in out.iterdir()} == {
        "notes.txt",
        ".draft.tmp",
        "bench.json",
        "results.jsonl",
        "report.md",
        "accuracy_vs_time.png",
        "entropy_vs_epoch.png",
        "summary.json",
    }


@pytest.mark.parametrize(
    "change, named",
    [
        (["--methods", "full,srs:0.5"], 'methods: ["full"] there, ["full", "srs:0.5"] here'),
        (["--epochs", "2"], "train.epochs: 1 there, 2 here"),
        (["--batch-size", "64"], "train.batch_size: 128 there, 64 here"),
        (["--seeds", "0,1"], "seeds: [0] there, [0, 1] here"),
        (["--set", "lr=0.01"], "resolved.full.optimizer.options.lr: 0.05 there, 0.01 here"),
        (["--train-size", "500"], "train_size: 600 there, 500 here"),
    ],
)
def test_resume_of_another_bench_is_refused_naming_what_differs(tmp_path, capsys, change, named):
    out = tmp_path / "o"
    assert sievetrain_in_process(capsys, "bench", *ONE, "--out", str(out))[0] == 0
    before = snapshot(out)
    code, _, err = sievetrain_in_process(
        capsys, "bench", *ONE, *change, "--out", str(out), "--resume"
    )
    assert code == 2 and err.count("\n") == 1, err
    assert "holds another bench" in err and named in err
    assert snapshot(out) == before, "the earlier results, report and plots are untouched"


def interrupt_after_first_run(monkeypatch):
    """Ctrl-C right after the first run's record is written."""
    import sievetrain.bench.runner as runner

    real = runner.append_jsonl

    def append_then_interrupt(path, record):
        real(path, record)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "append_jsonl", append_then_interrupt)


def test_an_interrupted_bench_says_what_was_saved_and_resume_counts_on(
    tmp_path, capsys, monkeypatch
):
    out = tmp_path / "o"
    args = ["bench", *SMALL, "--methods", "full,srs:0.5", "--seeds", "0", "--epochs", "1"]
    with monkeypatch.context() as patch:
        interrupt_after_first_run(patch)
        code, _, err = sievetrain_in_process(capsys, *args, "--out", str(out))
    assert code == 130
    assert err.splitlines()[-1] == (
        f"sievetrain: interrupted; 1 finished run in {str(out / 'results.jsonl')!r}; "
        f"--resume --out {out} continues"
    )
    assert not (out / ".sievetrain.lock").exists()  # released on Ctrl-C
    args.remove("--quiet")
    code, _, err = sievetrain_in_process(capsys, *args, "--out", str(out), "--resume")
    assert code == 0, err
    lines = err.splitlines()
    assert lines[0] == f"resuming {str(out)!r}: 1 of 2 runs finished, skipped (full seed 0)"
    assert lines[-1].startswith("[2/2] srs:0.5 seed 0: test accuracy")
    assert len(records(out)) == 2


@pytest.mark.parametrize(
    "content, message",
    [
        ('{"run_key": ', "line 2 is not valid JSON"),
        ("[1, 2]", "line 2 is not a JSON object: [1, 2]"),
        ('{"method": "full"}', "record 2 lacks run_key"),
    ],
)
def test_a_damaged_results_line_is_named_by_file_and_line(tmp_path, capsys, content, message):
    out = tmp_path / "o"
    assert sievetrain_in_process(capsys, "bench", *ONE, "--out", str(out))[0] == 0
    results = out / "results.jsonl"
    results.write_text(results.read_text() + content + "\n")
    before = snapshot(out)
    code, _, err = sievetrain_in_process(capsys, "bench", *ONE, "--out", str(out), "--resume")
    assert code == 2 and err.count("\n") == 1, err
    assert str(results) in err and message in err
    assert snapshot(out) == before


def test_resume_moves_a_damaged_checkpoint_aside_and_removes_stale_temporaries(
    tmp_path, capsys, monkeypatch
):
    from sievetrain.console import BenchLog

    out = tmp_path / "o"
    args = ["bench", *SMALL, "--methods", "full,srs:0.5", "--seeds", "0", "--epochs", "2"]
    epochs = []

    def interrupt_after_the_third_epoch(self, run, seed, entry):
        real_epoch(self, run, seed, entry)
        epochs.append(entry)
        if len(epochs) == 3:  # full's two epochs, then srs:0.5's first
            raise KeyboardInterrupt

    real_epoch = BenchLog.epoch
    with monkeypatch.context() as patch:
        patch.setattr(BenchLog, "epoch", interrupt_after_the_third_epoch)
        code, _, err = sievetrain_in_process(capsys, *args, "--out", str(out))
    assert code == 130
    assert "1 finished run in" in err and "srs:0.5 seed 0 was saved after epoch 1" in err
    # What kill -9 leaves: a damaged checkpoint, 0-byte temporaries of the writer.
    (checkpoint,) = (out / "checkpoints").glob("srs*.pt")
    checkpoint.write_bytes(checkpoint.read_bytes()[:300])
    (out / ".results.jsonl.ab12cd34.tmp").write_bytes(b"")
    (out / "checkpoints" / f".{checkpoint.name}.x9y8z7w6.tmp").write_bytes(b"")
    code, _, err = sievetrain_in_process(capsys, *args, "--out", str(out), "--resume")
    assert code == 0, err
    (warning,) = [line for line in err.splitlines() if "warning" in line]
    assert warning.startswith(f"sievetrain: warning: {str(checkpoint)!r} cannot be loaded")
    assert warning.endswith("the run starts afresh")
    assert [p.name for p in out.rglob("*.tmp")] == []
    assert (out / "checkpoints" / f"{checkpoint.name}.damaged").exists()
    assert [r["method"] for r in records(out)] == ["full", "srs:0.5"]


def test_milestones_are_set_from_the_cli_one_or_several(tmp_path, capsys):
    for value, expected in (("0.5", [0.5]), ("0.5,0.75", [0.5, 0.75])):
        out = tmp_path / value
        code, _, err = sievetrain_in_process(
            capsys, "bench", *ONE, "--set", f"milestones={value}", "--out", str(out)
        )
        assert code == 0, err
        (r,) = records(out)
        assert r["config"]["train"]["milestones"] == expected


def test_benches_without_out_each_get_a_fresh_folder(tmp_path, capsys, monkeypatch):
    """``make demo`` can be run again: no --out means a new dated folder."""
    monkeypatch.chdir(tmp_path)
    for _ in range(2):
        code, stdout, err = sievetrain_in_process(capsys, "bench", *ONE)
        assert code == 0, err
    folders = sorted((tmp_path / "sievetrain-bench").iterdir())
    assert len(folders) == 2 and all((f / "results.jsonl").exists() for f in folders)
    assert "· 1 epoch\n" in (folders[0] / "report.md").read_text().splitlines()[0] + "\n"


def test_help_shows_the_defaults_and_version_prints(capsys):
    code, stdout, _ = sievetrain_in_process(capsys, "bench", "--help")
    assert code == 0
    text = " ".join(stdout.split())
    assert "(default: a new sievetrain-bench/DATE-TIME)" in text
    assert "(default: 0,1,2)" in text and "(default: 128)" in text
    from sievetrain import __version__

    assert sievetrain_in_process(capsys, "--version")[:2] == (0, f"sievetrain {__version__}\n")


@pytest.mark.parametrize("where", ["load_dataset", "prepare", "check_output"])
def test_ctrl_c_before_training_exits_130_with_one_line(tmp_path, capsys, monkeypatch, where):
    import sievetrain.bench
    import sievetrain.data

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    module = {
        "load_dataset": sievetrain.data,
        "prepare": sievetrain.bench,
        "check_output": sievetrain.bench,
    }[where]
    monkeypatch.setattr(module, where, interrupt)
    code, _, err = sievetrain_in_process(capsys, "bench", *ONE, "--out", str(tmp_path / "o"))
    assert code == 130
    assert err == "sievetrain: interrupted; nothing was written\n"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0])
def test_ctrl_c_at_any_moment_exits_130_without_a_traceback(tmp_path, delay):
    """A real SIGINT, during imports, data loading, validation or training (50 epochs:
    long enough that the bench is still running at the last delay)."""
    args = [*SMALL, "--methods", "full", "--seeds", "0", "--epochs", "50"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "sievetrain", "bench", *args, "--out", str(tmp_path / "o")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(delay)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=60)
    if proc.returncode == 0:
        pytest.skip(f"the bench finished within {delay} s")  # nothing was interrupted
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1 and "sievetrain: interrupted; " in stderr


def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path):
    out = tmp_path / "o"
    args = [a for a in SMALL if a != "--quiet"]
    proc = sievetrain(
        "bench", *args, "--methods", "full,srs:0.5", "--seeds", "0", "--epochs", "2",
        "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.splitlines()
    epochs = [line.partition(": ")[0] for line in lines if " · epoch " in line]
    assert epochs == [
        "full seed 0 · epoch 1",
        "full seed 0 · epoch 2",
        "srs:0.5 seed 0 · epoch 1",
        "srs:0.5 seed 0 · epoch 2",
    ]
    assert all("test accuracy" in line and " s, " in line for line in lines if "epoch" in line)


def test_a_damaged_or_missing_manifest_stops_resume_naming_it(tmp_path, capsys):
    out = tmp_path / "o"
    assert sievetrain_in_process(capsys, "bench", *ONE, "--out", str(out))[0] == 0
    (out / "bench.json").write_text('{"dataset": "mnist1d", ')
    code, _, err = sievetrain_in_process(capsys, "bench", *ONE, "--out", str(out), "--resume")
    assert code == 2 and err.count("\n") == 1
    assert f"{str(out / 'bench.json')!r} is damaged" in err
    (out / "bench.json").unlink()
    code, _, err = sievetrain_in_process(capsys, "bench", *ONE, "--out", str(out), "--resume")
    assert code == 2 and "but no bench.json" in err and "results.jsonl" in err


# -- An output folder that cannot be made, or that another process writes to (issue 25).


def test_an_output_folder_that_cannot_be_made_exits_2_with_one_line_before_training():
    out = "/proc/forbidden/out"  # /proc takes no new folder, even from root
    proc = sievetrain("bench", *ONE, "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr == (
        f"sievetrain: error: --out {out!r} cannot be created: "
        "No such file or directory: '/proc/forbidden'\n"
    )
    assert proc.stdout == "" and not os.path.exists(out)


HOLD = """
import fcntl, json, os, socket, sys
os.makedirs(sys.argv[1], exist_ok=True)
fd = os.open(os.path.join(sys.argv[1], ".sievetrain.lock"), os.O_RDWR | os.O_CREAT, 0o644)
fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a running bench holds
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
print("held", flush=True)
sys.stdin.read()  # until the test closes it; then exit without removing the file
"""


def hold_lock(folder):
    """A process holding ``folder``'s lock, as a running bench does, until its stdin is
    closed; it then exits, leaving the lock file (stale) behind, as ``kill -9`` would."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "held\n"
    return holder


def test_a_folder_another_process_writes_to_is_refused_and_a_stale_lock_taken_over(
    tmp_path, capsys
):
    import socket

    out = tmp_path / "o"
    holder = hold_lock(out)
    try:
        before = snapshot(out)
        assert json.loads(before[Path(".sievetrain.lock")]) == {
            "pid": holder.pid,
            "host": socket.gethostname(),
        }
        train = [a for a in ONE if a not in ("--methods", "full", "--seeds", "0")]
        for args in (["bench", *ONE], ["train", *train]):  # train writes through the same code
            code, _, err = sievetrain_in_process(capsys, *args, "--out", str(out))
            assert code == 2 and err.count("\n") == 1, err
            assert err.startswith(
                f"sievetrain: error: --out {str(out)!r} is in use by process {holder.pid} on "
            )
            assert snapshot(out) == before
        refused = sievetrain("bench", *ONE, "--out", str(out))  # as a second shell would
        assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
        assert f"is in use by process {holder.pid} on " in refused.stderr
        assert snapshot(out) == before
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    # The holder ended without releasing: its lock file names a process that is gone.
    assert (out / ".sievetrain.lock").exists()
    ran = sievetrain("bench", *ONE, "--out", str(out))
    assert ran.returncode == 0, ran.stderr
    assert ran.stderr == (
        f"sievetrain: warning: {str(out / '.sievetrain.lock')!r} was left by process "
        f"{holder.pid} on {socket.gethostname()}, which has ended: taking the folder over\n"
    )
    assert len(records(out)) == 1 and not (out / ".sievetrain.lock").exists()


def test_a_noisy_bench_records_its_regime_and_audits_what_each_method_trains(tmp_path):
    """--label-noise: the regime is in bench.json, the records and the run keys; the
    report's audit shows Selective Backprop's share of noisy labels next to full data's."""
    out = tmp_path / "noisy"
    args = [*SMALL, "--epochs", "2", "--seeds", "0", "--out", str(out)]
    proc = sievetrain(
        "bench", *args, "--methods", "full,selective-backprop", "--label-noise", "0.4"
    )
    assert proc.returncode == 0, proc.stderr
    rows = records(out)
    regime = {"data_seed": 0, "label_noise": {"rate": 0.4, "kind": "symmetric"}}
    assert json.loads((out / "bench.json").read_text())["regimes"] == regime
    assert all(r["regimes"] == regime for r in rows)
    full, selective = rows
    noisy = full["selection_audit"]["flags"]["noisy"]
    assert noisy["ratio"] == pytest.approx(1.0) and 0.3 < noisy["data_share"] < 0.5
    assert full["balanced_test_accuracy"] is not None
    report = (out / "report.md").read_text()
    assert "## Selection audit" in report and "`selective-backprop` trains noisy samples" in report
    clean = sievetrain(
        "bench",
        *SMALL,
        "--epochs",
        "2",
        "--seeds",
        "0",
        "--methods",
        "full",
        "--out",
        str(tmp_path / "clean"),
    )
    assert clean.returncode == 0, clean.stderr
    assert records(tmp_path / "clean")[0]["run_key"] != full["run_key"]  # another computation


def test_a_rho_loss_bench_charges_its_reference_model_everywhere(tmp_path):
    """rho-loss under --matched: the reference's training is in the backward passes
    and so in F, its time in the ``reference`` phase, its scoring in ``samples_scored``,
    and the report has a section that says what it cost."""
    out = tmp_path / "rho"
    args = [*SMALL, "--epochs", "2", "--seeds", "0", "--matched", "--out", str(out)]
    proc = sievetrain("bench", *args, "--methods", "rho-loss:0.5/ref_epochs=2")
    assert proc.returncode == 0, proc.stderr
    rho, baseline = records(out)
    stats = rho["selector"]
    assert stats["samples_held_out"] == 60  # 10 % of 600, never trained on
    assert stats["samples_reference_backpropagated"] > 0
    assert rho["samples_scored"] == stats["samples_scored"] >= 540  # each trained sample once
    assert rho["cpu_breakdown_s"]["reference"] > 0
    assert rho["samples_backpropagated"] > stats["samples_reference_backpropagated"]
    fraction = rho["samples_backpropagated"] / (2 * 600)
    assert rho["matched"]["budget"] == pytest.approx(fraction, abs=1e-3)
    assert baseline["method"] == rho["matched"]["baseline"] == f"full/budget={fraction:.3g}"
    assert baseline["samples_backpropagated"] == pytest.approx(fraction * 1200, abs=2)
    report = (out / "report.md").read_text()
    assert "## Reference model" in report
    assert (
        f"| rho-loss:0.5/ref_epochs=2 | {stats['samples_reference_backpropagated']:,} |" in report
    )
