"""The CLI and the Trainer under ``torchrun`` (two gloo processes on the CPU)."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

BENCH = [
    "bench",
    "--dataset",
    "mnist1d",
    "--train-size",
    "600",
    "--test-size",
    "200",
    "--epochs",
    "2",
    "--batch-size",
    "64",
    "--methods",
    "full,srs:0.5",
    "--seeds",
    "0",
]


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1"}


TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _torchrun(*args, timeout=180):
    return subprocess.run(
        [*TORCHRUN, *args], capture_output=True, text=True, timeout=timeout, env=_env()
    )


def _records(folder):
    lines = (folder / "results.jsonl").read_text().splitlines()
    return {r["method"]: r for r in map(json.loads, lines)}


def test_bench_under_torchrun_writes_one_record_per_run_with_global_counts(tmp_path):
    two, one = tmp_path / "two", tmp_path / "one"
    bench = [*BENCH, "--label-noise", "0.3"]  # and the selection audit over ranks
    ran = _torchrun("-m", "sievetrain", *bench, "--out", str(two))
    assert ran.returncode == 0, ran.stderr[-3000:]
    assert ran.stdout.count("results:") == 1  # rank 0 alone prints
    single = subprocess.run(
        [sys.executable, "-m", "sievetrain", *bench, "--out", str(one), "--quiet"],
        capture_output=True,
        text=True,
        env=_env(),
    )
    assert single.returncode == 0, single.stderr[-3000:]
    records, expected = _records(two), _records(one)
    assert len((two / "results.jsonl").read_text().splitlines()) == 2  # one per (method, seed)
    assert sorted(records) == sorted(expected) == ["full", "srs:0.5"]
    for method, record in records.items():
        assert record["world_size"] == 2 and expected[method]["world_size"] == 1
        for key in ("samples_backpropagated", "samples_forwarded", "optimizer_steps", "coverage"):
            assert record[key] == expected[method][key], (method, key)
        # The ranks' counts summed each epoch: the same samples as one process trains.
        audit, alone = record["selection_audit"], expected[method]["selection_audit"]
        assert audit["per_epoch_backpropagated"] == alone["per_epoch_backpropagated"]
        assert audit["flags"]["noisy"]["count"] == alone["flags"]["noisy"]["count"] > 0
        assert audit["classes"]["count"] == alone["classes"]["count"]
    assert json.loads((two / "bench.json").read_text())["world_size"] == 2
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in one.iterdir())

    # Resume: every run finished, so nothing trains and the same records come back.
    again = _torchrun("-m", "sievetrain", *bench, "--out", str(two), "--resume", "--quiet")
    assert again.returncode == 0, again.stderr[-3000:]
    assert _records(two) == records


def test_a_killed_torchrun_bench_resumes_from_rank_0s_checkpoint_to_the_same_numbers(tmp_path):
    bench = ["-m", "sievetrain", "bench", "--dataset", "mnist1d", "--train-size", "3000"]
    bench += ["--test-size", "200", "--epochs", "4", "--batch-size", "64"]
    bench += ["--methods", "full,srs:0.5", "--seeds", "0"]
    clean, out = tmp_path / "clean", tmp_path / "killed"
    assert _torchrun(*bench, "--out", str(clean), "--quiet").returncode == 0
    job = subprocess.Popen(
        [*TORCHRUN, *bench, "--out", str(out), "--quiet"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(),
    )
    deadline = time.time() + 180
    # Until the first run has finished and the second has checkpointed an epoch.
    while time.time() < deadline and not (
        (out / "results.jsonl").exists() and list((out / "checkpoints").glob("*.pt"))
    ):
        time.sleep(0.01)
    job.send_signal(signal.SIGTERM)  # as a scheduler ends a job: torchrun kills its ranks
    job.wait(timeout=60)
    assert list((out / "checkpoints").glob("*.pt")), "the run in progress left a checkpoint"
    assert len(_records(out)) == 1

    resumed = _torchrun(*bench, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stderr.count("srs:0.5 seed 0: resuming after epoch") == 1  # rank 0 alone
    after, expected = _records(out), _records(clean)
    for method in ("full", "srs:0.5"):
        for key in ("test_accuracy", "test_loss", "train_loss", "coverage"):
            got = [h[key] for h in after[method]["history"]]
            assert got == [h[key] for h in expected[method]["history"]], (method, key)


def test_bad_input_under_torchrun_stops_every_rank_with_exit_2(tmp_path):
    bad = [*BENCH[:-6], "--batch-size", "63", "--methods", "full", "--seeds", "0"]
    ran = _torchrun("-m", "sievetrain", *bad, "--out", str(tmp_path / "x"), timeout=120)
    assert ran.returncode != 0
    assert ran.stderr.count("sievetrain: error: --batch-size 63 is the global batch") == 1
    assert not (tmp_path / "x").exists()


FAILING = textwrap.dedent(
    """
    import torch
    import torch.distributed as dist
    from torch import nn
    from torch.utils.data import TensorDataset

    from sievetrain.train import TrainConfig, Trainer

    dist.init_process_group("gloo")
    torch.manual_seed(0)
    data = TensorDataset(torch.randn(256, 8), torch.randint(0, 3, (256,)))
    model = nn.Linear(8, 3)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), data, data,
                      config=TrainConfig(epochs=5, batch_size=32))

    def fail(t):
        if dist.get_rank() == 1 and t.epoch == 1:
            raise RuntimeError("rank 1 gives up")

    trainer.fit(on_epoch_end=fail)
    """
)


def test_a_failing_rank_ends_the_job_instead_of_hanging(tmp_path):
    script = tmp_path / "failing.py"
    script.write_text(FAILING)
    try:
        ran = _torchrun(str(script), timeout=120)
    except subprocess.TimeoutExpired:  # pragma: no cover - the failure this test catches
        pytest.fail("a rank failed and the other hung")
    assert ran.returncode != 0
    assert "rank 1 gives up" in ran.stderr
