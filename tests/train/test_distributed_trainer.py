"""The Trainer on two gloo ranks: the same run as one process, merged figures, resume."""

import io

import torch
from torch import nn
from torch.utils.data import TensorDataset

from sievetrain import distributed
from sievetrain.optim import StochGradAdam
from sievetrain.rng import derive_seed
from sievetrain.sampling import SoftRandomSampler
from sievetrain.train import TrainConfig, Trainer

N_TRAIN, N_TEST = 512, 200


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_TEST, 12, generator=g)
    y = (x[:, :3].sum(dim=1) > 0).long() + 2 * (x[:, 3] > 0).long()  # 4 classes
    return TensorDataset(x[:N_TRAIN], y[:N_TRAIN]), TensorDataset(x[N_TRAIN:], y[N_TRAIN:])


def _trainer(optimizer="sgd", ratio=1.0, epochs=3):
    """A model without batch norm: DDP's mean of the ranks' gradients is then the
    gradient of the global batch."""
    with torch.random.fork_rng():
        torch.manual_seed(derive_seed(0, "init"))
        model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 4))
    if optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    else:
        opt = StochGradAdam(model.parameters(), lr=0.01, sampling_rate=0.5)  # seed=None
    train, test = _data()
    return Trainer(
        model,
        opt,
        train,
        test,
        config=TrainConfig(epochs=epochs, batch_size=64),
        sampler=SoftRandomSampler(N_TRAIN, ratio, seed=0),
    )


def _figures(trainer, summary):
    return {
        "params": [p.detach().clone() for p in trainer.module.parameters()],
        "keys": sorted(trainer.state_dict()["model"]),
        **{
            k: getattr(summary, k)
            for k in (
                "final_test_accuracy",
                "final_test_loss",
                "samples_backpropagated",
                "samples_forwarded",
                "optimizer_steps",
                "coverage",
                "world_size",
                "train_time_s",
            )
        },
        "history": summary.history,
        "in_sync": distributed.in_sync(trainer.module),
    }


def _fit(rank, world, ratio):
    trainer = _trainer(ratio=ratio)
    return _figures(trainer, trainer.fit())


def test_two_ranks_train_the_single_process_run(ranks):
    single = _trainer()
    expected = _figures(single, single.fit())
    r0, r1 = ranks(_fit, 1.0)
    for r in (r0, r1):
        assert r["in_sync"] and r["world_size"] == 2
        assert r["keys"] == expected["keys"]  # no "module." prefix in checkpoints
        for got, want in zip(r["params"], expected["params"], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
        for key in ("samples_backpropagated", "samples_forwarded", "optimizer_steps", "coverage"):
            assert r[key] == expected[key], key  # the job's counts, not one rank's
        assert r["final_test_accuracy"] == expected["final_test_accuracy"]  # whole test set
        assert abs(r["final_test_loss"] - expected["final_test_loss"]) < 1e-5
        for h, e in zip(r["history"], expected["history"], strict=True):
            assert abs(h["train_loss"] - e["train_loss"]) < 1e-5 and h["coverage"] == e["coverage"]
    assert r0["train_time_s"] == r1["train_time_s"]  # the slowest rank's, on both
    assert expected["world_size"] == 1


def _resume(rank, world):
    straight = _trainer("stochgradadam")
    straight.fit()
    interrupted = _trainer("stochgradadam")
    interrupted.fit(until=1)
    state = interrupted.state_dict()  # every rank calls it; rank 0's is the file
    buffer = io.BytesIO()
    torch.save(state, buffer)
    blob = distributed.broadcast_object(buffer.getvalue() if rank == 0 else None)
    resumed = _trainer("stochgradadam")
    resumed.load_state_dict(torch.load(io.BytesIO(blob), weights_only=True))
    resumed.fit()
    same = all(
        torch.equal(a, b)
        for a, b in zip(straight.module.parameters(), resumed.module.parameters(), strict=True)
    )
    return same, distributed.in_sync(resumed.module), resumed.summary().optimizer_steps


def test_a_resumed_two_rank_run_is_bitwise_the_straight_one(ranks):
    for same, in_sync, steps in ranks(_resume):
        assert same and in_sync and steps == 3 * 8


def _methods(rank, world):
    from sievetrain.data import load_dataset
    from sievetrain.models import build_model
    from sievetrain.sampling import GradMatchSampler, InfoBatchSampler
    from sievetrain.selection import SIFT, SelectiveBackprop

    data = load_dataset("mnist1d", train_size=640, test_size=128)
    n, out = len(data.train), {}
    cases = {
        "selective-backprop": dict(selector=SelectiveBackprop(2.0, seed=0, full_epochs=0)),
        "sift": dict(selector=SIFT(0.5, num_classes=10, head="linear")),
        "infobatch": dict(sampler=InfoBatchSampler(n, 0.5, epochs=3, seed=0)),
        "gradmatch": dict(sampler=GradMatchSampler(n, 0.5, batch_size=64, epochs=3, kappa=0)),
    }
    for name, parts in cases.items():
        torch.manual_seed(0)
        model = build_model("mnist1d-cnn", num_classes=10, input_shape=data.input_shape)
        trainer = Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
            data.train,
            data.test,
            config=TrainConfig(epochs=3, batch_size=64),
            **parts,
        )
        summary = trainer.fit()
        selector = trainer.selector
        head = selector.exit.linear if name == "sift" else None
        out[name] = {
            "steps": summary.optimizer_steps,
            "local_steps": trainer.acct.optimizer_steps,
            "backpropagated": summary.samples_backpropagated,
            "accuracy": summary.final_test_accuracy,
            "in_sync": distributed.in_sync(trainer.module),
            "head_in_sync": head is None or distributed.in_sync(head),
            "state": trainer.state_dict()["sampler"].get("scores"),
        }
    return out


def test_every_method_trains_on_two_ranks_in_step(ranks):
    """Selective Backprop and SIFT keep equal step counts (a deadlock would time out),
    InfoBatch and GRAD-MATCH plan one global subset: the replicas never drift apart."""
    r0, r1 = ranks(_methods, timeout=240)
    for name in r0:
        a, b = r0[name], r1[name]
        assert a["in_sync"] and b["in_sync"] and a["head_in_sync"] and b["head_in_sync"], name
        assert a["steps"] == b["steps"] == a["local_steps"] > 0, name
        assert a["backpropagated"] == b["backpropagated"] and a["accuracy"] == b["accuracy"], name
    assert torch.equal(r0["infobatch"]["state"], r1["infobatch"]["state"])  # merged scores
    # Selective Backprop keeps a fixed count per batch under DDP: k of each rank's 32.
    k = r0["selective-backprop"]["backpropagated"] / (3 * 640 / 64) / 2
    assert k == int(k) and 0 < k < 32
