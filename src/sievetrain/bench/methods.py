"""The methods sievetrain registers. A new method is a new entry here (or in a
module that calls ``register``), not an edit of the engine."""

from __future__ import annotations

from typing import Any

from sievetrain.bench.registry import Method, register
from sievetrain.optim import OPTIMIZER_DEFAULTS, build_optimizer
from sievetrain.sampling import GradMatchSampler, SoftRandomSampler
from sievetrain.selection import SIFT, RandomKeep, SelectiveBackprop

__all__: list[str] = []

SRS_OPTIONS = {
    "interval": 1,  # epochs between fresh subsets (R); 0 = one subset for the whole run
    "replacement": False,  # True: m i.i.d. indices per epoch instead of m distinct ones
    "granularity": "sample",  # "sample" or "batch" (whole fixed mini-batches, as on CIFAR-10)
    "warm_start": 0,  # epochs on the full data before sampling starts
}


def _srs(ratio: float | None, opts: dict[str, Any], ctx: dict[str, Any]) -> SoftRandomSampler:
    return SoftRandomSampler(
        ctx["n"],
        1.0 if ratio is None else ratio,
        seed=ctx["seed"],
        interval=opts["interval"],
        within_epoch_replacement=opts["replacement"],
        granularity=opts["granularity"],
        batch_size=ctx["batch_size"],
        warm_start_epochs=opts["warm_start"],
    )


def _fixed(ratio: float | None, opts: dict[str, Any], ctx: dict[str, Any]) -> SoftRandomSampler:
    return _srs(ratio, {**SRS_OPTIONS, **opts, "interval": 0}, ctx)


def _optimizer(name: str, knob: str | None = None):
    def build(value: float | None, opts: dict[str, Any], ctx: dict[str, Any]):
        if knob is not None:
            opts = {**opts, knob: value}
        return build_optimizer(name, ctx["params"], seed=ctx["seed"], **opts)

    return build


register(
    Method(
        "full",
        "sampler",
        "full data, reshuffled every epoch (the baseline)",
        lambda value, opts, ctx: _srs(1.0, {**SRS_OPTIONS}, ctx),
    )
)
register(
    Method(
        "srs",
        "sampler",
        "Soft Random Sampling: a fresh uniform random subset every `interval` epochs",
        _srs,
        knob="ratio",
        default=0.3,
        options=SRS_OPTIONS,
    )
)
register(
    Method(
        "fixed",
        "sampler",
        "one uniform random subset for the whole run (SRS with interval 0)",
        _fixed,
        knob="ratio",
        default=0.3,
        options={k: v for k, v in SRS_OPTIONS.items() if k in ("granularity", "replacement")},
    )
)
register(
    Method(
        "gradmatch",
        "sampler",
        "GRAD-MATCH per-batch: the weighted batches whose last-layer gradient matches the "
        "full data's, re-selected every `interval` epochs, after a warm start",
        lambda ratio, opts, ctx: GradMatchSampler(
            ctx["n"],
            0.3 if ratio is None else ratio,
            batch_size=ctx["batch_size"],
            epochs=ctx["epochs"],
            seed=ctx["seed"],
            **opts,
        ),
        knob="ratio",
        default=0.3,
        options={
            "interval": 1,  # epochs between selections (R); 0 = select once
            "kappa": 0.5,  # warm-start fraction κ (0 = none): full, then skipped epochs
            "lam": 0.0,  # OMP ridge regularisation λ
            "eps": 1e-6,  # OMP relative residual tolerance ε
            "match": True,  # False: random batches, weight 1 (ablation of the matching)
        },
    )
)
register(
    Method(
        "sgd",
        "optimizer",
        "SGD with Nesterov momentum",
        _optimizer("sgd"),
        options=OPTIMIZER_DEFAULTS["sgd"],
    )
)
register(
    Method(
        "adam",
        "optimizer",
        "Adam (torch.optim.Adam)",
        _optimizer("adam"),
        options=OPTIMIZER_DEFAULTS["adam"],
    )
)
register(
    Method(
        "rmsprop",
        "optimizer",
        "RMSProp (torch.optim.RMSprop)",
        _optimizer("rmsprop"),
        options=OPTIMIZER_DEFAULTS["rmsprop"],
    )
)
register(
    Method(
        "stochgradadam",
        "optimizer",
        "StochGradAdam: Adam on a random subset of gradient entries each step",
        _optimizer("stochgradadam", knob="sampling_rate"),
        knob="sampling_rate",
        default=OPTIMIZER_DEFAULTS["stochgradadam"]["sampling_rate"],
        options={
            k: v for k, v in OPTIMIZER_DEFAULTS["stochgradadam"].items() if k != "sampling_rate"
        },
    )
)

SIFT_OPTIONS = {
    "stage": "",  # exit after this stage; "" = the model's exit_stage (its first layer)
    "head": "auto",  # exit head: auto | reuse (the model's own head) | linear (trained)
    "warmup": 0,  # batches kept whole at the start
    "head_lr": 1e-3,  # Adam learning rate of a linear exit head
}


def _sift(score: str):
    def build(ratio: float | None, opts: dict[str, Any], ctx: dict[str, Any]) -> SIFT:
        return SIFT(
            0.5 if ratio is None else ratio,
            stage=opts["stage"] or None,
            head=opts["head"],
            score=score,
            warmup_steps=opts["warmup"],
            num_classes=ctx["num_classes"],
            head_lr=opts["head_lr"],
        )

    return build


register(
    Method(
        "sift",
        "selector",
        "SIFT: backprop the ceil(ratio*b) samples of each batch with the highest early-exit loss",
        _sift("loss"),
        knob="ratio",
        default=0.5,
        options=SIFT_OPTIONS,
    )
)
register(
    Method(
        "sift-entropy",
        "selector",
        "SIFT scored by early-exit prediction entropy (label-free)",
        _sift("entropy"),
        knob="ratio",
        default=0.5,
        options=SIFT_OPTIONS,
    )
)
register(
    Method(
        "random-keep",
        "selector",
        "backprop a uniform random ceil(ratio*b) of each batch (SIFT's control)",
        lambda ratio, opts, ctx: RandomKeep(0.5 if ratio is None else ratio, seed=ctx["seed"]),
        knob="ratio",
        default=0.5,
    )
)
register(
    Method(
        "selective-backprop",
        "selector",
        "Selective Backprop: keep with probability max(min_prob, loss percentile^beta)",
        lambda beta, opts, ctx: SelectiveBackprop(
            3.0 if beta is None else beta,
            min_prob=opts["min_prob"],
            history=opts["history"],
            full_epochs=opts["full_epochs"],
            seed=ctx["seed"],
        ),
        knob="beta",
        default=3.0,
        options={
            "min_prob": 0.05,  # floor on the keep probability (s_min)
            "history": 1024,  # recent losses the percentile is taken over
            "full_epochs": 1,  # epochs at the start that keep every sample
        },
    )
)
