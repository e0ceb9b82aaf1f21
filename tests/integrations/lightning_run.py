"""A small Lightning fit with sievetrain's Sieve: the subject of test_lightning.py.

``run(...)`` fits in this process (one rank); under ``torchrun`` the same fit runs on
every rank (gloo, ``strategy="ddp"``)::

    torchrun --standalone --nproc_per_node=2 lightning_run.py METHOD OUT [--stop KIND:N]
        [--resume CKPT]

Each rank records, per training step, the epoch, ``batch_idx``, the loaded batch's
indices, the ones trained in the step and their losses, and at the end its parameters,
the sieve's state, the sampler's stats and what Lightning made of the loader, and
writes them to
``OUT/rank{R}.pt`` (tensors and plain types only). ``--stop step:S`` saves a checkpoint
after step S (``ModelCheckpoint(every_n_train_steps=S)``) and crashes at the next batch;
``--stop epoch:K`` saves at the end of epoch K - 1 (``every_n_epochs=1``) and crashes at
the start of epoch K. The checkpoint is ``OUT/stop.ckpt``.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO
from torch.utils.data import DataLoader, TensorDataset

from sievetrain.data import IndexedDataset
from sievetrain.integrations import ResumableLoader
from sievetrain.integrations.lightning import SieveCallback
from sievetrain.losses import sample_losses
from sievetrain.models import MNIST1DCNN
from sievetrain.optim import StochGradAdam
from sievetrain.sampling import GradMatchSampler, InfoBatchSampler, SoftRandomSampler
from sievetrain.selection import SIFT, SelectiveBackprop, Selector

N, BATCH, CLASSES = 96, 16, 4  # BATCH: the global batch; each of W ranks loads BATCH / W
EPOCHS = 4
INFOBATCH = {"prune": 0.5, "delta": 0.75, "seed": 0}  # anneals from epoch 3 on
METHODS = ("srs", "srs+sift", "infobatch", "gradmatch", "selective-backprop")


class Crash(RuntimeError):
    """The simulated failure after a checkpoint."""


def data() -> TensorDataset:
    """Synthetic sequences (N, 1, 40) whose class is where the peak is."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 1, 40, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    x[torch.arange(N), 0, y * 10 + 5] += 4.0
    return TensorDataset(x, y)


def make_sampler(method: str):
    """The method's sampler; built in train_dataloader(), where the process group is up."""
    if method in ("srs", "srs+sift"):
        return SoftRandomSampler(N, 0.5, seed=0)
    if method == "infobatch":
        return InfoBatchSampler(N, epochs=EPOCHS, **INFOBATCH)
    if method == "gradmatch":  # kappa=0: a selection every epoch, no warm start
        return GradMatchSampler(N, 0.5, batch_size=BATCH, epochs=EPOCHS, kappa=0.0, seed=0)
    return SoftRandomSampler(N, 1.0, seed=0)


def make_selector(method: str):
    if method == "srs+sift":
        return SIFT(0.5, num_classes=CLASSES, stage="net.stem", head="linear")
    if method == "selective-backprop":
        return SelectiveBackprop(1.0, history=64, full_epochs=1, seed=0)
    return None


class Classifier(L.LightningModule):
    def __init__(self, method: str, sieve: SieveCallback) -> None:
        super().__init__()
        torch.manual_seed(0)  # the same start on every rank and in every run
        self.net = MNIST1DCNN(CLASSES, width=4)
        self.method, self.sieve = method, sieve
        self.batches: list[dict] = []  # one record per training batch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train_dataloader(self) -> ResumableLoader:
        self.sampler = make_sampler(self.method)
        local = BATCH // self.trainer.world_size
        return self.sieve.dataloader(IndexedDataset(data()), local, sampler=self.sampler)

    def training_step(self, batch, batch_idx):
        trained = self.sieve.select(batch)  # None: nothing to train in this step
        record = {"epoch": self.current_epoch, "batch_idx": batch_idx, "idx": batch[2].tolist()}
        kept = [] if trained is None else trained[2].tolist()
        self.batches.append(record | {"kept": kept, "losses": []})
        if trained is None:
            return None  # no backward; the optimizer step finds no gradient
        x, y, idx = trained
        logits = self(x)
        self.batches[-1]["losses"] = sample_losses(logits.detach(), y).tolist()
        return self.sieve.loss(logits, y, idx)

    def configure_optimizers(self):
        if "sift" in self.method:  # StochGradAdam's generator goes into the checkpoint
            return StochGradAdam(self.parameters(), lr=3e-3)  # seed=None: rank 0's seed
        return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)


class ValidatedClassifier(Classifier):
    """Also validates (on a copy of the training data), recording the epochs it does."""

    def __init__(self, method: str, sieve: SieveCallback) -> None:
        super().__init__(method, sieve)
        self.validated: list[int] = []

    def val_dataloader(self) -> DataLoader:
        return DataLoader(data(), batch_size=BATCH)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0 and not self.trainer.sanity_checking:
            self.validated.append(self.current_epoch)


class WeightsOnlyIO(TorchCheckpointIO):
    """Loads a checkpoint with ``torch.load(weights_only=True)``, so nothing read runs
    code, on every version (2.5's ``fit`` has no ``weights_only`` and unpickles)."""

    def load_checkpoint(self, path, map_location=None, **kwargs):
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class _CrashAfterSave(L.Callback):
    def __init__(self, kind: str, at: int) -> None:
        self.kind, self.at = kind, at

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if self.kind == "step" and trainer.global_step == self.at:
            raise Crash(f"crash after step {self.at}")

    def on_train_epoch_start(self, trainer, pl_module):
        if self.kind == "epoch" and trainer.current_epoch == self.at:
            raise Crash(f"crash at the start of epoch {self.at}")


def run(
    method: str,
    out: Path,
    *,
    stop: str | None = None,
    resume: str | None = None,
    module: type[Classifier] = Classifier,
    world: int | None = None,
    selector: Selector | None = None,
) -> dict:
    """Fit ``method`` on ``world`` ranks (default: torchrun's), write and return this
    rank's record."""
    world = int(os.environ.get("WORLD_SIZE", "1")) if world is None else world
    sieve = SieveCallback(make_selector(method) if selector is None else selector)
    model = module(method, sieve)
    callbacks: list[L.Callback] = [sieve]
    if stop is not None:
        kind, at = stop.split(":")
        every = {"every_n_train_steps": int(at)} if kind == "step" else {"every_n_epochs": 1}
        callbacks += [
            ModelCheckpoint(dirpath=out, filename="stop", save_top_k=1, **every),
            _CrashAfterSave(kind, int(at)),
        ]
    trainer = L.Trainer(
        accelerator="cpu",
        devices=world,
        strategy="ddp" if world > 1 else "auto",
        max_epochs=EPOCHS,
        callbacks=callbacks,
        plugins=[WeightsOnlyIO()],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=stop is not None,
    )
    crashed = False
    try:
        trainer.fit(model, ckpt_path=resume)
    except Crash:
        crashed = True
    loader = trainer.train_dataloader
    record = {
        "world": trainer.world_size,
        "rank": trainer.global_rank,
        "crashed": crashed,
        "global_step": trainer.global_step,
        "batches": model.batches,
        "params": {k: v.detach().clone() for k, v in model.net.state_dict().items()},
        "sieve": sieve.state_dict(),
        "stats": model.sampler.stats(),
        "loader_is_ours": loader is sieve.loader and loader.sampler is model.sampler,
        "num_replicas": model.sampler.num_replicas,
        "validated": getattr(model, "validated", None),
    }
    out.mkdir(parents=True, exist_ok=True)
    torch.save(record, out / f"rank{trainer.global_rank}.pt")
    return record


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=METHODS)
    parser.add_argument("out", type=Path)
    parser.add_argument("--stop")
    parser.add_argument("--resume")
    args = parser.parse_args()
    torch.set_num_threads(1)
    run(args.method, args.out, stop=args.stop, resume=args.resume)
    if torch.distributed.is_initialized():  # Lightning leaves it; gloo's threads then
        torch.distributed.destroy_process_group()  # may abort at exit ("terminate called")
