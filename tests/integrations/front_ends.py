"""One sievetrain method run through every front end: sievetrain's ``Trainer``, a
hand-written loop, Lightning, the Hugging Face ``Trainer`` and accelerate, the subject
of test_one_protocol.py.

Each ``run_<front end>(method)`` trains the same model from the same weights on the
same data with plain SGD (constant learning rate, no clipping, no weight decay) for
EPOCHS epochs and returns ``(trained, params)``: the ``(epoch, dataset indices)`` of
every batch it backpropagated, in order, and the final parameters. A method is a
sampler and a selector (:func:`method`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from typing import Any

import torch
from lightning_run import CLASSES, N, data  # this folder is on the path: the same data
from torch import Tensor, nn
from torch.utils.data import Dataset, TensorDataset

from sievetrain import Sieve
from sievetrain.data import IndexedDataset, make_loader
from sievetrain.models import MNIST1DCNN
from sievetrain.sampling import EpochSampler, GradMatchSampler, SoftRandomSampler
from sievetrain.selection import RhoLoss, SelectiveBackprop, Selector

BATCH, EPOCHS, LR = 16, 3, 0.05
METHODS = ("selective-backprop", "gradmatch", "rho-loss")

Trained = list[tuple[int, list[int]]]


def method(name: str) -> tuple[EpochSampler, Selector | None]:
    """The method's sampler and selector, as every front end builds them."""
    if name == "selective-backprop":  # full data; keeps ~half of each batch after epoch 0
        return SoftRandomSampler(N, 1.0, seed=0), SelectiveBackprop(1.0, history=64, seed=0)
    if name == "rho-loss":  # a reference phase first; half of candidate batches of 2
        selector = RhoLoss(0.5, candidates=2, holdout=0.25, ref_epochs=2, ref_batch=8, seed=0)
        return SoftRandomSampler(N, 1.0, seed=0), selector
    if name == "gradmatch":  # a fresh weighted coreset of half the batches every epoch
        sampler = GradMatchSampler(N, 0.5, batch_size=BATCH, epochs=EPOCHS, kappa=0.0, seed=0)
        return sampler, None
    raise ValueError(name)


def net() -> nn.Module:
    torch.manual_seed(0)  # the same initial weights in every front end
    return MNIST1DCNN(CLASSES, width=4)


def params(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def record(sieve: Sieve, trained: Trained) -> None:
    """Append ``(epoch, indices)`` to ``trained`` whenever ``sieve.loss`` is called."""
    loss = sieve.loss

    def recorded(logits: Tensor, y: Tensor, idx: Tensor) -> Tensor:
        trained.append((sieve.sampler.epoch, idx.tolist()))
        return loss(logits, y, idx)

    sieve.loss = recorded


def run_trainer(name: str) -> tuple[Trained, dict]:
    from sievetrain.train import TrainConfig, Trainer

    model = net()
    sampler, selector = method(name)
    config = TrainConfig(epochs=EPOCHS, batch_size=BATCH, schedule="constant")
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    trainer = Trainer(model, optimizer, data(), data(), config=config, sampler=sampler,
                      selector=selector)  # fmt: skip
    trained: Trained = []
    record(trainer.sieve, trained)
    trainer.fit()
    return trained, params(model)


def run_own_loop(name: str) -> tuple[Trained, dict]:
    """The README's own-loop recipe."""
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    return _loop(name, model, optimizer, lambda loss: loss.backward()), params(model)


def _loop(name: str, model: nn.Module, optimizer, backward, loader_for=None) -> Trained:
    """EPOCHS epochs of the own-loop recipe: a sieve over the method, its batches, its
    loss; the loader is ``loader_for(dataset, sampler)``, or sievetrain's own."""
    train = data()
    sampler, selector = method(name)
    sieve = Sieve(sampler, selector, batch_size=BATCH)
    size = sieve.loader_batch_size  # candidate batches of several (RHO-LOSS)
    if loader_for is None:
        loader = make_loader(train, size, sampler=sampler)
    else:
        loader = loader_for(IndexedDataset(train), size, sampler)
    trained: Trained = []
    record(sieve, trained)
    for epoch in range(EPOCHS):
        sieve.begin_epoch(epoch, model, train)
        model.train()
        for x, y, idx in sieve.batches(loader, model):
            loss = sieve.loss(model(x), y, idx)
            optimizer.zero_grad()
            backward(loss)
            optimizer.step()
    return trained


def run_lightning(name: str) -> tuple[Trained, dict]:
    import lightning as L

    from sievetrain.integrations import ResumableLoader
    from sievetrain.integrations.lightning import SieveCallback

    sampler, selector = method(name)
    callback = SieveCallback(selector)
    trained: Trained = []

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net()

        def forward(self, x: Tensor) -> Tensor:  # GRAD-MATCH's refresh scores the module
            return self.net(x)

        def train_dataloader(self) -> ResumableLoader:
            return callback.dataloader(IndexedDataset(data()), BATCH, sampler=sampler)

        def training_step(self, batch, batch_idx):
            batch = callback.select(batch, self.net)
            if batch is None:
                return None
            x, y, idx = batch
            trained.append((self.current_epoch, idx.tolist()))
            return callback.loss(self.net(x), y, idx)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=LR)

    module = Module()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=EPOCHS,
        callbacks=[callback],
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
    )
    trainer.fit(module)
    return trained, params(module.net)


class _Dicts(Dataset):
    """The data as a Hugging Face ``Trainer`` feeds it: ``{"input_ids", "labels"}``."""

    def __init__(self, pairs: TensorDataset) -> None:
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        x, y = self.pairs[i]
        return {"input_ids": x, "labels": y}


class _Keywords(nn.Module):
    """The network as a Hugging Face model: keyword inputs, an output with logits."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, input_ids: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        return {"logits": self.net(input_ids)}


def run_hf(name: str) -> tuple[Trained, dict]:
    from transformers import TrainingArguments

    from sievetrain.integrations.hf import SieveTrainer

    _reset_accelerate()
    model = _Keywords(net())
    sampler, selector = method(name)
    trained: Trained = []

    class Recorded(SieveTrainer):
        def get_train_dataloader(self):
            loader = super().get_train_dataloader()
            if not trained and self.sieve.loss.__func__ is Sieve.loss:  # once
                record(self.sieve, trained)
            return loader

    with tempfile.TemporaryDirectory() as out:
        args = TrainingArguments(
            out,
            use_cpu=True,
            per_device_train_batch_size=BATCH,
            num_train_epochs=EPOCHS,
            lr_scheduler_type="constant",
            max_grad_norm=0.0,  # no clipping
            weight_decay=0.0,
            report_to="none",
            save_strategy="no",
            logging_strategy="no",
            disable_tqdm=True,
        )
        trainer = Recorded(
            model=model,
            args=args,
            train_dataset=IndexedDataset(_Dicts(data())),
            sampler=sampler,
            selector=selector,
            optimizer_cls_and_kwargs=(torch.optim.SGD, {"lr": LR}),
        )
        trainer.train()
    _reset_accelerate()
    return trained, params(model.net)


def run_accelerate(name: str) -> tuple[Trained, dict]:
    """The accelerate recipe."""
    from accelerate import Accelerator

    from sievetrain.integrations.accelerate import prepare_loader

    _reset_accelerate()
    accelerator = Accelerator(cpu=True)
    model = net()
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    model, optimizer = accelerator.prepare(model, optimizer)

    def loader(dataset, size, sampler):
        return prepare_loader(accelerator, dataset, size, sampler=sampler)

    trained = _loop(name, model, optimizer, accelerator.backward, loader)
    result = params(accelerator.unwrap_model(model))
    _reset_accelerate()
    return trained, result


def _reset_accelerate() -> None:
    """accelerate keeps its state process-wide: one Accelerator at a time."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


FRONT_ENDS: dict[str, Callable[[str], tuple[Trained, Any]]] = {
    "trainer": run_trainer,
    "own loop": run_own_loop,
    "lightning": run_lightning,
    "hf": run_hf,
    "accelerate": run_accelerate,
}
