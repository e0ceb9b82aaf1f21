"""Speed-up at equal accuracy: the full-data sweep (--frontier), F* on it, the speed-ups."""

import json

import pytest

from sievetrain.bench import prepare
from sievetrain.bench.frontier import (
    add_frontier,
    equal_accuracy,
    equal_fraction,
    monotone,
    sweep_fractions,
)
from sievetrain.bench.frontier_report import frontier_section, frontier_summary
from sievetrain.bench.output import describe_bench
from sievetrain.bench.registry import parse_run
from sievetrain.options import ArgumentError

# A hand-made sweep: F -> accuracy; F = 0.6 does worse than 0.4 (seed noise).
SWEEP = {0.2: 0.80, 0.4: 0.85, 0.6: 0.84, 0.8: 0.88, 1.0: 0.89}
# Its CPU seconds: 1 s of fixed cost plus 10 s per unit of F (not proportional to F).
CPU = {f: 1 + 10 * f for f in SWEEP}


def record(method, seed, accuracy, *, backward=1.0, cpu=10.0, fraction=None, optimizer="sgd"):
    """A result record with what the equal-accuracy comparison reads (10 epochs of 1000)."""
    r = {
        "method": method,
        "seed": seed,
        "epochs": 10,
        "train_size": 1000,
        "samples_backpropagated": round(backward * 10 * 1000),
        "final_test_accuracy": accuracy,
        "train_cpu_s": cpu,
        "config": {"methods": {"optimizer": {"method": optimizer, "options": {}}}},
    }
    if fraction is not None:
        r["sweep_fraction"] = fraction
    return r


def sweep_records(seed=0, shift=0.0):
    return [
        record(f"full/budget={f:g}", seed, a + shift, backward=f, cpu=CPU[f], fraction=f)
        for f, a in SWEEP.items()
    ]


def test_the_sweep_is_made_monotone_and_f_star_interpolated_on_it():
    points = list(SWEEP.items())[::-1]  # any order
    assert monotone(points) == [[0.2, 0.80], [0.4, 0.85], [0.6, 0.85], [0.8, 0.88], [1.0, 0.89]]
    f_star, status = equal_fraction(points, 0.865)
    assert status == "within" and f_star == pytest.approx(0.7)  # halfway from 0.6 to 0.8
    assert equal_fraction(points, 0.845)[0] == pytest.approx(0.38)  # 0.9 of the way to 0.4
    assert equal_fraction(points, 0.85) == (0.4, "within")  # a flat segment: its first F
    assert equal_fraction(points, 0.80) == (0.2, "within")
    assert equal_fraction(points, 0.89) == (1.0, "within")
    assert equal_fraction(points, 0.895) == (None, "above")  # beyond the best full run
    assert equal_fraction(points, 0.79) == (None, "below")  # F* < F_min: not extrapolated
    assert equal_fraction([[1.0, 0.5]], 0.5) == (1.0, "within")  # a sweep of F = 1 alone


def test_speed_ups_divide_f_star_by_the_methods_cost():
    # Backward passes 0.35 of full data's; CPU 4 s, scoring forwards included.
    method = record("srs:0.35+sift", 0, 0.865, backward=0.35, cpu=4.0)
    result = equal_accuracy(method, sweep_records())
    assert result["f_star"] == pytest.approx(0.7) and result["status"] == "within"
    assert result["backward_cost"] == 0.35
    assert result["cpu_cost"] == pytest.approx(4 / 11)  # over full data's at F = 1
    assert result["speedup_backward"] == pytest.approx(0.7 / 0.35)
    # The sweep's CPU time at F* = 0.7 is 8 s (between 7 and 9), not 0.7 x 11 s.
    assert result["speedup_cpu"] == pytest.approx(8 / 4)
    assert result["sweep"] == monotone(SWEEP.items())
    # At equal time: 4 s of CPU lies halfway between the sweep's F = 0.2 (3 s) and
    # F = 0.4 (5 s), where the curve goes 0.80 -> 0.85: 0.825, so 86.5 - 82.5 points.
    assert result["change_at_equal_cpu_pts"] == pytest.approx(4.0)
    assert (
        equal_accuracy(record("m", 0, 0.8, cpu=1.0), sweep_records())["change_at_equal_cpu_pts"]
        is None
    )  # faster than the smallest budget: no extrapolation
    above = equal_accuracy(record("m", 0, 0.95, backward=0.5, cpu=5.0), sweep_records())
    assert above["status"] == "above" and above["f_star"] is None
    assert above["speedup_backward"] is None and above["speedup_cpu"] is None
    assert above["backward_cost"] == 0.5 and above["cpu_cost"] == pytest.approx(5 / 11)


def test_the_report_takes_f_star_from_the_mean_sweep_and_speed_ups_over_seeds():
    records = []
    for seed, shift, accuracy in ((0, 0.0, 0.865), (1, 0.02, 0.865)):
        sweep = sweep_records(seed, shift)
        method = record("srs:0.5", seed, accuracy, backward=0.5, cpu=6.0)
        method["equal_accuracy"] = equal_accuracy(method, sweep)
        records += [*sweep, method]
    (sweep,), (row,) = frontier_summary(records)
    assert sweep["fractions"] == [0.2, 0.4, 0.6, 0.8, 1.0]
    assert sweep["accuracy_mean"] == pytest.approx([100 * a + 1 for a in SWEEP.values()])
    assert sweep["cpu_time_mean"] == pytest.approx(list(CPU.values()))
    # Mean sweep 0.86 at F = 0.6 (monotone), 0.89 at 0.8: 86.5 % is F* = 0.6 + 0.2 / 6.
    assert row["f_star"] == pytest.approx(0.6 + 0.2 / 6) and row["status"] == "within"
    # Seed 0: F* = 0.7; seed 1 (its sweep 2 points higher): F* = 0.2 + 0.2 * 4.5 / 5.
    per_seed = [0.7 / 0.5, 0.38 / 0.5]
    assert row["speedup_backward_mean"] == pytest.approx(sum(per_seed) / 2)
    assert row["speedup_backward_std"] == pytest.approx(abs(per_seed[0] - per_seed[1]) / 2**0.5)
    assert row["seeds_within"] == 2 and row["backward_cost"] == 0.5
    text = frontier_section([sweep], [row], heading=True)
    assert text.startswith("## Speed-up at equal accuracy\n")
    assert f"| srs:0.5 | 86.50 ± 0.00 | 0.633 | 0.5 | {sum(per_seed) / 2:.2f}× ± " in text
    assert text.endswith("\n## Every method\n\n")
    # One seed beyond the best full run: F* from the mean, speed-ups not averaged.
    records[-1]["final_test_accuracy"] = 0.95
    records[-1]["equal_accuracy"] = equal_accuracy(records[-1], records[6:-1])
    _, (row,) = frontier_summary(records)
    assert row["seeds_within"] == 1 and row["speedup_backward_mean"] is None
    assert row["status"] == "above"  # the mean, 90.75 %, is beyond the best full run's 90 %
    text = frontier_section([sweep], [row], heading=False)
    assert "| > 1 (beyond the best full run) |" in text
    assert "— (1/2 seeds within the sweep)" in text
    assert frontier_summary([record("full", 0, 0.9)]) == ([], [])  # no --frontier
    assert frontier_section([], [], heading=True) == ""


def labels(runs):
    return [run.label for run in runs]


def test_the_sweep_runs_first_with_f_1_added_and_listed_runs_reused():
    runs = [parse_run(m) for m in ("srs:0.5", "full/budget=0.5", "srs:0.3")]
    swept = add_frontier(runs, [0.2, 0.5])
    # F descending, full data first; the listed budget 0.5 moves to the front, once.
    assert labels(swept) == ["full", "full/budget=0.5", "full/budget=0.2", "srs:0.5", "srs:0.3"]
    assert swept[1] is runs[1]
    listed_full = [parse_run("srs:0.5"), parse_run("full")]
    assert labels(add_frontier(listed_full, [0.5])) == ["full", "full/budget=0.5", "srs:0.5"]
    assert add_frontier(listed_full, [0.5])[0] is listed_full[1]  # a listed full is F = 1
    assert labels(add_frontier([parse_run("srs:0.5")], [1.0])) == ["full", "srs:0.5"]
    # One sweep per distinct optimizer, each with its optimizer's options.
    two = add_frontier([parse_run("srs:0.5"), parse_run("srs:0.5+adam/lr=0.01")], [0.5])
    assert labels(two) == [
        "full",
        "full/budget=0.5",
        "full+adam/lr=0.01",
        "full/budget=0.5+adam/lr=0.01",
        "srs:0.5",
        "srs:0.5+adam/lr=0.01",
    ]
    assert two[3].optimizer == two[5].optimizer
    assert sweep_fractions([0.5, 0.2]) == (0.2, 0.5, 1.0)


def test_prepare_checks_the_budgets_and_bench_json_names_them_only_when_given(mnist1d):
    for frontier, named in (([0.0], "has 0:"), ([1.5], "has 1.5:"), ([0.2, 0.2], "lists 0.2")):
        with pytest.raises(ArgumentError, match=f"^frontier= {named}"):
            prepare(mnist1d, ["srs:0.5"], [0], frontier=frontier)
    bench = prepare(mnist1d, ["srs:0.5"], [0], frontier=[0.5], matched=True)
    assert labels(bench.runs) == ["full", "full/budget=0.5", "srs:0.5"]
    assert bench.matches["srs:0.5"].baseline == "full/budget=0.5"  # the sweep's point
    assert describe_bench(bench)["frontier"] == [0.5, 1.0]
    assert "frontier" not in describe_bench(prepare(mnist1d, ["srs:0.5"], [0]))


def in_process(capsys, *args):
    from sievetrain.cli import main

    try:
        code = main(list(args))
    except SystemExit as exit_:
        code = exit_.code
    out, err = capsys.readouterr()
    return code, out, err


TINY = ["--dataset", "mnist1d", "--train-size", "256", "--test-size", "128", "--epochs", "2"]


@pytest.mark.parametrize(
    "frontier, fragment",
    [
        ("0", "--frontier has 0: every budget F"),
        ("1.5", "--frontier has 1.5:"),
        ("nan", "--frontier has nan:"),
        ("x", "invalid budget 'x' in --frontier 'x'"),
        ("0.5,x", "invalid budget 'x'"),
        ("0.2,0.2", "--frontier lists 0.2 more than once"),
        ("", "no budgets in --frontier ''"),
        ("0.001", "'full/budget=0.001'"),  # no sample left of 256 at that budget
    ],
)
def test_bad_frontier_exits_2_with_one_line_and_no_folder(tmp_path, capsys, frontier, fragment):
    out = tmp_path / "o"
    code, stdout, err = in_process(
        capsys, "bench", *TINY, "--methods", "srs:0.5", "--frontier", frontier, "--out", str(out)
    )
    assert code == 2, (stdout, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0], err
    assert not out.exists(), "a rejected bench creates no folder"


def test_bench_with_frontier_end_to_end(tmp_path, capsys, one_thread):
    out = tmp_path / "o"
    args = ["bench", *TINY, "--methods", "srs:0.5", "--seeds", "0,1", "--frontier", "0.5,1"]
    code, stdout, err = in_process(capsys, *args, "--quiet", "--out", str(out))
    assert code == 0, err
    rows = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    order = ["full", "full/budget=0.5", "srs:0.5"]
    assert [(r["method"], r["seed"]) for r in rows] == [(m, s) for s in (0, 1) for m in order]
    for seed in (0, 1):
        full, half, srs = (r for r in rows if r["seed"] == seed)
        assert (full["sweep_fraction"], half["sweep_fraction"]) == (1.0, 0.5)
        assert "equal_accuracy" not in full and "sweep_fraction" not in srs
        result = srs["equal_accuracy"]
        assert result == equal_accuracy(srs, [half, full])
        assert result["backward_cost"] == 0.5
        assert result["cpu_cost"] == pytest.approx(srs["train_cpu_s"] / full["train_cpu_s"])
    assert json.loads((out / "bench.json").read_text())["frontier"] == [0.5, 1.0]
    report = (out / "report.md").read_text()
    section = report.partition("## Speed-up at equal accuracy")[2].partition("## Every")[0]
    assert "| srs:0.5 |" in section and "`full` at F = 0.5, 1" in section
    assert "## Speed-up at equal accuracy" in stdout
    assert "![test accuracy against training CPU time](accuracy_vs_cpu.png)" in report
    assert (out / "accuracy_vs_cpu.png").read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((out / "summary.json").read_text())
    assert [r["method"] for r in summary["equal_accuracy"]] == ["srs:0.5"]
    assert summary["full_data_sweeps"][0]["labels"] == ["full/budget=0.5", "full"]
    # Resuming with the same budgets (F = 1 implied) finds the bench complete.
    code, _, err = in_process(capsys, *args[:-1], "0.5", "--quiet", "--out", str(out), "--resume")
    assert code == 0, err
    assert len((out / "results.jsonl").read_text().splitlines()) == 6
