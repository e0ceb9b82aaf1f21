"""One accelerate training run for test_accelerate.py, under ``python`` or ``torchrun``.

    accelerate_run.py OUT SAMPLER PHASE...

SAMPLER is ``srs`` or ``infobatch``; with SIFT and StochGradAdam (seed shared by rank 0).
Each PHASE builds everything afresh and writes, per rank, ``OUT/PHASE-RANK.pt``: the
dataset indices of each epoch's batches (``trained``), InfoBatch's global plan of each
epoch (``plans``), the model's parameters, the selector's and the optimizer's state.

- ``full`` trains EPOCHS epochs;
- ``stop`` trains STOP[1] batches of epoch STOP[0] (after the earlier epochs), then calls
  ``accelerator.save_state(OUT/checkpoint)`` and stops;
- ``resume`` starts from another model initialisation, calls ``accelerator.load_state``
  and trains to the end.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import TensorDataset

from sievetrain import Sieve
from sievetrain.data import IndexedDataset
from sievetrain.integrations.accelerate import prepare_loader, register_for_checkpointing
from sievetrain.optim import StochGradAdam
from sievetrain.sampling import InfoBatchSampler, SoftRandomSampler
from sievetrain.selection import SIFT

N, RATIO, BATCH, EPOCHS = 90, 0.5, 4, 3  # SRS: 45 a epoch, odd: 2 ranks drop a tail of 1
STOP = (1, 2)  # (epoch, batches trained in it) when the stopped run saves


def make_model(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv1d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(40, 3))


def make_sampler(kind: str) -> SoftRandomSampler | InfoBatchSampler:
    if kind == "srs":
        return SoftRandomSampler(N, RATIO, seed=0)
    return InfoBatchSampler(N, 0.5, epochs=EPOCHS, seed=0)


def run(out: Path, kind: str, phase: str) -> None:
    accelerator = Accelerator(cpu=True)
    model = make_model(1 if phase == "resume" else 0)  # resume: only load_state restores it
    optimizer = StochGradAdam(model.parameters(), lr=0.01, sampling_rate=0.5)
    model, optimizer = accelerator.prepare(model, optimizer)
    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(N, 1, 12, generator=g), torch.randint(0, 3, (N,), generator=g))
    sampler = make_sampler(kind)
    loader = prepare_loader(accelerator, IndexedDataset(data), BATCH, sampler=sampler)
    sieve = Sieve(sampler, SIFT(0.5, stage="0", head="linear", num_classes=3))
    register_for_checkpointing(accelerator, sieve)
    if phase == "resume":
        accelerator.load_state(str(out / "checkpoint"))

    trained: dict[int, list[list[int]]] = {}
    plans: dict[int, torch.Tensor] = {}
    for epoch in range(sampler.epoch, EPOCHS):
        sieve.begin_epoch(epoch, model, data)
        if kind == "infobatch":  # the epoch's global plan (a collective: every rank asks)
            plans[epoch] = sampler.state_dict()["indices"]
        trained[epoch] = []
        for x, y, idx in sieve.batches(_recorded(loader, trained[epoch]), model):
            loss = sieve.loss(model(x), y, idx)  # InfoBatch's weights, and its losses fed
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            if phase == "stop" and (epoch, len(trained[epoch])) == STOP:
                accelerator.save_state(str(out / "checkpoint"))
                return record(out, phase, accelerator, model, optimizer, sieve, trained, plans)
    record(out, phase, accelerator, model, optimizer, sieve, trained, plans)


def _recorded(loader, into: list[list[int]]):
    """``loader``'s batches, each one's dataset indices appended to ``into``."""
    for batch in loader:
        into.append(batch[2].tolist())
        yield batch


def record(out, phase, accelerator, model, optimizer, sieve, trained, plans) -> None:
    params = {k: v.clone() for k, v in accelerator.unwrap_model(model).state_dict().items()}
    result = {
        "world": accelerator.num_processes,
        "trained": trained,
        "plans": plans,
        "params": params,
        "selector": sieve.selector.state_dict(),
        "optimizer": optimizer.state_dict(),
    }
    torch.save(result, out / f"{phase}-{accelerator.process_index}.pt")


if __name__ == "__main__":
    torch.set_num_threads(1)
    folder, sampler_kind, *phases = sys.argv[1:]
    for name in phases:
        run(Path(folder), sampler_kind, name)
