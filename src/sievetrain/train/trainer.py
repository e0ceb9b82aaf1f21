"""The training loop: an epoch-level sampler, a batch-level selector, an optimizer.

Every second of a run is charged to a phase (see ``accounting.PHASES``) and every
sample to a counter; evaluation runs off the training clock.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, Sampler

from sievetrain._rng import derive_seed
from sievetrain.data import make_loader
from sievetrain.losses import batch_loss, flatten_targets, sample_losses
from sievetrain.sampling import CoverageTracker, SoftRandomSampler
from sievetrain.selection import KeepAll, Selector, scoring_mode
from sievetrain.train.accounting import Accounting
from sievetrain.train.config import TrainConfig
from sievetrain.train.metrics import normalized_entropy, spearman
from sievetrain.train.schedules import lr_multiplier

__all__ = ["Trainer"]

RANK_BATCHES = 8  # held-out batches on which a selector's ranking is measured each epoch


class Trainer:
    """Train ``model`` on ``train_set`` and evaluate on ``test_set`` after every epoch.

    Args:
        model: maps a batch (B, ...) to logits (B, C) for targets (B,), or to
            (B, T, V) for token targets (B, T) (see :mod:`sievetrain.losses`).
        optimizer: a ``torch.optim.Optimizer`` over ``model``'s parameters. Its
            learning rates are the base rates the schedule multiplies.
        train_set, test_set: map-style datasets of (x, y); ``TensorDataset``s take
            the fast index-gather loader, others a standard ``DataLoader``.
        config: epochs, batch size, schedule, device.
        sampler: epoch-level sampler with ``set_epoch``; default full data,
            reshuffled every epoch (``SoftRandomSampler`` at ratio 1). A coreset
            sampler (``GradMatchSampler``) also has ``refresh(model, dataset)``,
            run at each epoch's start on the clock (phase ``selection``), and
            ``sample_weights(idx)``, which weights the loss.
        selector: batch-level selector (see ``sievetrain.selection``); default
            keeps every sample.
        seed: seeds the sampler default and torch's global stream during each
            epoch (forked, so the caller's global RNG state is left untouched).
        progress: show a progress bar.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_set: Dataset,
        test_set: Dataset,
        *,
        config: TrainConfig = TrainConfig(),
        sampler: Sampler[int] | None = None,
        selector: Selector | None = None,
        seed: int = 0,
        progress: bool = False,
    ) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.model = model.to(self.device)
        self.optimizer = optimizer
        self.train_set = train_set
        self.sampler = (
            sampler if sampler is not None else SoftRandomSampler(len(train_set), 1.0, seed=seed)
        )
        self.selector = selector if selector is not None else KeepAll()
        # A coreset's per-sample loss weights, looked up once here, not every step.
        self._weights_of = getattr(self.sampler, "sample_weights", None)
        self.seed = seed
        self.progress = progress
        self.train_loader = make_loader(train_set, config.batch_size, sampler=self.sampler)
        self.test_loader = make_loader(test_set, config.eval_batch_size)
        self.rank_loader = make_loader(test_set, config.batch_size)  # training-sized batches
        self.coverage = CoverageTracker(len(train_set))
        self.acct = Accounting(sync_device=self.device if self.device.type == "cuda" else None)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # the next epoch to run
        self._base_lrs = [group["lr"] for group in optimizer.param_groups]
        self._total_steps = self._count_steps() if config.schedule_unit == "step" else 0

    # -- the loop ---------------------------------------------------------------

    def fit(
        self, on_epoch_end: Callable[[Trainer], None] | None = None, *, until: int | None = None
    ) -> dict[str, Any]:
        """Run the remaining epochs (or up to epoch ``until``); returns ``summary()``.

        ``on_epoch_end`` is called after each epoch's evaluation (e.g. to write a
        checkpoint). Schedules always follow ``config.epochs``, so stopping at
        ``until`` and resuming later continues the same run.
        """
        self._warm_up()
        until = self.config.epochs if until is None else min(until, self.config.epochs)
        while self.epoch < until:
            train_loss = self.train_epoch(self.epoch)
            metrics = self.evaluate()
            self.history.append(
                {
                    "epoch": self.epoch + 1,
                    **metrics,
                    "train_loss": train_loss,
                    "train_time_s": self.acct.train_time_s,
                    "lr": self.optimizer.param_groups[0]["lr"],
                    "coverage": self.coverage.fraction,
                }
            )
            self.epoch += 1
            if on_epoch_end is not None:
                on_epoch_end(self)
        return self.summary()

    def train_epoch(self, epoch: int) -> float | None:
        """One pass over the sampler's indices for ``epoch``; returns the mean loss
        (None when the epoch trained on nothing, e.g. a coreset's skipped warm-start
        epoch)."""
        acct, cfg = self.acct, self.config
        start = time.perf_counter()
        with acct.phase("sampling"):  # len() draws (and caches) the epoch's indices
            self.sampler.set_epoch(epoch)
            n_batches = len(self.train_loader)
        if hasattr(self.sampler, "refresh"):  # a coreset chooses its subset from the model
            with acct.phase("selection"):
                self.sampler.refresh(self.model, self.train_set)
        if hasattr(self.selector, "set_epoch"):
            self.selector.set_epoch(epoch)
        if cfg.schedule_unit == "epoch":
            self._set_lr(epoch / cfg.epochs)
        loss_sum = torch.zeros((), device=self.device)
        seen = 0
        bar = _ProgressBar(self.progress, f"epoch {epoch + 1}/{cfg.epochs}", n_batches)
        with bar, torch.random.fork_rng(devices=self._rng_devices()):
            torch.manual_seed(derive_seed(self.seed, "torch", epoch))
            self.model.train()
            for x, y, idx in self._selected_batches(bar):
                loss = self._step(x, y, idx)
                with acct.phase("sampling"):  # coverage bookkeeping
                    self.coverage.update(idx)
                loss_sum += loss.detach() * len(y)
                seen += len(y)
        acct.train_time_s += time.perf_counter() - start
        return loss_sum.item() / seen if seen else None  # None: an epoch with no training

    def _selected_batches(
        self, bar: _ProgressBar
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """The epoch's batches after batch-level selection: what gets a forward and
        backward pass. A selector that ``accumulates`` has its kept samples gathered
        into full batches; the remainder comes last."""
        acct = self.acct
        size = self.config.batch_size
        pending = _Pending() if getattr(self.selector, "accumulates", False) else None
        batches = iter(self.train_loader)
        while True:
            with acct.phase("data"):
                batch = next(batches, None)
                if batch is None:
                    break
                x, y, idx = batch
                x = x.to(self.device, non_blocking=True)
                y = y.to(self.device, non_blocking=True)
            with acct.phase("selection"):
                keep = self.selector.select(self.model, x, y)
                if keep is not None:
                    x, y, idx = x[keep], y[keep], idx[keep.cpu()]
                if pending is not None:
                    pending.add(x, y, idx)
            bar.advance()
            if pending is None:
                if len(y):
                    yield x, y, idx
                continue
            while len(pending) >= size:
                with acct.phase("selection"):
                    batch = pending.take(size)
                yield batch
        if pending is not None and len(pending):
            yield pending.take(len(pending))

    def _step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        acct = self.acct
        if self.config.schedule_unit == "step":
            self._set_lr(acct.optimizer_steps / max(self._total_steps, 1))
        with acct.phase("forward"):
            weight = self._sample_weights(idx)
            loss = batch_loss(self.model(x), y, weight)
        with acct.phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with acct.phase("step"):
            self.optimizer.step()
        acct.samples_forwarded += len(y)
        acct.samples_backpropagated += len(y)
        acct.optimizer_steps += 1
        return loss

    def _sample_weights(self, idx: torch.Tensor) -> torch.Tensor | None:
        """The sampler's loss weights for these dataset indices (a coreset's), or None."""
        w = self._weights_of(idx) if self._weights_of is not None else None
        return None if w is None else w.to(self.device, non_blocking=True)

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Accuracy (fraction of predicted targets), mean cross-entropy and mean
        normalized prediction entropy (0 = confident, 1 = uniform) on the test set,
        and how well the selector's scores rank true losses (``exit_spearman``,
        when the selector scores); all off the training clock."""
        self.acct._sync()
        start = time.perf_counter()
        self.model.eval()
        correct = torch.zeros((), dtype=torch.long, device=self.device)
        loss_sum = torch.zeros((), device=self.device)
        entropy_sum = torch.zeros((), device=self.device)
        n = 0
        for x, y, _ in self.test_loader:
            x, y = x.to(self.device), y.to(self.device)
            logits, y, _ = flatten_targets(self.model(x), y)  # (N, C), (N,)
            loss_sum += F.cross_entropy(logits, y, reduction="sum")
            entropy_sum += normalized_entropy(logits).sum()
            correct += (logits.argmax(dim=1) == y).sum()
            n += len(y)
        metrics = {
            "test_accuracy": correct.item() / n,
            "test_loss": loss_sum.item() / n,
            "test_entropy": entropy_sum.item() / n,
        }
        if hasattr(self.selector, "score"):
            metrics["exit_spearman"] = self._rank_correlation()
        self.acct.eval_time_s += time.perf_counter() - start
        return metrics

    def _rank_correlation(self) -> float | None:
        """Mean Spearman correlation, over held-out training-sized batches, between
        the selector's scores and the true per-sample losses, both computed as a
        training step sees them (training mode, batch statistics)."""
        self.model.train()
        values = []
        for i, (x, y, _) in enumerate(self.rank_loader):
            if i == RANK_BATCHES:
                break
            x, y = x.to(self.device), y.to(self.device)
            scores = self.selector.score(self.model, x, y)
            with scoring_mode(self.model):
                losses = sample_losses(self.model(x), y)
            values.append(spearman(scores.cpu(), losses.cpu()))
        self.model.eval()
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values else None

    # -- results and state ------------------------------------------------------

    def summary(self) -> dict[str, Any]:
        """Final figures of the run as JSON-ready values."""
        acct = self.acct
        last = self.history[-1] if self.history else {}
        selected = self.selector.stats()
        return {
            "final_test_accuracy": last.get("test_accuracy"),
            "final_test_loss": last.get("test_loss"),
            "final_test_entropy": last.get("test_entropy"),
            "train_time_s": acct.train_time_s,
            "eval_time_s": acct.eval_time_s,
            "time_breakdown_s": dict(acct.time_s),
            "samples_forwarded": acct.samples_forwarded,
            "samples_forwarded_partially": selected.get("samples_forwarded_partially", 0),
            "samples_forwarded_fully": acct.samples_forwarded
            + selected.get("samples_forwarded_no_grad", 0),
            "samples_backpropagated": acct.samples_backpropagated,
            "optimizer_steps": acct.optimizer_steps,
            "coverage": self.coverage.fraction,
            "time_to_target_s": time_to_target(self.history, self.config.target_accuracy),
            "final_exit_spearman": last.get("exit_spearman"),
            "selector": selected,
            "sampler": self.sampler.stats() if hasattr(self.sampler, "stats") else {},
            "history": list(self.history),
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (on CPU, bitwise)."""
        return {
            "epoch": self.epoch,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "sampler": self.sampler.state_dict(),
            "selector": self.selector.state_dict(),
            "coverage": self.coverage.state_dict(),
            "accounting": self.acct.state_dict(),
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.sampler.load_state_dict(state["sampler"])
        self.selector.load_state_dict(state["selector"])
        self.coverage.load_state_dict(state["coverage"])
        self.acct.load_state_dict(state["accounting"])
        self.history = copy.deepcopy(state["history"])

    # -- helpers ----------------------------------------------------------------

    def _set_lr(self, progress: float) -> None:
        cfg = self.config
        factor = lr_multiplier(cfg.schedule, progress, milestones=cfg.milestones, gamma=cfg.gamma)
        for group, base in zip(self.optimizer.param_groups, self._base_lrs, strict=True):
            group["lr"] = base * factor

    def _count_steps(self) -> int:
        # Optimizer steps of the whole run, for a step-indexed schedule (batch-level
        # selection may skip some; the schedule then ends a little short of 1).
        steps = 0
        for epoch in range(self.config.epochs):
            self.sampler.set_epoch(epoch)
            steps += math.ceil(len(self.sampler) / self.config.batch_size)
        self.sampler.set_epoch(0)
        return steps

    def _rng_devices(self) -> list[int]:
        if self.device.type == "cuda":
            return [
                self.device.index if self.device.index is not None else torch.cuda.current_device()
            ]
        return []

    def _warm_up(self) -> None:
        """One untimed forward and backward, so that one-time costs (allocations,
        kernel selection) stay off the training clock; the model is restored."""
        state = copy.deepcopy(self.model.state_dict())
        x, y, _ = next(iter(make_loader(self.train_set, self.config.batch_size)))
        with torch.random.fork_rng(devices=self._rng_devices()):
            self.model.train()
            batch_loss(self.model(x.to(self.device)), y.to(self.device)).backward()
        self.model.zero_grad(set_to_none=True)
        self.model.load_state_dict(state)


def time_to_target(history: list[dict[str, Any]], target: float | None) -> float | None:
    """Training seconds until test accuracy first reached ``target`` (None if never)."""
    if target is None:
        return None
    for record in history:
        if record["test_accuracy"] >= target:
            return record["train_time_s"]
    return None


class _Pending:
    """Kept samples waiting to fill a full batch: ``(x, y, idx)`` chunks in order."""

    def __init__(self) -> None:
        self.chunks: list[tuple[torch.Tensor, ...]] = []

    def __len__(self) -> int:
        return sum(len(chunk[1]) for chunk in self.chunks)

    def add(self, *chunk: torch.Tensor) -> None:
        if len(chunk[1]):
            self.chunks.append(chunk)

    def take(self, n: int) -> tuple[torch.Tensor, ...]:
        """The first ``n`` pending samples, removed from the queue."""
        joined = [torch.cat(parts) for parts in zip(*self.chunks, strict=True)]
        self.chunks = [tuple(t[n:] for t in joined)] if len(joined[1]) > n else []
        return tuple(t[:n] for t in joined)


class _ProgressBar:
    """A transient rich progress bar over one epoch's batches, or nothing."""

    def __init__(self, enabled: bool, description: str, total: int) -> None:
        self._progress = None
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._progress = Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                transient=True,
                refresh_per_second=4,
            )
            self._task = self._progress.add_task(description, total=total)

    def __enter__(self) -> _ProgressBar:
        if self._progress is not None:
            self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()

    def advance(self) -> None:
        if self._progress is not None:
            self._progress.advance(self._task)
