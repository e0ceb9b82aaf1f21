"""The methods sievetrain registers. A new method is a new entry here (or in a
module that calls ``register``), not an edit of the engine. Options and their
defaults live in each method's own options dataclass, nowhere else."""

from __future__ import annotations

from sievetrain.bench.registry import Method, register
from sievetrain.models import build_model
from sievetrain.optim import OPTIMIZERS, build_optimizer
from sievetrain.options import RunContext
from sievetrain.sampling import (
    FullOptions,
    GradMatchOptions,
    GradMatchSampler,
    InfoBatchOptions,
    InfoBatchSampler,
    RS2Options,
    RS2Sampler,
    SoftRandomSampler,
    SRSOptions,
)
from sievetrain.selection import (
    SIFT,
    RandomKeep,
    RandomKeepOptions,
    Rho1,
    Rho1Options,
    RhoLoss,
    RhoLossOptions,
    SelectiveBackprop,
    SelectiveBackpropOptions,
    SIFTOptions,
)

__all__: list[str] = []


def _srs(options: SRSOptions, context: RunContext) -> SoftRandomSampler:
    return SoftRandomSampler(
        context.n, seed=context.seed, batch_size=context.batch_size, **options.to_dict()
    )


def _rs2(options: RS2Options | FullOptions, context: RunContext) -> RS2Sampler:
    ratio = options.budget if isinstance(options, FullOptions) else options.ratio
    return RS2Sampler(context.n, ratio, seed=context.seed)


def _infobatch(options: InfoBatchOptions, context: RunContext) -> InfoBatchSampler:
    return InfoBatchSampler(
        context.n, epochs=context.epochs, seed=context.seed, **options.to_dict()
    )


def _gradmatch(options: GradMatchOptions, context: RunContext) -> GradMatchSampler:
    return GradMatchSampler(
        context.n,
        batch_size=context.batch_size,
        epochs=context.epochs,
        seed=context.seed,
        **options.to_dict(),
    )


def _sift(options: SIFTOptions, context: RunContext) -> SIFT:
    return SIFT(num_classes=context.num_classes, **options.to_dict())


def _reference_model(options: RhoLossOptions | Rho1Options, context: RunContext):
    """What builds the reference model: None (a copy of the run's model) or ``ref_model``."""
    name = options.ref_model
    if name is None:
        return None
    return lambda: build_model(
        name, num_classes=context.num_classes, input_shape=context.input_shape
    )


def _rho_loss(options: RhoLossOptions, context: RunContext) -> RhoLoss:
    return RhoLoss(
        seed=context.seed, reference_model=_reference_model(options, context), **options.to_dict()
    )


def _rho1(options: Rho1Options, context: RunContext) -> Rho1:
    """The reference trains on target text: not on samples a regime made off-target."""
    off_target = (context.flags or {}).get("off_target")
    return Rho1(
        seed=context.seed,
        reference_model=_reference_model(options, context),
        pool=None if off_target is None else ~off_target,
        flags=context.flags,
        **options.to_dict(),
    )


def _optimizer(name: str):
    def build(options, context: RunContext):
        return build_optimizer(
            name, context.model.parameters(), seed=context.seed, **options.to_dict()
        )

    return build


register(
    Method(
        "full",
        "sampler",
        "full data, reshuffled every epoch (the baseline); with /budget=F, for F of the "
        "run's optimizer steps, the schedule compressed to end at that budget",
        FullOptions,
        _rs2,
        card="srs",
    )
)
register(
    Method(
        "srs",
        "sampler",
        "Soft Random Sampling: a fresh uniform random subset every `interval` epochs",
        SRSOptions,
        _srs,
        knob="ratio",
        card="srs",
    )
)
register(
    Method(
        "fixed",
        "sampler",
        "one uniform random subset for the whole run (SRS with interval 0)",
        SRSOptions,
        _srs,
        knob="ratio",
        pinned={"interval": 0},
        exposed=("ratio", "within_epoch_replacement", "granularity"),
        card="srs",
    )
)
register(
    Method(
        "rs2",
        "sampler",
        "RS2: the next ratio*n samples of a stream of permutations each epoch (random "
        "subsets without replacement across epochs)",
        RS2Options,
        _rs2,
        knob="ratio",
        card="srs",
    )
)
register(
    Method(
        "infobatch",
        "sampler",
        "InfoBatch: drop each sample whose last loss is below the mean with probability "
        "`prune`, rescale the kept ones; full data from epoch delta*E on",
        InfoBatchOptions,
        _infobatch,
        knob="prune",
        card="infobatch",
    )
)
register(
    Method(
        "gradmatch",
        "sampler",
        "GRAD-MATCH per-batch: the weighted batches whose last-layer gradient matches the "
        "full data's, re-selected every `interval` epochs, after a warm start",
        GradMatchOptions,
        _gradmatch,
        knob="ratio",
        card="gradmatch",
    )
)
for _name, _summary, _knob, _card in (
    ("sgd", "SGD with Nesterov momentum (torch.optim.SGD)", None, None),
    ("adam", "Adam (torch.optim.Adam)", None, "stochgradadam"),
    ("rmsprop", "RMSProp (torch.optim.RMSprop)", None, "stochgradadam"),
    (
        "stochgradadam",
        "StochGradAdam: Adam on a random subset of gradient entries each step",
        "sampling_rate",
        "stochgradadam",
    ),
):
    register(
        Method(
            _name,
            "optimizer",
            _summary,
            OPTIMIZERS[_name][0],
            _optimizer(_name),
            knob=_knob,
            card=_card,
        )
    )
for _name, _summary, _score in (
    (
        "sift",
        "SIFT: backprop the ceil(ratio*b) samples of each batch with the highest early-exit loss",
        "loss",
    ),
    ("sift-entropy", "SIFT scored by early-exit prediction entropy (label-free)", "entropy"),
):
    register(
        Method(
            _name,
            "selector",
            _summary,
            SIFTOptions,
            _sift,
            knob="ratio",
            pinned={"score": _score},
            card="sift",
        )
    )
register(
    Method(
        "random-keep",
        "selector",
        "backprop a uniform random ceil(ratio*b) of each batch (SIFT's control)",
        RandomKeepOptions,
        lambda options, context: RandomKeep(options.ratio, seed=context.seed),
        knob="ratio",
        card="sift",
    )
)
register(
    Method(
        "selective-backprop",
        "selector",
        "Selective Backprop: keep with probability max(min_prob, loss percentile^beta)",
        SelectiveBackpropOptions,
        lambda options, context: SelectiveBackprop(seed=context.seed, **options.to_dict()),
        knob="beta",
        card="selective_backprop",
    )
)
register(
    Method(
        "rho-loss",
        "selector",
        "RHO-LOSS: backprop the ratio of each candidate batch with the largest reducible "
        "loss (the loss minus a reference model's, trained first on a holdout or twin halves)",
        RhoLossOptions,
        _rho_loss,
        knob="ratio",
        card="rho_loss",
    )
)
register(
    Method(
        "rho1",
        "selector",
        "Rho-1: the loss over the ratio of a batch's tokens with the largest excess loss "
        "over a reference model trained on target text",
        Rho1Options,
        _rho1,
        knob="ratio",
        card="rho1",
    )
)
