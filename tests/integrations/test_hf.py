"""SieveTrainer, the Hugging Face ``Trainer`` on sievetrain samplers and selectors: in
one process here, and under ``torchrun`` (two gloo processes, ``hf_run.py``, slow)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import hf_run  # this folder is on pytest's path
import pytest
import torch
from transformers import TrainingArguments

from sievetrain.data import load_shakespeare
from sievetrain.integrations.hf import STATE_FILE, SieveTrainer
from sievetrain.sampling import InfoBatchSampler, SoftRandomSampler
from sievetrain.sampling.base import shard

HERE = Path(__file__).parent
EXAMPLE = HERE.parent.parent / "examples" / "hf_shakespeare_mlm.py"
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TIMEOUT_S = 300  # per subprocess: the machine is shared


def assert_same(a, b, where="state"):
    """Bitwise equality of nested dicts, lists and tensors."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}[{key!r}]")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def per_epoch(batches):
    """``{epoch: [dataset indices trained, in order]}`` from a Recorder's batches."""
    epochs = {}
    for epoch, idx in batches:
        epochs.setdefault(epoch, []).extend(idx)
    return epochs


def run(*args, timeout=TIMEOUT_S):
    ran = subprocess.run(
        [*args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert ran.returncode == 0, ran.stderr[-3000:]
    return ran.stdout


def test_each_epoch_trains_the_samplers_subset_once_and_a_fresh_one_every_epoch(tmp_path):
    trainer = hf_run.train(tmp_path, epochs=3)
    reference = SoftRandomSampler(hf_run.N, hf_run.SRS_RATIO, seed=0, num_replicas=1, rank=0)
    epochs = per_epoch(trainer.batches)
    assert sorted(epochs) == [0, 1, 2]
    for epoch, trained in epochs.items():
        reference.set_epoch(epoch)
        assert trained == reference.epoch_indices().tolist()  # its subset, in its order
        assert len(set(trained)) == len(trained) == 32  # half of 64, none twice
    assert len({frozenset(t) for t in epochs.values()}) == 3  # a fresh subset every epoch
    assert trainer.samples_backpropagated == 3 * 32


@pytest.mark.parametrize(
    ("selector", "grad_accum", "stop", "epoch", "steps"),
    [
        ("sift", 1, 10, 1, 24),  # 8 batches an epoch: 2 into epoch 1
        # 8 batches and the end-of-epoch one, 5 optimizer steps an epoch: 4 into epoch 1
        ("selective-backprop", 2, 7, 1, 15),
        ("sift", 1, 16, 2, 24),  # at the end of epoch 1
    ],
    ids=["sift-mid-epoch", "selective-backprop-accumulating-mid-epoch", "sift-epoch-end"],
)
def test_a_resumed_run_ends_bitwise_as_the_straight_run(
    tmp_path, selector, grad_accum, stop, epoch, steps
):
    """(c) parameters and the samples trained after the resume, (d) the selector's state,
    (e) StochGradAdam's mask generators: all as if never interrupted. The checkpoint is
    taken after ``stop`` optimizer steps; the resumed run starts in ``epoch``."""
    options = {"selector": selector, "grad_accum": grad_accum}
    straight = hf_run.results(hf_run.train(tmp_path / "straight", **options))
    stopped = hf_run.train(tmp_path / "stopped", stop=stop, **options)
    checkpoint = tmp_path / "stopped" / f"checkpoint-{stop}"
    assert stopped.state.global_step == stop and (checkpoint / STATE_FILE).is_file()
    resumed = hf_run.results(hf_run.train(tmp_path / "resumed", resume=checkpoint, **options))

    done, trained = len(stopped.batches), len(stopped.trained)
    assert stopped.batches == straight["batches"][:done]
    assert resumed["batches"] == straight["batches"][done:]  # the rest, none twice
    assert stopped.trained == straight["trained"][:trained]
    assert resumed["trained"] == straight["trained"][trained:]
    assert resumed["batches"][0][0] == epoch  # the epoch it resumes in
    assert_same(resumed["params"], straight["params"], "params")
    assert_same(resumed["selector"], straight["selector"], "selector")
    assert_same(resumed["generators"], straight["generators"], "generators")
    assert resumed["samples_backpropagated"] == straight["samples_backpropagated"]
    assert resumed["global_step"] == straight["global_step"] == steps
    # The states compared are not trivial: a trained exit head, a loss history.
    if selector == "sift":
        assert "linear" in straight["selector"]["exit"]
    else:
        assert len(straight["selector"]["recent_losses"]) == 64
        # Gathered: every trained batch is full but each epoch's last, its remainder.
        sizes = [len(idx) for _, idx in straight["trained"]]
        assert sizes.count(hf_run.BATCH) >= len(sizes) - 3 and min(sizes) > 0
        assert any(len(idx) == 0 for _, idx in straight["batches"])  # end-of-epoch batches
        saved = torch.load(checkpoint / STATE_FILE, weights_only=True)
        assert len(saved["waiting"]["idx"]) > 0  # resumed with kept samples waiting


def test_an_infobatch_resume_takes_its_epoch_and_position_from_the_checkpoint(tmp_path):
    straight = hf_run.results(hf_run.train(tmp_path / "straight", sampler="infobatch"))
    epochs = [epoch for epoch, _ in straight["batches"]]
    stop = epochs.index(2) + 1  # one batch into epoch 2
    # Pruned epochs are shorter than the first, so the Trainer's own arithmetic (steps //
    # the first epoch's steps) would resume elsewhere than epoch 2's second batch.
    first = epochs.count(0)
    assert epochs.count(1) < first and (stop // first, stop % first) != (2, 1)
    hf_run.train(tmp_path / "stopped", sampler="infobatch", stop=stop)
    checkpoint = tmp_path / "stopped" / f"checkpoint-{stop}"
    resumed = hf_run.results(
        hf_run.train(tmp_path / "resumed", sampler="infobatch", resume=checkpoint)
    )

    assert resumed["batches"] == straight["batches"][stop:]
    assert_same(resumed["params"], straight["params"], "params")
    assert_same(resumed["sampler"], straight["sampler"], "sampler")  # scores, plan, pruning log

    # A checkpoint without sievetrain's state (a plain Trainer's) would resume the wrong
    # epoch by that arithmetic: refused, naming the file.
    (checkpoint / STATE_FILE).unlink()
    with pytest.raises(FileNotFoundError, match=f"{STATE_FILE} not found"):
        hf_run.train(tmp_path / "again", sampler="infobatch", resume=checkpoint)


def test_evaluation_is_the_trainers_own_loss(tmp_path):
    pairs = load_shakespeare(train_size=8, test_size=8, seq_len=hf_run.SEQ_LEN).test
    args = TrainingArguments(
        str(tmp_path), use_cpu=True, per_device_eval_batch_size=8, report_to="none"
    )
    model = hf_run.tiny_bert()
    trainer = SieveTrainer(model=model, args=args, eval_dataset=hf_run.MaskedLM(pairs))
    x, y = pairs.tensors
    with torch.no_grad():
        expected = model.eval()(input_ids=x, labels=y).loss.item()
    assert trainer.evaluate()["eval_loss"] == pytest.approx(expected, rel=1e-6)


def test_a_bad_sampler_selector_or_dataset_is_refused_by_name(tmp_path):
    args = TrainingArguments(str(tmp_path), use_cpu=True, report_to="none", save_strategy="no")
    model = hf_run.tiny_bert()
    with pytest.raises(TypeError, match="sampler must be a sievetrain EpochSampler, got list"):
        SieveTrainer(model=model, args=args, sampler=[0, 1])
    with pytest.raises(TypeError, match="selector must be a sievetrain Selector, got str"):
        SieveTrainer(model=model, args=args, selector="sift")
    # Sharded for two ranks in a one-process run (or unsharded under torchrun): refused.
    two_ranks = SoftRandomSampler(hf_run.N, 0.5, num_replicas=2, rank=0)
    trainer = SieveTrainer(
        model=model, args=args, train_dataset=hf_run.train_data(), sampler=two_ranks
    )
    with pytest.raises(ValueError, match="num_replicas=2 but the run has 1 processes"):
        trainer.train()
    pairs = load_shakespeare(train_size=8, test_size=8, seq_len=hf_run.SEQ_LEN).train
    trainer = SieveTrainer(model=model, args=args, train_dataset=hf_run.MaskedLM(pairs))
    with pytest.raises(ValueError, match="no 'idx'.*IndexedDataset"):
        trainer.train()


@pytest.mark.slow
def test_two_ranks_under_torchrun_split_each_epoch_stay_in_sync_and_resume_exactly(tmp_path):
    run(*TORCHRUN, str(HERE / "hf_run.py"), str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    assert [r["world"] for r in ranks] == [2, 2]

    # (a) Rank r trains positions r::2 of the one-process epoch: together all of it, once.
    reference = SoftRandomSampler(hf_run.N, hf_run.SRS_RATIO, seed=0, num_replicas=1, rank=0)
    for epoch in range(3):
        reference.set_epoch(epoch)
        order = reference.epoch_indices()
        for rank, state in enumerate(ranks):
            assert per_epoch(state["straight"]["batches"])[epoch] == shard(order, 2, rank).tolist()
    # InfoBatch's first epoch is full data: 61 samples, the global tail of 1 dropped.
    order = InfoBatchSampler(61, 0.5, epochs=1, delta=1.0, num_replicas=1, rank=0).epoch_indices()
    trained = [per_epoch(state["infobatch"]["batches"])[0] for state in ranks]
    assert trained == [shard(order, 2, rank).tolist() for rank in range(2)]
    assert sorted(trained[0] + trained[1]) == sorted(order[:60].tolist())

    # (b) Every rank ends with the same parameters.
    for name in ("straight", "resumed", "infobatch"):
        assert_same(ranks[0][name]["params"], ranks[1][name]["params"], name)

    # (c, d, e) Stopped 2 steps into epoch 1 and resumed: as if never stopped.
    stop = hf_run.STOP_2_RANKS
    for state in ranks:
        straight, resumed = state["straight"], state["resumed"]
        assert resumed["batches"] == straight["batches"][stop:] and resumed["batches"][0][0] == 1
        assert_same(resumed["params"], straight["params"], "params")
        assert_same(resumed["selector"], straight["selector"], "selector")
        assert_same(resumed["generators"], straight["generators"], "generators")


def example_results(stdout):
    accuracy = float(re.search(r"accuracy on held-out plays: ([\d.]+)%", stdout).group(1))
    backpropagated = int(re.search(r"samples backpropagated: (\d+)", stdout).group(1))
    return accuracy, backpropagated


@pytest.mark.slow
@pytest.mark.parametrize("launcher", [[sys.executable], TORCHRUN], ids=["python", "torchrun"])
def test_the_example_learns(launcher):
    accuracy, backpropagated = example_results(run(*launcher, str(EXAMPLE)))
    # 2 % untrained, 14 % always guessing the commonest character.
    assert accuracy > 20
    assert backpropagated == 8 * 8000 // 2 // 2  # 8 epochs of half the data, half of each batch
