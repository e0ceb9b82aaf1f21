"""SieveCallback: sievetrain's samplers and selectors in PyTorch Lightning, on one and two
processes (gloo, CPU). The fits are lightning_run.py's: tiny synthetic data, a tiny
CNN, 4 epochs; each records every batch it trains."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import lightning_run as fits  # tests/integrations is on pytest's path
import pytest
import torch
from torch.utils.data import DataLoader

from sievetrain.data import IndexedDataset
from sievetrain.integrations import ResumableLoader
from sievetrain.integrations import lightning as integration
from sievetrain.integrations.lightning import SieveCallback
from sievetrain.sampling import SoftRandomSampler, infobatch_plan
from sievetrain.sampling.base import shard
from sievetrain.selection import Selector

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(record: dict) -> list[tuple]:
    """Every batch trained, in order: (epoch, batch_idx, indices loaded, indices kept)."""
    return [(b["epoch"], b["batch_idx"], b["idx"], b["kept"]) for b in record["batches"]]


def _epoch(record: dict, epoch: int) -> list[int]:
    return [i for b in record["batches"] if b["epoch"] == epoch for i in b["idx"]]


def _same(a, b) -> bool:
    """Bitwise equality of nested states (tensors, dicts, lists, plain values), but for
    GRAD-MATCH's log of ``seconds`` and its ``batch_weights``: MKL's least squares is not
    bitwise repeatable, so they agree to 1e-12 (and as the float32 loss weights they
    become, bitwise: the parameters are compared bitwise)."""
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        if not isinstance(b, dict) or a.keys() != b.keys():
            return False
        if "batch_weights" in a and not torch.allclose(
            a["batch_weights"], b["batch_weights"], rtol=1e-12, atol=0
        ):
            return False
        return all(_same(a[k], b[k]) for k in a.keys() - {"seconds", "batch_weights"})
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def _global_order(epoch: int) -> list[int]:
    sampler = SoftRandomSampler(fits.N, 0.5, seed=0, num_replicas=1, rank=0)
    sampler.set_epoch(epoch)
    return sampler.epoch_indices().tolist()


def _check_resumed(full: dict, crashed: dict, resumed: dict) -> None:
    """The crashed run trained the uninterrupted one's first batches and the resumed run
    the rest, to bitwise-equal parameters and Sieve state (selector, sampler, count)."""
    assert crashed["crashed"] and not resumed["crashed"]
    done = len(crashed["batches"])
    assert 0 < done < len(full["batches"])
    assert _trained(crashed) == _trained(full)[:done]
    assert _trained(resumed) == _trained(full)[done:]
    assert _same(resumed["params"], full["params"])
    assert _same(resumed["sieve"], full["sieve"])


def _infobatch_plans(records: list[dict]) -> dict[int, list[int]]:
    """Each epoch's global InfoBatch order recomputed from the losses every rank trained
    with: a sample's score is its latest loss (1 before any)."""
    scores = torch.ones(fits.N)
    plans = {}
    for epoch in range(fits.EPOCHS):
        indices, _ = infobatch_plan(scores, epoch=epoch, epochs=fits.EPOCHS, **fits.INFOBATCH)
        plans[epoch] = indices.tolist()
        for record in records:
            for b in record["batches"]:
                if b["epoch"] == epoch:
                    scores[torch.tensor(b["kept"])] = torch.tensor(b["losses"])
    return plans


def test_each_epoch_trains_that_epochs_fresh_srs_subset(tmp_path):
    record = fits.run("srs", tmp_path)
    subsets = [_epoch(record, e) for e in range(fits.EPOCHS)]
    for epoch, trained in enumerate(subsets):
        assert trained == _global_order(epoch)  # the sampler's epoch, in its order, once
    assert len({frozenset(s) for s in subsets}) == fits.EPOCHS  # fresh every epoch
    assert record["loader_is_ours"] and record["sieve"]["samples_backpropagated"] == 4 * 48


@pytest.mark.parametrize(
    "method, stop",
    [
        ("srs+sift", "step:5"),  # mid-epoch; SIFT's exit head and StochGradAdam's generator
        ("srs", "epoch:2"),  # a checkpoint at an epoch's end
        ("selective-backprop", "step:8"),  # its loss history and generator
        ("infobatch", "step:8"),  # mid pruned epoch 1; epoch 3 (full data) is longer
        ("infobatch", "epoch:2"),  # Lightning does not load the loader here: the callback does
        ("gradmatch", "step:4"),  # the selected subset and weights
    ],
)
def test_a_resumed_fit_ends_bitwise_where_the_uninterrupted_one_does(tmp_path, method, stop):
    full = fits.run(method, tmp_path / "full")
    crashed = fits.run(method, tmp_path / "crashed", stop=stop)
    resumed = fits.run(method, tmp_path / "resumed", resume=str(tmp_path / "crashed/stop.ckpt"))
    _check_resumed(full, crashed, resumed)
    if method == "srs+sift":  # the exit head trained, and kept half of each batch
        assert resumed["sieve"]["selector"]["exit"]["kind"] == "linear"
        assert all(len(b["kept"]) == len(b["idx"]) // 2 for b in full["batches"])


def test_infobatch_trains_the_plan_of_the_losses_it_was_fed(tmp_path):
    record = fits.run("infobatch", tmp_path)
    plans = _infobatch_plans([record])
    assert all(_epoch(record, e) == plans[e] for e in range(fits.EPOCHS))
    pruned = record["stats"]["pruned_per_epoch"]
    assert pruned[0] == pruned[3] == 0 and pruned[1] > 0  # epoch 3 anneals: full data


def test_epochs_of_changing_length_each_end_with_validation(tmp_path):
    # Lightning counts the batches once per fit; InfoBatch's later epochs are shorter.
    record = fits.run("infobatch", tmp_path, module=fits.ValidatedClassifier)
    lengths = [len(_epoch(record, e)) for e in range(fits.EPOCHS)]
    assert lengths[1] < lengths[0]
    assert record["validated"] == list(range(fits.EPOCHS))


class _KeepNoneOfEveryOtherBatch(Selector):
    def __init__(self) -> None:
        self.calls = 0

    def select(self, model, x, y):
        self.calls += 1
        return torch.arange(len(y)) if self.calls % 2 else torch.zeros(0, dtype=torch.long)


class _ParamsAfterEachBatch(fits.Classifier):
    def on_train_batch_end(self, outputs, batch, batch_idx):
        self.batches[-1]["params"] = torch.cat([p.detach().flatten() for p in self.parameters()])


def test_a_batch_with_no_sample_kept_trains_nothing(tmp_path):
    selector = _KeepNoneOfEveryOtherBatch()
    record = fits.run("srs", tmp_path, selector=selector, module=_ParamsAfterEachBatch)
    batches = record["batches"]
    assert [len(b["kept"]) for b in batches] == [16, 0] * 6  # 4 epochs of 3 batches
    for before, after in zip(batches, batches[1:], strict=False):
        changed = not torch.equal(before["params"], after["params"])
        assert changed == bool(after["kept"])  # training_step returned None: no update
    assert record["sieve"]["samples_backpropagated"] == 6 * 16


class _PlainLoader(fits.Classifier):
    def train_dataloader(self):
        return DataLoader(fits.data(), batch_size=8, sampler=SoftRandomSampler(fits.N, 0.5))


class _LoaderOfItsOwn(fits.Classifier):
    """A ResumableLoader made without the callback's dataloader()."""

    def train_dataloader(self):
        self.sampler = fits.make_sampler(self.method)
        return ResumableLoader(IndexedDataset(fits.data()), fits.BATCH, sampler=self.sampler)


def test_a_loader_made_without_the_callback_is_bound_at_the_start_unless_it_must_gather(
    tmp_path,
):
    record = fits.run("srs", tmp_path / "srs", module=_LoaderOfItsOwn)
    assert [_epoch(record, e) for e in range(fits.EPOCHS)] == [
        _global_order(e) for e in range(fits.EPOCHS)
    ]
    # Selective Backprop's end-of-epoch batch must be in the length Lightning reads first.
    with pytest.raises(ValueError, match=r"return callback\.dataloader\("):
        fits.run("selective-backprop", tmp_path / "sb", module=_LoaderOfItsOwn)


def test_the_callbacks_earlier_name_still_imports_with_a_warning():
    with pytest.warns(DeprecationWarning, match="now SieveCallback"):
        assert integration.Sieve is SieveCallback


def test_selective_backprop_trains_full_gathered_batches_and_each_epochs_remainder(tmp_path):
    record = fits.run("selective-backprop", tmp_path)
    for epoch in range(1, fits.EPOCHS):  # epoch 0 keeps everything
        steps = [b for b in record["batches"] if b["epoch"] == epoch]
        sizes = [len(b["kept"]) for b in steps if b["kept"]]
        assert all(size == fits.BATCH for size in sizes[:-1]) and 0 < sizes[-1] <= fits.BATCH
        assert steps[-1]["idx"] == []  # the loader's end-of-epoch batch trained the remainder
        kept = [i for b in steps for i in b["kept"]]
        assert len(set(kept)) == len(kept) and set(kept) <= set(_epoch(record, epoch))


class _TwoRankSampler(fits.Classifier):
    def train_dataloader(self):
        sampler = SoftRandomSampler(fits.N, 0.5, num_replicas=2, rank=0)
        return ResumableLoader(IndexedDataset(fits.data()), 8, sampler=sampler)


def test_bad_input_is_refused_with_the_bad_value_named(tmp_path, monkeypatch):
    with pytest.raises(TypeError, match="got str"):
        SieveCallback("sift")
    with pytest.raises(ImportError, match="found lightning 2.2.5"):
        integration._check_version("2.2.5")
    integration._check_version("2.3.0rc1")
    with pytest.raises(RuntimeError, match="once fit"):
        SieveCallback().select((torch.zeros(2, 4), torch.zeros(2), torch.arange(2)))
    with pytest.raises(RuntimeError, match="when fit"):
        SieveCallback().loss(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long), torch.zeros(2))
    with pytest.raises(TypeError, match="ResumableLoader, got DataLoader"):
        fits.run("srs", tmp_path, module=_PlainLoader)
    with pytest.raises(ValueError, match="num_replicas=2"):
        fits.run("srs", tmp_path, module=_TwoRankSampler)
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's, with a Trainer left on one device
    with pytest.raises(ValueError, match="WORLD_SIZE=2"):
        fits.run("srs", tmp_path, world=1)


def _torchrun(method: str, out: Path, *args: str) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ran = subprocess.run(
        [*TORCHRUN, str(HERE / "lightning_run.py"), method, str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def two_ranks_sift(tmp_path_factory) -> tuple[Path, list[dict]]:
    out = tmp_path_factory.mktemp("two-ranks")
    return out, _torchrun("srs+sift", out / "full")


def test_two_ranks_train_disjoint_shares_of_each_epochs_subset_in_sync(two_ranks_sift):
    _, ranks = two_ranks_sift
    for rank, record in enumerate(ranks):
        assert record["world"] == 2 and record["rank"] == rank
        assert record["loader_is_ours"] and record["num_replicas"] == 2  # not wrapped
    for epoch in range(fits.EPOCHS):
        order = torch.tensor(_global_order(epoch))  # one process's global epoch
        for rank, record in enumerate(ranks):
            assert _epoch(record, epoch) == shard(order, 2, rank).tolist()
    assert _epoch(ranks[0], 0) != _epoch(ranks[0], 1)
    params = [record["params"] for record in ranks]
    assert all(torch.equal(params[0][k], params[1][k]) for k in params[0] if "running" not in k)
    selectors = [record["sieve"]["selector"] for record in ranks]
    assert _same(selectors[0], selectors[1])  # SIFT's exit head, identical on both ranks


@pytest.mark.slow
def test_two_ranks_resume_mid_epoch_to_the_uninterrupted_parameters(two_ranks_sift):
    out, full = two_ranks_sift
    crashed = _torchrun("srs+sift", out / "crashed", "--stop", "step:5")
    resumed = _torchrun("srs+sift", out / "resumed", "--resume", str(out / "crashed/stop.ckpt"))
    for rank in range(2):
        _check_resumed(full[rank], crashed[rank], resumed[rank])


@pytest.mark.slow
def test_two_ranks_of_infobatch_prune_from_merged_losses_and_resume(tmp_path):
    full = _torchrun("infobatch", tmp_path / "full")
    plans = _infobatch_plans(full)
    for epoch in range(fits.EPOCHS):
        for rank, record in enumerate(full):
            assert _epoch(record, epoch) == shard(torch.tensor(plans[epoch]), 2, rank).tolist()
    assert full[0]["stats"]["pruned_per_epoch"][1] > 0
    crashed = _torchrun("infobatch", tmp_path / "crashed", "--stop", "step:8")  # epoch 1
    resumed = _torchrun(
        "infobatch", tmp_path / "resumed", "--resume", str(tmp_path / "crashed/stop.ckpt")
    )
    for rank in range(2):
        _check_resumed(full[rank], crashed[rank], resumed[rank])


def _example(cwd: Path, *launcher: str) -> str:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    script = str(ROOT / "examples" / "lightning_fashion_mnist.py")
    ran = subprocess.run(
        [*launcher, script], capture_output=True, text=True, timeout=300, env=env, cwd=cwd
    )
    assert ran.returncode == 0, ran.stderr[-4000:]
    return ran.stdout


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[sys.executable], TORCHRUN], ids=["python", "torchrun"])
def test_the_example_learns_fashion_mnist(fashion_mnist_dir, launcher, tmp_path):
    out = _example(tmp_path, *launcher)
    accuracy = float(re.search(r"test accuracy ([\d.]+)%", out).group(1))
    assert accuracy > 50  # chance is 10 %
    # 5 epochs of 1800 samples (SRS 0.3 of 6000) in batches of 128, SIFT keeping half:
    assert "samples backpropagated: 4500 " in out
    assert out.count("test accuracy") == 1  # rank 0 alone prints
