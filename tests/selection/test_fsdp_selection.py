"""SIFT and Selective Backprop with an FSDP2 model (``fully_shard``, two gloo ranks on
the CPU): the selectors score the sharded model (its forward gathers the shards) and
choose what they choose under DDP, so the run trains the DDP run's samples to its
parameters, up to float round-off."""

from __future__ import annotations

import pytest
import torch
from ranks import run_ranks
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.utils.data import TensorDataset

from sievetrain import Sieve
from sievetrain.data import make_loader
from sievetrain.models import MNIST1DCNN
from sievetrain.sampling import SoftRandomSampler
from sievetrain.selection import SIFT, SelectiveBackprop

N, BATCH, CLASSES, EPOCHS = 96, 16, 4, 2  # BATCH: the global batch, 8 per rank


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 1, 40, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    x[torch.arange(N), 0, y * 10 + 5] += 4.0
    return TensorDataset(x, y)


def _selector(name: str):
    if name == "sift":
        return SIFT(0.5, num_classes=CLASSES, stage="stage1", head="linear")
    return SelectiveBackprop(1.0, history=64, full_epochs=0, seed=0)


def _train(rank: int, world: int, kind: str, name: str) -> dict:
    torch.manual_seed(0)  # the same initial weights on every rank
    net = MNIST1DCNN(CLASSES, width=4)
    if kind == "ddp":
        model = torch.nn.parallel.DistributedDataParallel(net)
    else:
        for stage in net.children():
            fully_shard(stage)
        model = fully_shard(net)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    sampler = SoftRandomSampler(N, 1.0, seed=0)
    sieve = Sieve(sampler, _selector(name), batch_size=BATCH // world)
    loader = make_loader(_data(), BATCH // world, sampler=sampler)
    trained = []
    for epoch in range(EPOCHS):
        sieve.begin_epoch(epoch, model, _data())
        model.train()
        for x, y, idx in sieve.batches(loader, model):
            loss = sieve.loss(model(x), y, idx)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            trained.append(idx.tolist())
    parts = [p.full_tensor() if isinstance(p, DTensor) else p for p in net.parameters()]
    return {"trained": trained, "params": [p.detach().clone() for p in parts]}


def _both(rank: int, world: int, name: str) -> dict:
    return {kind: _train(rank, world, kind, name) for kind in ("ddp", "fsdp")}


@pytest.mark.parametrize("name", ["sift", "selective-backprop"])
def test_a_selector_on_an_fsdp2_model_trains_what_it_trains_under_ddp(name):
    ranks = run_ranks(_both, name)
    for result in ranks:
        ddp, fsdp = result["ddp"], result["fsdp"]
        assert fsdp["trained"] == ddp["trained"]
        for a, b in zip(fsdp["params"], ddp["params"], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The ranks trained disjoint halves of each step's global batch, in step.
    steps = [result["fsdp"]["trained"] for result in ranks]
    assert len(steps[0]) == len(steps[1]) > EPOCHS
    for mine, theirs in zip(*steps, strict=True):
        assert len(mine) == len(theirs) and not set(mine) & set(theirs)
    if name == "selective-backprop":  # gathered into full batches of 8 per rank
        assert sum(len(s) == BATCH // 2 for s in steps[0]) >= len(steps[0]) - EPOCHS
