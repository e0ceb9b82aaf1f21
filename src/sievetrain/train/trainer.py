"""The training loop: an epoch-level sampler, a batch-level selector, an optimizer.

Every second of a run is charged to a phase (see ``accounting.PHASES``) and every
sample to a counter; evaluation runs off the training clock.

Under a process group of W ranks (``torchrun``) the same loop runs on every rank:
the model is wrapped in ``DistributedDataParallel``, ``config.batch_size`` is the
global batch (B / W per rank), samplers shard by rank, the test set is sharded and
its sums all-reduced, and the run's counters are merged over ranks after every
epoch (see :mod:`sievetrain.train.parallel`), so every rank holds the job's figures.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from sievetrain.audit import SelectionAudit
from sievetrain.data import make_loader
from sievetrain.distributed import unwrap, world
from sievetrain.losses import batch_loss
from sievetrain.rng import derive_seed, rng_devices
from sievetrain.sampling import CoverageTracker, EpochSampler, SoftRandomSampler
from sievetrain.selection.base import Selector
from sievetrain.sieve import Sieve
from sievetrain.train.accounting import Accounting
from sievetrain.train.config import TrainConfig
from sievetrain.train.evaluation import evaluate, rank_correlation
from sievetrain.train.parallel import (
    eval_shard,
    local_batch_size,
    mean_over_ranks,
    merge_accounting,
    merge_coverage,
    snapshot,
    sum_samples,
    sync_buffers,
    wrap_model,
)
from sievetrain.train.progress import ProgressBar
from sievetrain.train.schedules import lr_multiplier
from sievetrain.train.speed import autocast, compiled, mark_batch_dynamic, scaled_step
from sievetrain.train.summary import RunSummary, time_to_target

__all__ = ["Trainer"]


class Trainer:
    """Train ``model`` on ``train_set`` and evaluate on ``test_set`` after every epoch.

    Args:
        model: maps a batch (B, ...) to logits (B, C) for targets (B,), or to
            (B, T, V) for token targets (B, T) (see :mod:`sievetrain.losses`).
        optimizer: a ``torch.optim.Optimizer`` over ``model``'s parameters. Its
            learning rates are the base rates the schedule multiplies.
        train_set, test_set: map-style datasets of (x, y); ``TensorDataset``s take
            the fast index-gather loader, others a standard ``DataLoader``.
        config: epochs, batch size, schedule, device, and the step's speed options
            ``amp`` and ``compile`` (see :mod:`sievetrain.train.speed`).
        sampler: an epoch-level sampler (:class:`~sievetrain.sampling.EpochSampler`);
            default full data, reshuffled every epoch (``SoftRandomSampler`` at
            ratio 1). Its ``refresh(model, dataset)`` runs at each epoch's start on
            the clock (phase ``selection``; a coreset chooses its subset there) and
            ``sample_weights(idx)`` weights the loss.
        selector: a batch-level selector (:class:`~sievetrain.selection.Selector`);
            default keeps every sample.
        flags: what each training sample is (name -> bool ``(N,)``, e.g. a data
            regime's ``noisy``): the run's ``selection_audit`` counts the backpropagated
            samples per flag, and per class when ``train_set`` has class labels.
        seed: seeds the sampler default and torch's global stream during each
            epoch (forked, so the caller's global RNG state is left untouched).
        progress: show a progress bar; a string also names the run in it.

    Under a process group, build the Trainer on every rank and call ``fit``,
    ``evaluate``, ``summary`` and ``state_dict`` on every rank together (they run
    collectives); ``state_dict()`` is the same on every rank and any rank's loads on
    all. The model may be given plain or already in ``DistributedDataParallel``.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        train_set: Dataset,
        test_set: Dataset,
        *,
        config: TrainConfig = TrainConfig(),
        sampler: EpochSampler | None = None,
        selector: Selector | None = None,
        flags: Mapping[str, torch.Tensor] | None = None,
        seed: int = 0,
        progress: bool | str = False,
    ) -> None:
        self.config = config
        self.device = torch.device(config.device)
        self.world_size = world()[0]
        self.local_batch = local_batch_size(config.batch_size)  # this rank's share
        self.model = wrap_model(model.to(self.device), self.device)
        self.module = unwrap(self.model)  # scoring, evaluation and checkpoints use it
        # The training step's forward: compiled, or the model itself. Every other pass
        # (selectors' scoring, a sampler's refresh, evaluation) runs the eager model.
        self._forward = compiled(self.model) if config.compile else self.model
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.optimizer = optimizer
        self.train_set = train_set
        if sampler is None:
            sampler = SoftRandomSampler(len(train_set), 1.0, seed=seed)
        # The step protocol (epochs, selection, gathering, the weighted loss, its state).
        audit = SelectionAudit.of_dataset(train_set, flags)
        self.sieve = Sieve(sampler, selector, batch_size=self.local_batch, audit=audit)
        self.audit = audit
        self.sieve.check_world()
        self.sampler, self.selector = self.sieve.sampler, self.sieve.selector
        self.seed = seed
        self.progress = progress
        # A selector may pick from candidate batches of several training batches (RHO-LOSS).
        self.train_loader = make_loader(
            train_set, self.sieve.loader_batch_size, sampler=self.sampler
        )
        self.test_loader = make_loader(
            test_set, config.eval_batch_size, sampler=eval_shard(len(test_set))
        )
        self.rank_loader = make_loader(test_set, self.local_batch)  # training-sized batches
        self.coverage = CoverageTracker(len(train_set))
        self.acct = Accounting(sync_device=self.device if self.device.type == "cuda" else None)
        self.history: list[dict[str, Any]] = []
        self.epoch = 0  # the next epoch to run
        self._base_lrs = [group["lr"] for group in optimizer.param_groups]
        if config.schedule_unit == "step" and self.sampler.observes_losses:
            raise ValueError(
                f"schedule_unit='step' needs every epoch's length up front, and "
                f"{type(self.sampler).__name__}'s depend on the losses: use schedule_unit='epoch'"
            )
        self._total_steps = self._count_steps() if config.schedule_unit == "step" else 0

    # -- the loop ---------------------------------------------------------------

    def fit(
        self,
        on_epoch_end: Callable[[Trainer], None] | None = None,
        *,
        until: int | None = None,
        on_reference_epoch: Callable[[Trainer], None] | None = None,
    ) -> RunSummary:
        """Run the remaining epochs (or up to epoch ``until``); returns ``summary()``.

        ``on_epoch_end`` is called after each epoch's evaluation (e.g. to write a
        checkpoint). Schedules always follow ``config.epochs``, so stopping at
        ``until`` and resuming later continues the same run. A selector with work
        before training (a reference model) does it first, on the training clock
        (phase ``reference``), calling ``on_reference_epoch`` after each unit (e.g.
        to write a checkpoint: a run stopped there resumes where it stood).
        """
        self._warm_up()
        self._prepare(on_reference_epoch)
        until = self.config.epochs if until is None else min(until, self.config.epochs)
        while self.epoch < until:
            since = snapshot(self.acct)
            train_loss = self.train_epoch(self.epoch)
            metrics = self.evaluate()
            merge_accounting(self.acct, since)  # the job's figures, on every rank
            merge_coverage(self.coverage)
            self.audit.merge_epoch(self.epoch)
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

    def _prepare(self, on_unit: Callable[[Trainer], None] | None) -> None:
        """The selector's work before training, unit by unit (see ``Sieve.prepare``):
        its backward passes counted as the training steps' are, merged over ranks."""
        acct = self.acct
        while True:
            since = snapshot(acct)
            with acct.training(), acct.phase("reference"):
                trained = self.sieve.prepare(self.model, self.train_set)
            if trained is not None:
                acct.samples_forwarded += trained
                acct.samples_backpropagated += trained
            merge_accounting(acct, since)  # every rank's time: the slowest rank's on all
            if trained is None:
                return
            if on_unit is not None:
                on_unit(self)

    def train_epoch(self, epoch: int) -> float | None:
        """One pass over the sampler's indices for ``epoch``; returns the mean loss
        (None when the epoch trained on nothing, e.g. a coreset's skipped warm-start
        epoch)."""
        with self.acct.training():
            return self._train_epoch(epoch)

    def _train_epoch(self, epoch: int) -> float | None:
        acct, cfg = self.acct, self.config
        with acct.phase("selection"):  # a coreset chooses its subset from the model
            self.sieve.begin_epoch(epoch, self.model, self.train_set)
        with acct.phase("sampling"):  # len() draws (and caches) the epoch's indices
            n_batches = len(self.train_loader)
        if cfg.schedule_unit == "epoch":
            self._set_lr(epoch / cfg.epochs)
        totals = [torch.zeros((), device=self.device), 0]  # loss sum, samples
        name = f"{self.progress} · " if isinstance(self.progress, str) else ""
        bar = ProgressBar(bool(self.progress), f"{name}epoch {epoch + 1}/{cfg.epochs}", n_batches)
        with bar, torch.random.fork_rng(devices=rng_devices(self.device)):
            torch.manual_seed(derive_seed(self.seed, "torch", epoch))
            self.model.train()
            batches = iter(self.train_loader)
            while True:
                with acct.phase("data"):
                    batch = next(batches, None)
                    if batch is None:
                        break
                    x, y, idx = batch
                    x, y = (
                        x.to(self.device, non_blocking=True),
                        y.to(self.device, non_blocking=True),
                    )
                with acct.phase("selection"):  # the selector's scoring pass, gathering
                    chosen = self.sieve.select((x, y, idx), self.model)
                bar.advance()
                if chosen is not None:
                    self._train_batch(*chosen, totals)
            with acct.phase("selection"):
                rest = self.sieve.flush()  # kept samples short of a full batch
            if rest is not None:
                self._train_batch(*rest, totals)
        sync_buffers(self.module)  # rank 0's running statistics on every rank
        return mean_over_ranks(*totals)  # None: an epoch with no training

    def _train_batch(
        self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, totals: list
    ) -> None:
        loss = self._step(x, y, idx)
        with self.acct.phase("sampling"):  # coverage bookkeeping
            self.coverage.update(idx)
        totals[0] += loss.detach() * len(y)
        totals[1] += len(y)

    def _step(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        acct = self.acct
        if self.config.schedule_unit == "step":
            self._set_lr(acct.optimizer_steps / max(self._total_steps, 1))
        with acct.phase("forward"):  # the sampler weights the loss (and InfoBatch observes it)
            with autocast(self.config.amp, self.device):
                logits = self._forward(x)
            loss = self.sieve.loss(logits.float(), y, idx)  # float32 whatever the precision
        with acct.phase("backward"):
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()  # the loss itself unless fp16
        with acct.phase("step"):
            acct.skipped_steps += scaled_step(self.scaler, self.optimizer)
        acct.samples_forwarded += len(y)
        acct.samples_backpropagated += len(y)
        acct.optimizer_steps += 1
        return loss

    def evaluate(self) -> dict[str, float | None]:
        """Test accuracy, loss and prediction entropy (see
        :func:`~sievetrain.train.evaluation.evaluate`), and how well the selector's
        scores rank true losses (``exit_spearman``, None when it does not score);
        all off the training clock."""
        self.acct._sync()
        start = time.perf_counter()
        metrics: dict[str, float | None] = evaluate(self.module, self.test_loader, self.device)
        metrics["exit_spearman"] = rank_correlation(
            self.selector, self.module, self.rank_loader, self.device
        )
        self.acct.eval_time_s += time.perf_counter() - start
        return metrics

    # -- results and state ------------------------------------------------------

    def summary(self) -> RunSummary:
        """Final figures of the run."""
        acct = self.acct
        last = self.history[-1] if self.history else {}
        selected = sum_samples(self.selector.stats())
        return RunSummary(
            final_test_accuracy=last.get("test_accuracy"),
            final_test_loss=last.get("test_loss"),
            final_test_entropy=last.get("test_entropy"),
            balanced_test_accuracy=last.get("test_balanced_accuracy"),
            worst_class_test_accuracy=last.get("test_worst_class_accuracy"),
            train_time_s=acct.train_time_s,
            train_cpu_s=acct.train_cpu_s,
            eval_time_s=acct.eval_time_s,
            warmup_time_s=acct.warmup_time_s,
            time_breakdown_s=dict(acct.time_s),
            cpu_breakdown_s=dict(acct.cpu_s),
            device_breakdown_s=dict(acct.device_s),
            samples_forwarded=acct.samples_forwarded,
            samples_forwarded_partially=selected.get("samples_forwarded_partially", 0),
            samples_forwarded_fully=acct.samples_forwarded
            + selected.get("samples_forwarded_no_grad", 0),
            samples_backpropagated=acct.samples_backpropagated,
            samples_scored=selected.get("samples_scored", 0),
            optimizer_steps=acct.optimizer_steps,
            skipped_steps=acct.skipped_steps,
            world_size=self.world_size,
            coverage=self.coverage.fraction,
            time_to_target_s=time_to_target(self.history, self.config.target_accuracy),
            final_exit_spearman=last.get("exit_spearman"),
            selector=selected,
            sampler=self.sampler.stats(),
            selection_audit=self.audit.record(),
            history=list(self.history),
        )

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the run exactly (on CPU, bitwise)."""
        return {
            "epoch": self.epoch,
            "model": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),  # empty unless fp16
            **self.sieve.state_dict(),  # sampler, selector, waiting samples, count
            "coverage": self.coverage.state_dict(),
            "accounting": self.acct.state_dict(),
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch = state["epoch"]
        self.module.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):  # a run without loss scaling saved none
            self.scaler.load_state_dict(state["scaler"])
        self.sieve.load_state_dict(state)
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
            steps += math.ceil(len(self.sampler) / self.local_batch)
        self.sampler.set_epoch(0)
        return steps

    def _warm_up(self) -> None:
        """One forward and backward as a step runs them, off the training clock, so that
        one-time costs (allocations, kernel selection, compilation) are not charged to
        training; its wall time is ``warmup_time_s``. The model is restored."""
        start = time.perf_counter()
        state = copy.deepcopy(self.model.state_dict())
        x, y, _ = next(iter(make_loader(self.train_set, self.local_batch)))
        x, y = x.to(self.device), y.to(self.device)
        if self.config.compile:  # one graph for the run's batch sizes, where the model allows
            mark_batch_dynamic(x, y)
        with torch.random.fork_rng(devices=rng_devices(self.device)):
            self.model.train()
            with autocast(self.config.amp, self.device):
                logits = self._forward(x)
            batch_loss(logits.float(), y).backward()
        self.model.zero_grad(set_to_none=True)
        self.model.load_state_dict(state)
        self.acct._sync()
        self.acct.warmup_time_s += time.perf_counter() - start
