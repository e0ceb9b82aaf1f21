"""Run keys (what ``--resume`` matches finished runs by) stay those of the version that
wrote a bench folder while new options sit at the value that computes what it computed."""

from __future__ import annotations

import torch
from torch.utils.data import TensorDataset

from sievetrain.bench.output import run_key
from sievetrain.bench.spec import prepare
from sievetrain.data.split import DataSplit
from sievetrain.train import TrainConfig

# The keys sievetrain 7f6468e (before amp, compile, amsgrad and maximize existed) gave
# this bench, for its runs and seeds in order.
KEYS_BEFORE = [
    "b24b64b328396415", "b37c78238c958cde", "0f058a3792461fc4", "dfb5989f5cfe6d72",
    "5e09465bc12469ec", "468bb684bb1acab5", "b4b406edef52b16f", "bd05c9e785abac9b",
]  # fmt: skip


def _keys(config=TrainConfig(), sets=None):
    x, y = torch.zeros(8, 1, 40), torch.zeros(8, dtype=torch.long)
    data = DataSplit(
        name="mnist1d",
        train=TensorDataset(x, y),
        test=TensorDataset(x[:4], y[:4]),
        num_classes=10,
        input_shape=(1, 40),
    )
    methods = ["full", "stochgradadam:0.5", "sift:0.5", "adam"]
    bench = prepare(data, methods, [0, 1], config=config, sets=sets)
    return [run_key(bench, run, seed) for run in bench.runs for seed in bench.seeds]


def test_a_bench_written_before_the_new_options_keeps_its_keys():
    assert _keys() == KEYS_BEFORE


def test_a_new_option_away_from_its_old_value_is_another_computation():
    assert _keys(TrainConfig(amp="bf16")) != KEYS_BEFORE
    changed = _keys(sets={"amsgrad": "true"})
    assert changed[2:4] != KEYS_BEFORE[2:4] and changed[:2] == KEYS_BEFORE[:2]
