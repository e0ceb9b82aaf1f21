"""Tiny :class:`~sievetrain.integrations.hf.SieveTrainer` runs for ``test_hf.py``.

Imported by the tests (one process), or run under ``torchrun`` (two gloo processes):

    python -m torch.distributed.run --standalone --nproc_per_node=2 hf_run.py OUT

which trains, in one launch, the scenarios of :func:`main` and writes each rank's
results to ``OUT/rank{r}.pt`` (load with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset
from transformers import BertConfig, BertForMaskedLM, TrainerCallback, TrainingArguments

from sievetrain.data import VOCAB_SIZE, IndexedDataset, load_shakespeare
from sievetrain.integrations.hf import SieveTrainer
from sievetrain.optim import StochGradAdam
from sievetrain.sampling import InfoBatchSampler, SoftRandomSampler
from sievetrain.selection import SIFT, SelectiveBackprop

# The example's dataset of {"input_ids", "labels"} dicts, so the tests train what it does.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
from hf_shakespeare_mlm import MaskedLM  # noqa: E402

N, SEQ_LEN, BATCH = 64, 16, 4  # training sequences, characters each, per-rank batch
SRS_RATIO = 0.5  # 32 of 64 per epoch: a multiple of 1 and 2 ranks, so both share one order
STOP_2_RANKS = 6  # 2 steps into epoch 1 on 2 ranks (4 steps of 4 samples per rank per epoch)


def train_data(n: int = N) -> Dataset:
    return IndexedDataset(
        MaskedLM(load_shakespeare(train_size=n, test_size=8, seq_len=SEQ_LEN).train)
    )


def tiny_bert() -> BertForMaskedLM:
    torch.manual_seed(0)  # the same initial weights in every run
    config = BertConfig(
        vocab_size=VOCAB_SIZE,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=SEQ_LEN,
        hidden_dropout_prob=0.1,  # on: a resume must restore the RNG states too
    )
    return BertForMaskedLM(config)


class Recorder(SieveTrainer):
    """Records, per training step, the sampler's epoch and the loaded batch's dataset
    indices (``batches``), and the indices of every batch trained (``trained``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches: list[tuple[int, list[int]]] = []
        self.trained: list[tuple[int, list[int]]] = []

    def get_train_dataloader(self):
        loader = super().get_train_dataloader()
        loss = self.sieve.loss
        if getattr(loss, "__self__", None) is self.sieve:  # not wrapped yet

            def recorded(logits, y, idx):
                self.trained.append((self.sieve.sampler.epoch, idx.tolist()))
                return loss(logits, y, idx)

            self.sieve.loss = recorded
        return loader

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:
            self.batches.append((self.sampler.epoch, inputs["idx"].tolist()))
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)


class StopAt(TrainerCallback):
    """Stops training after optimizer step ``step`` (its checkpoint is saved first)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def make_selector(name: str | None):
    if name is None:
        return None
    return {
        "sift": lambda: SIFT(
            0.5, stage="bert.encoder.layer.0", head="linear", num_classes=VOCAB_SIZE
        ),
        "selective-backprop": lambda: SelectiveBackprop(3.0, full_epochs=0, history=64, seed=0),
    }[name]()


def train(
    out: str | Path,
    *,
    sampler: str = "srs",
    selector: str | None = None,
    epochs: int = 3,
    stop: int | None = None,
    resume: str | Path | None = None,
    grad_accum: int = 1,
    n: int = N,
) -> Recorder:
    """One run: SRS or InfoBatch, a selector or none, StochGradAdam (rate 0.5), a linear
    learning-rate decay; ``stop`` saves a checkpoint at that step and stops there;
    ``resume`` continues from a checkpoint folder."""
    args = TrainingArguments(
        str(out),
        use_cpu=True,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=grad_accum,
        num_train_epochs=epochs,
        seed=0,
        report_to="none",
        disable_tqdm=True,
        logging_strategy="no",
        save_strategy="steps" if stop else "no",
        save_steps=stop or 1,
        ddp_find_unused_parameters=False,
    )
    dataset = train_data(n)
    samplers = {
        "srs": lambda: SoftRandomSampler(n, SRS_RATIO, seed=0),
        "infobatch": lambda: InfoBatchSampler(n, 0.5, epochs=epochs, delta=1.0, seed=0),
    }
    trainer = Recorder(
        model=tiny_bert(),
        args=args,
        train_dataset=dataset,
        sampler=samplers[sampler](),
        selector=make_selector(selector),
        optimizer_cls_and_kwargs=(StochGradAdam, {"lr": 3e-3, "sampling_rate": 0.5, "seed": 0}),
        callbacks=[StopAt(stop)] if stop else None,
    )
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return trainer


def results(trainer: Recorder) -> dict[str, Any]:
    """What the tests compare: parameters, the sampler's, selector's and optimizer's
    states, and the batches trained."""
    return {
        "params": {k: v.detach().clone() for k, v in trainer.model.state_dict().items()},
        "selector": trainer.selector.state_dict() if trainer.selector else None,
        "sampler": trainer.sampler.state_dict(),  # every rank: InfoBatch's is a collective
        "generators": trainer.optimizer.state_dict()["generators"],
        "batches": trainer.batches,
        "trained": trainer.trained,
        "samples_backpropagated": trainer.samples_backpropagated,
        "global_step": trainer.state.global_step,
    }


def main(out: Path) -> None:
    """Under torchrun: SRS + SIFT + StochGradAdam straight, then stopped 2 steps into
    epoch 1 and resumed; InfoBatch one epoch over 61 samples (a global tail for 2 ranks).
    Writes ``{scenario: results(...)}`` and the world size to ``OUT/rank{r}.pt``."""
    stop = STOP_2_RANKS
    runs = {
        "straight": train(out / "straight", selector="sift"),
        "stopped": train(out / "stopped", selector="sift", stop=stop),
    }
    runs["resumed"] = train(
        out / "resumed", selector="sift", resume=out / "stopped" / f"checkpoint-{stop}"
    )
    runs["infobatch"] = train(out / "infobatch", sampler="infobatch", epochs=1, n=61)
    saved = {name: results(trainer) for name, trainer in runs.items()}
    world, rank = runs["straight"].args.world_size, runs["straight"].args.process_index
    torch.save({"world": world, **saved}, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
