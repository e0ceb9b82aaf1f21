"""A training script whose loader is built at module level, before any process group:
the subject of test_late_ranks.py, run under ``torchrun --nproc_per_node=2``::

    late_ranks_run.py MODE OUT

MODE ``plain`` starts the group itself (``init_process_group``) and iterates the loader
by hand; ``lightning`` passes the loader to plain Lightning (``trainer.fit(model,
train_dataloaders=LOADER)``, ``strategy="ddp"``, no sievetrain integration); and
``accelerate`` gives the sampler to ``prepare_loader`` after ``Accelerator()``. Each rank
writes ``OUT/MODE-RANK.json``: the dataset indices it trained in each epoch, and (plain)
the error a sampler planned before the group met in it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from sievetrain.data import IndexedDataset
from sievetrain.sampling import SoftRandomSampler

N, RATIO, BATCH, EPOCHS = 40, 0.5, 4, 2  # 20 samples an epoch: 10 per rank
DATA = TensorDataset(
    torch.randn(N, 3, generator=torch.Generator().manual_seed(0)), torch.arange(N) % 2
)
SAMPLER = SoftRandomSampler(N, RATIO, seed=0)  # built here: no process group yet
LOADER = DataLoader(IndexedDataset(DATA), batch_size=BATCH, sampler=SAMPLER)
EARLY = SoftRandomSampler(N, RATIO, seed=0)
len(EARLY)  # plans an epoch for the one process there is now


def plain() -> tuple[int, dict]:
    dist.init_process_group("gloo")
    try:
        EARLY.set_epoch(0)
        refused = None
    except ValueError as error:
        refused = str(error)
    trained = {}
    for epoch in range(EPOCHS):
        SAMPLER.set_epoch(epoch)
        trained[epoch] = [i for _, _, idx in LOADER for i in idx.tolist()]
    return dist.get_rank(), {"trained": trained, "refused": refused}


def lightning() -> tuple[int, dict]:
    import lightning as L

    class Recorder(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 2)
            self.trained: dict[int, list[int]] = {}

        def training_step(self, batch, batch_idx):
            x, y, idx = batch
            self.trained.setdefault(self.current_epoch, []).extend(idx.tolist())
            return nn.functional.cross_entropy(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    model = Recorder()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=EPOCHS,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, train_dataloaders=LOADER)
    return trainer.global_rank, {"trained": model.trained}


def accelerate() -> tuple[int, dict]:
    from accelerate import Accelerator

    from sievetrain.integrations.accelerate import prepare_loader

    accelerator = Accelerator(cpu=True)  # starts the process group
    loader = prepare_loader(accelerator, IndexedDataset(DATA), BATCH, sampler=SAMPLER)
    trained = {}
    for epoch in range(EPOCHS):
        loader.set_epoch(epoch)
        trained[epoch] = [i for _, _, idx in loader for i in idx.tolist()]
    return accelerator.process_index, {"trained": trained}


if __name__ == "__main__":
    torch.set_num_threads(1)
    mode, out = sys.argv[1], Path(sys.argv[2])
    rank, record = {"plain": plain, "lightning": lightning, "accelerate": accelerate}[mode]()
    (out / f"{mode}-{rank}.json").write_text(json.dumps(record))
    if dist.is_initialized():  # Lightning and accelerate leave it; gloo's threads then
        dist.destroy_process_group()  # may abort at exit ("terminate called")
