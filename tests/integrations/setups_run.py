"""Setups users write, under ``torchrun`` (two gloo processes): the subject of
test_setups.py.

    torchrun --standalone --nproc_per_node=2 setups_run.py OUT

Each rank writes ``OUT/rank{R}.json``. For each way of building the training loader,
the dataset indices it trained in one epoch, or the error:

- ``prepared``: ``accelerator.prepare(DataLoader(..., sampler=SoftRandomSampler(...)))``;
- ``hf_sampler``: a Hugging Face ``Trainer`` whose ``_get_train_sampler`` returns one;
- ``prepare_loader`` and ``sieve_trainer``: sievetrain's own ways, for comparison.

And ``optimizer_first``: the parameters (as a list) after a ``SieveTrainer`` epoch
whose ``StochGradAdam(seed=None)`` was built before ``TrainingArguments`` started the
process group, each process having its own global seed.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from transformers import Trainer, TrainingArguments

from sievetrain.data import IndexedDataset
from sievetrain.integrations.accelerate import prepare_loader
from sievetrain.integrations.hf import SieveTrainer
from sievetrain.optim import StochGradAdam
from sievetrain.sampling import SoftRandomSampler

N, RATIO, BATCH = 48, 0.5, 4  # 24 samples an epoch, 12 per rank


def data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    return TensorDataset(torch.randn(N, 3, generator=g), torch.randint(0, 2, (N,), generator=g))


class Dicts(Dataset):
    """The items as a Hugging Face ``Trainer`` feeds them to a model."""

    def __init__(self) -> None:
        self.pairs = data()

    def __len__(self) -> int:
        return N

    def __getitem__(self, i: int) -> dict:
        x, y = self.pairs[i]
        return {"input_ids": x, "labels": y}


class Linear(nn.Module):
    """A model as the ``Trainer`` calls it: keyword inputs, an output with ``logits``;
    it records the dataset indices of every training batch."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, 2)
        self.trained: list[int] = []

    def forward(self, input_ids, labels=None, idx=None):
        if idx is not None:
            self.trained += idx.tolist()
        logits = self.layer(input_ids)
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return {"loss": loss, "logits": logits}


def attempt(run) -> dict:
    """``{"trained": [...]}``, or ``{"error": message}`` if ``run`` raised ValueError."""
    try:
        return {"trained": run()}
    except ValueError as error:
        return {"error": str(error)}


def prepared() -> list[int]:
    accelerator = Accelerator(cpu=True)
    sampler = SoftRandomSampler(N, RATIO, seed=0)
    loader = accelerator.prepare(DataLoader(IndexedDataset(data()), BATCH, sampler=sampler))
    return [i for _, _, idx in loader for i in idx.tolist()]


def ours_prepare_loader() -> list[int]:
    accelerator = Accelerator(cpu=True)
    sampler = SoftRandomSampler(N, RATIO, seed=0)
    loader = prepare_loader(accelerator, IndexedDataset(data()), BATCH, sampler=sampler)
    return [i for _, _, idx in loader for i in idx.tolist()]


def _args(out: Path) -> TrainingArguments:
    return TrainingArguments(
        str(out),
        use_cpu=True,
        per_device_train_batch_size=BATCH,
        num_train_epochs=1,
        report_to="none",
        save_strategy="no",
        disable_tqdm=True,
        remove_unused_columns=False,
    )


def hf_sampler(out: Path) -> list[int]:
    class SamplerTrainer(Trainer):  # the advice sievetrain once gave
        def _get_train_sampler(self, train_dataset=None):
            return SoftRandomSampler(N, RATIO, seed=0)

    model = Linear()
    args = _args(out / "hf")
    SamplerTrainer(model=model, args=args, train_dataset=IndexedDataset(Dicts())).train()
    return model.trained


def sieve_trainer(out: Path) -> list[int]:
    model = Linear()
    args = _args(out / "sieve")
    trainer = SieveTrainer(
        model=model,
        args=args,
        train_dataset=IndexedDataset(Dicts()),
        sampler=SoftRandomSampler(N, RATIO, seed=0),
    )
    recorded = []
    loss = trainer.compute_loss

    def record(model, inputs, *args, **kwargs):
        recorded.extend(inputs["idx"].tolist())
        return loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = record
    trainer.train()
    return recorded


def optimizer_first(out: Path) -> list[float]:
    torch.manual_seed(0)  # the same initial weights on both processes
    model = Linear()
    torch.manual_seed(1000 + int(os.environ["RANK"]))  # each process its own seeds
    optimizer = StochGradAdam(model.parameters(), lr=0.05, sampling_rate=0.5)  # seed=None
    args = _args(out / "optimizer")  # starts the process group
    trainer = SieveTrainer(
        model=model,
        args=args,
        train_dataset=IndexedDataset(Dicts()),
        sampler=SoftRandomSampler(N, RATIO, seed=0),
        optimizers=(optimizer, None),
    )
    trainer.train()
    return torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()


def main(out: Path) -> None:
    torch.set_num_threads(1)
    results = {  # the first, before anything has started the process group
        "optimizer_first": attempt(lambda: optimizer_first(out)),
        "prepared": attempt(prepared),
        "prepare_loader": attempt(ours_prepare_loader),
        "hf_sampler": attempt(lambda: hf_sampler(out)),
        "sieve_trainer": attempt(lambda: sieve_trainer(out)),
    }
    rank = torch.distributed.get_rank()
    (out / f"rank{rank}.json").write_text(json.dumps(results))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
