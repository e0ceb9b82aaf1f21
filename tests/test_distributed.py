"""The process-group helpers, on two gloo ranks."""

import pytest
import torch
from torch import nn

from sievetrain import distributed


def _helpers(rank, world):
    size, me = distributed.world()
    gathered = distributed.all_gather(torch.tensor([rank * 10.0, rank + 1.0]))
    summed = distributed.all_reduce(torch.tensor([rank + 1.0]))
    biggest = distributed.all_reduce(torch.tensor([rank], dtype=torch.int64), "max")
    obj = distributed.broadcast_object({"from": rank})
    seed = distributed.shared_seed(None, "test")
    torch.manual_seed(rank)  # different parameters on each rank
    layer = nn.Linear(3, 2)
    apart = distributed.in_sync(layer)
    torch.manual_seed(0)
    together = distributed.in_sync(nn.Linear(3, 2))
    param = nn.Parameter(torch.zeros(2))
    param.grad = torch.full((2,), float(rank))
    distributed.average_gradients([param])
    return {
        "world": (size, me),
        "gathered": gathered.tolist(),
        "summed": summed.item(),
        "max": biggest.item(),
        "obj": obj,
        "seed": seed,
        "apart": apart,
        "together": together,
        "grad": param.grad.tolist(),
    }


def test_helpers_on_two_ranks(ranks):
    r0, r1 = ranks(_helpers)
    assert (r0["world"], r1["world"]) == ((2, 0), (2, 1))
    for r in (r0, r1):
        assert r["gathered"] == [0.0, 1.0, 10.0, 2.0]
        assert r["summed"] == 3.0 and r["max"] == 1
        assert r["obj"] == {"from": 0}
        assert (r["apart"], r["together"]) == (False, True)
        assert r["grad"] == [0.5, 0.5]
    assert r0["seed"] == r1["seed"]


def test_single_process_is_the_identity():
    assert distributed.world() == (1, 0) and distributed.is_main()
    t = torch.tensor([1.0, 2.0])
    assert torch.equal(distributed.all_reduce(t), t) and torch.equal(distributed.all_gather(t), t)
    assert distributed.broadcast_object("x") == "x"
    assert distributed.shared_seed(7, "any") == 7
    torch.manual_seed(3)
    first = distributed.shared_seed(None, "p")
    torch.manual_seed(3)
    assert distributed.shared_seed(None, "p") == first  # follows torch.manual_seed
    assert distributed.in_sync(nn.Linear(2, 2))
    assert distributed.replicas() == (1, 0) and distributed.replicas(4, 3) == (4, 3)
    with pytest.raises(ValueError, match="rank"):
        distributed.replicas(2, 2)


def _replicas(rank, world):
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        default = distributed.replicas()
        single = distributed.replicas(1)
        distributed.replicas(1)  # warns once per process
    ddp = nn.parallel.DistributedDataParallel(nn.Linear(2, 2))
    return default, single, [str(w.message) for w in caught], distributed.unwrap(ddp) is ddp.module


def test_replicas_default_from_the_process_group(ranks):
    for rank, (default, single, caught, unwrapped) in enumerate(ranks(_replicas)):
        assert default == (2, rank) and single == (1, 0) and unwrapped
        assert len(caught) == 1 and "num_replicas=1 in a process group of 2 ranks" in caught[0]
