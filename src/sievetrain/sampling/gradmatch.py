"""GRAD-MATCH, per-batch, with warm start (Killamsetty et al., ICML 2021).

Every few epochs, choose the weighted set of mini-batches whose weighted last-layer
gradient best matches the full data's, by orthogonal matching pursuit with
non-negative weights; train on those batches' samples with the weights in the loss.
This is the coreset baseline Soft Random Sampling is measured against.

Functional core: :func:`last_layer_gradient` (closed form), :func:`nonnegative_omp`,
:func:`warm_start_schedule`, :func:`gradmatch_select`. Stateful wrapper:
:class:`GradMatchSampler`.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import asdict, dataclass
from fractions import Fraction

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain._rng import make_generator
from sievetrain.data import make_loader
from sievetrain.losses import IGNORE_INDEX, flatten_targets
from sievetrain.sampling._epochs import EpochSampler, as_int, check_same_config
from sievetrain.sampling.srs import _round_ratio, batch_partition, selection_round
from sievetrain.sampling.srs import soft_random_indices as _full_data_indices
from sievetrain.selection import scoring_mode

__all__ = [
    "GradMatchSampler",
    "batch_gradients",
    "gradmatch_select",
    "last_layer_gradient",
    "nonnegative_omp",
    "warm_start_schedule",
]


def last_layer_gradient(
    features: Tensor, logits: Tensor, y: Tensor, *, bias: bool = True
) -> Tensor:
    """Mean gradient of softmax cross-entropy w.r.t. a final linear layer, in closed form.

    For logits ``o = z W^T + b``: dL/do = softmax(o) - onehot(y) = e, so dL/dW = e^T z
    and dL/db = e, averaged over the predicted targets. No backward pass.

    Args:
        features: the layer's input z, (B, h) for targets (B,), or (B, T, h) for token
            targets (B, T) (positions holding ``IGNORE_INDEX`` are left out).
        logits: the layer's output, (B, C) or (B, T, C).
        y: targets.
        bias: whether the layer has a bias (its gradient is appended).

    Returns:
        ``(C * h + C,)`` with a bias, ``(C * h,)`` without: ``[dW.flatten(), db]``.
    """
    rows, targets, _ = flatten_targets(logits, y)  # (N, C), (N,)
    if features.dim() == 3:
        features = features[y != IGNORE_INDEX]  # (N, h), same row order as flatten_targets
    e = torch.softmax(rows.float(), dim=1)
    e[torch.arange(len(targets), device=e.device), targets] -= 1.0  # (N, C)
    n = max(len(targets), 1)
    grad_w = e.T @ features.float() / n  # (C, h)
    parts = [grad_w.flatten(), e.sum(dim=0) / n] if bias else [grad_w.flatten()]
    return torch.cat(parts)


def nonnegative_omp(
    columns: Tensor, target: Tensor, budget: int, *, lam: float = 0.0, eps: float = 1e-6
) -> tuple[Tensor, Tensor]:
    """Orthogonal matching pursuit with non-negative weights: ``columns @ w ≈ target``.

    Each step adds the column most positively correlated with the residual, then
    re-solves ``min ||A_S w - b||² + lam ||w||²`` on the chosen set S; while a weight
    is negative the most negative column is dropped and the system re-solved. It stops
    after ``budget`` steps, when the residual falls to ``eps * ||target||``, or when no
    column correlates positively with the residual. The work is done on the Gram
    matrix ``A^T A`` (n x n, float64 on the CPU), so a step costs O(n |S|), not O(d n).

    Args:
        columns: A, (d, n): one candidate per column.
        target: b, (d,).
        budget: most steps (and so most columns chosen), >= 1.
        lam: ridge regularisation λ >= 0.
        eps: relative residual tolerance ε >= 0.

    Returns:
        ``(indices (k,), weights (k,))``: chosen columns (int64, in the order chosen)
        and their weights (float64, >= 0), k <= budget.
    """
    if columns.dim() != 2 or target.shape != columns.shape[:1]:
        raise ValueError(
            f"columns (d, n) and target (d,) expected, got {columns.shape}, {target.shape}"
        )
    budget = as_int("budget", budget, 1)
    if not lam >= 0 or not eps >= 0:  # NaN fails too
        raise ValueError(f"lam and eps must be >= 0, got lam={lam!r}, eps={eps!r}")
    work = torch.promote_types(columns.dtype, torch.float32)
    a, b = columns.to(work), target.to(work)
    gram = (a.T @ a).double().cpu()  # (n, n)
    corr = (a.T @ b).double().cpu()  # (n,) A^T b
    b_sq = float(b.double().square().sum())
    support: list[int] = []
    weights = corr.new_zeros(0)
    residual_corr, residual_sq = corr, b_sq  # A^T r and ||r||² for r = b - A_S w
    for _ in range(budget):
        if residual_sq <= eps**2 * b_sq:
            break
        scores = residual_corr.clone()
        scores[support] = -math.inf
        best = int(scores.argmax())
        if not scores[best] > 0:
            break
        support, weights = _nonnegative_solve(gram, corr, [*support, best], lam)
        chosen = torch.tensor(support, dtype=torch.long)
        residual_corr = corr - gram[:, chosen] @ weights
        fit = weights @ corr[chosen]
        residual_sq = b_sq - 2 * float(fit) + float(weights @ gram[chosen][:, chosen] @ weights)
    return torch.tensor(support, dtype=torch.long), weights


def _nonnegative_solve(
    gram: Tensor, corr: Tensor, support: list[int], lam: float
) -> tuple[list[int], Tensor]:
    """Ridge least squares on ``support``, dropping the most negative weight until none is."""
    while True:
        chosen = torch.tensor(support, dtype=torch.long)
        system = gram[chosen][:, chosen] + lam * torch.eye(len(support), dtype=gram.dtype)
        # lstsq (CPU driver gelsy) tolerates a singular system, e.g. two identical batches.
        weights = torch.linalg.lstsq(system, corr[chosen].unsqueeze(1)).solution.squeeze(1)
        if len(support) == 1 or bool((weights >= 0).all()):
            return support, weights
        support = [s for i, s in enumerate(support) if i != int(weights.argmin())]


def warm_start_schedule(epochs: int, kappa: float, ratio: float) -> tuple[int, int]:
    """``(full_epochs, subset_start)`` of GRAD-MATCH's warm start over ``epochs`` epochs.

    The first ``round(kappa * epochs * ratio)`` epochs train on the full data, the
    epochs up to ``floor(kappa * epochs)`` are skipped (no training), and subset
    training runs from there on, so that the total compute is ``ratio`` x that of
    full data, as without a warm start. ``kappa = 0``: no warm start, ``(0, 0)``.
    Rounding is half up, on the decimals the arguments print as.
    """
    epochs = as_int("epochs", epochs, 1)
    if isinstance(kappa, bool) or not 0 <= kappa < 1:
        raise ValueError(f"kappa must be in [0, 1), got {kappa!r}")
    start = math.floor(Fraction(repr(float(kappa))) * epochs)
    exact = Fraction(repr(float(kappa))) * epochs * Fraction(repr(float(ratio)))
    return min(math.floor(exact + Fraction(1, 2)), start), start


def batch_gradients(
    model: nn.Module, dataset: Dataset, batches: list[Tensor], *, layer: nn.Module | None = None
) -> Tensor:
    """Each batch's mean last-layer gradient, ``(d, len(batches))``, from forward passes only.

    The model runs as a training step would see each batch (training mode, batch
    statistics) but without side effects (:func:`~sievetrain.selection.scoring_mode`).
    ``layer`` is the final ``nn.Linear`` whose output is the model's output (default:
    the model's last ``nn.Linear``).
    """
    layer = layer if layer is not None else _last_linear(model)
    device = next(model.parameters()).device
    sizes = {len(b) for b in batches}
    order = torch.cat(batches).tolist()
    loader = make_loader(dataset, max(sizes), sampler=order)  # one loader batch per batch
    captured: list[tuple[Tensor, Tensor]] = []
    hook = layer.register_forward_hook(lambda m, args, out: captured.append((args[0], out)))
    columns, was_training = [], model.training
    model.train()  # batch statistics, as a training step sees the batch
    try:
        with torch.no_grad(), scoring_mode(model):
            for x, y, _ in loader:
                captured.clear()
                logits = model(x.to(device))
                features, out = captured[-1]
                if out is not logits and not torch.equal(out, logits):
                    raise ValueError("the layer's output is not the model's output: pass layer=")
                columns.append(
                    last_layer_gradient(features, logits, y.to(device), bias=layer.bias is not None)
                )
    finally:
        hook.remove()
        model.train(was_training)
    if len(sizes) != 1:
        raise ValueError(f"batches must have one size, got sizes {sorted(sizes)}")
    return torch.stack(columns, dim=1)


def gradmatch_select(
    columns: Tensor,
    budget: int,
    *,
    lam: float = 0.0,
    eps: float = 1e-6,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, int]:
    """Choose ``budget`` of the n batches whose gradients are ``columns (d, n)``.

    The target is ``budget`` times the mean batch gradient, so that a uniform random
    choice would have weights 1. OMP picks up to ``budget`` batches; if it stops
    early, uniformly random other batches (``generator``) fill the budget with weight 1,
    as the reference implementation does.

    Returns:
        ``(batches (budget,) int64, weights (budget,) float64 > 0, chosen_by_omp)``.
    """
    n = columns.shape[1]
    target = columns.mean(dim=1) * budget  # (d,)
    picked, weights = nonnegative_omp(columns, target, budget, lam=lam, eps=eps)
    keep = weights > 0
    picked, weights = picked[keep], weights[keep]
    rest = torch.ones(n, dtype=torch.bool)
    rest[picked] = False
    others = rest.nonzero().squeeze(1)
    fill = others[torch.randperm(len(others), generator=generator)[: budget - len(picked)]]
    batches = torch.cat([picked, fill])
    weights = torch.cat([weights, weights.new_ones(len(fill))])
    return batches, weights, len(picked)


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer: pass layer=")
    return linears[-1]


@dataclass(frozen=True)
class _Plan:
    """Validated GRAD-MATCH configuration (the sampler's ``state_dict()["config"]``)."""

    n: int
    ratio: float
    batch_size: int
    epochs: int
    seed: int
    interval: int
    kappa: float
    lam: float
    eps: float

    def __post_init__(self) -> None:
        as_int("batch_size", self.batch_size, 1)
        as_int("n", self.n, self.batch_size)  # at least one full batch to choose
        for name in ("interval", "seed"):
            as_int(name, getattr(self, name), 0 if name == "interval" else None)
        self.budget  # noqa: B018  (checks the ratio)
        self.warm_start  # noqa: B018  (checks epochs and kappa)
        if not self.lam >= 0 or not self.eps >= 0:
            raise ValueError(f"lam and eps must be >= 0, got lam={self.lam!r}, eps={self.eps!r}")

    @functools.cached_property
    def warm_start(self) -> tuple[int, int]:
        """``(full_epochs, subset_start)``: see :func:`warm_start_schedule`."""
        return warm_start_schedule(self.epochs, self.kappa, self.ratio)

    @property
    def batches(self) -> int:
        """Candidate batches: the full batches of the run's fixed partition."""
        return self.n // self.batch_size

    @property
    def budget(self) -> int:
        """Batches chosen per selection: ``floor(ratio * batches + 0.5)``."""
        return _round_ratio(self.batches, self.ratio, "full batches")

    def round(self, epoch: int) -> int | None | str:
        """The selection round of ``epoch``, ``"full"`` or ``"skip"`` (warm start)."""
        if self.ratio == 1:
            return "full"
        full, start = self.warm_start
        if epoch < start:
            return "full" if epoch < full else "skip"
        return selection_round(epoch, interval=self.interval, warm_start_epochs=start)


class GradMatchSampler(EpochSampler):
    """GRAD-MATCH per-batch as an epoch-level ``Sampler``, with its sample weights.

    Call ``set_epoch(epoch)`` then ``refresh(model, dataset)`` before each epoch:
    refresh runs a selection when the epoch starts a new round (every ``interval``
    epochs of subset training) and is free otherwise. ``sample_weights(idx)`` gives
    the loss weight of each yielded index (None on a full-data epoch); the trainer
    weights the loss by them (:func:`sievetrain.losses.batch_loss`).

    Args:
        n: Dataset size; at least ``batch_size``.
        ratio: Subset ratio r in (0, 1]: ``floor(r * B + 0.5)`` of the ``B = n //
            batch_size`` full batches of a fixed ``(seed, "batches")`` partition.
            ``ratio=1`` is full data (nothing to choose).
        batch_size: Samples per candidate batch (the training batch size).
        epochs: The run's epochs E, for the warm-start schedule.
        seed: Run seed (partition, order, random fill).
        interval: Selection interval R in epochs; 0 selects once.
        kappa: Warm-start fraction κ in [0, 1) (see :func:`warm_start_schedule`).
        lam: OMP ridge regularisation λ.
        eps: OMP relative residual tolerance ε.

    A subset epoch yields the chosen batches' samples reshuffled (stream ``(seed,
    "order", epoch)``); a full-data epoch yields exactly what the ``full`` baseline
    does. The fewer-than-``batch_size`` samples left over by the partition are never
    chosen. One process: every rank would need the same selection.
    """

    def __init__(
        self,
        n: int,
        ratio: float,
        *,
        batch_size: int,
        epochs: int,
        seed: int = 0,
        interval: int = 1,
        kappa: float = 0.5,
        lam: float = 0.0,
        eps: float = 1e-6,
    ) -> None:
        scope = locals()
        super().__init__()
        self._plan = _Plan(**{name: scope[name] for name in _Plan.__dataclass_fields__})
        self._round: int | None = None  # round the current subset was selected for
        self._batches = torch.zeros(0, dtype=torch.long)  # chosen batch ids
        self._batch_weights = torch.zeros(0, dtype=torch.float64)
        self._weights = torch.zeros(0)  # (n,) per-sample loss weight, from the two above
        self.selections: list[dict] = []  # per selection: epoch, seconds, batches OMP chose

    @property
    def config(self) -> dict:
        return asdict(self._plan)

    def refresh(
        self, model: nn.Module, dataset: Dataset, *, layer: nn.Module | None = None
    ) -> None:
        """Select the subset for the current epoch if its round has none yet."""
        r = self._plan.round(self.epoch)
        if not isinstance(r, int) or r == self._round:
            return
        start = time.perf_counter()
        partition = batch_partition(self._plan.n, self._plan.batch_size, seed=self._plan.seed)
        columns = batch_gradients(
            model, dataset, list(partition[: self._plan.batches]), layer=layer
        )
        fill = make_generator(self._plan.seed, "gradmatch-fill", r)
        batches, weights, by_omp = gradmatch_select(
            columns, self._plan.budget, lam=self._plan.lam, eps=self._plan.eps, generator=fill
        )
        self._set_subset(r, batches, weights)
        seconds = time.perf_counter() - start  # the weights are on the CPU: work is done
        self.selections.append({"epoch": self.epoch, "seconds": seconds, "omp_batches": by_omp})

    def sample_weights(self, idx: Tensor) -> Tensor | None:
        """Loss weight of each dataset index in ``idx`` this epoch; None: all equal."""
        return None if self._plan.round(self.epoch) in ("full", "skip") else self._weights[idx]

    def stats(self) -> dict:
        seconds = [s["seconds"] for s in self.selections]
        return {
            "selections": len(seconds),
            "selection_time_s": sum(seconds),
            "per_selection": self.selections,
        }

    def __len__(self) -> int:  # known before the selection (a step schedule needs it)
        r = self._plan.round(self.epoch)
        if r == "full":
            return self._plan.n
        return 0 if r == "skip" else self._plan.budget * self._plan.batch_size

    def _compute_indices(self, epoch: int) -> Tensor:
        r, plan = self._plan.round(epoch), self._plan
        if r == "full":
            return _full_data_indices(plan.n, 1.0, seed=plan.seed, epoch=epoch)
        if r == "skip":
            return torch.zeros(0, dtype=torch.long)
        if r != self._round:
            raise RuntimeError(f"epoch {epoch} needs a selection: call refresh(model, dataset)")
        partition = batch_partition(plan.n, plan.batch_size, seed=plan.seed)
        chosen = torch.cat([partition[i] for i in self._batches.tolist()])
        return chosen[
            torch.randperm(len(chosen), generator=make_generator(plan.seed, "order", epoch))
        ]

    def _set_subset(self, r: int | None, batches: Tensor, weights: Tensor) -> None:
        self._round, self._batches, self._batch_weights = r, batches, weights
        self._weights = torch.zeros(self._plan.n)
        if r is not None:
            partition = batch_partition(self._plan.n, self._plan.batch_size, seed=self._plan.seed)
            for b, w in zip(batches.tolist(), weights.tolist(), strict=True):
                self._weights[partition[b]] = w
        self.forget_indices()

    def state_dict(self) -> dict:
        """Config, epoch, position, the current subset and weights, the selection log."""
        return {
            "config": self.config,
            "epoch": self.epoch,
            "position": self.position,
            "round": self._round,
            "batches": self._batches.clone(),
            "batch_weights": self._batch_weights.clone(),
            "selections": [dict(s) for s in self.selections],
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore the subset and schedule; the next ``__iter__`` resumes at ``position``."""
        check_same_config(self.config, state["config"])
        self._set_subset(state["round"], state["batches"].clone(), state["batch_weights"].clone())
        self.selections = [dict(s) for s in state["selections"]]
        self.load_position(state["epoch"], state["position"])
