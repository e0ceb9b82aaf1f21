"""sievetrain in the Hugging Face ``transformers.Trainer`` (``pip install 'sievetrain[hf]'``).

:class:`SieveTrainer` is a ``Trainer`` that draws each epoch from a sievetrain sampler
(SRS, InfoBatch, ...), lets a selector (SIFT, RandomKeep, Selective Backprop) pick the
samples of each batch that get the backward pass, and checkpoints both so that
``trainer.train(resume_from_checkpoint=...)`` resumes mid-epoch exactly. StochGradAdam
needs nothing of it: ``optimizer_cls_and_kwargs=(StochGradAdam, {...})`` works in any
``Trainer``, and its mask generators travel in the optimizer's state.

How it meets the ``Trainer`` (transformers 5.x, accelerate 1.x):

- The train loader is a :class:`~sievetrain.integrations.ResumableLoader` over the
  sampler, not passed to ``accelerator.prepare``: accelerate would wrap it in a
  ``BatchSamplerShard`` and shard the batches again, though the sampler already gives
  each rank its own share. ``training_step`` moves batches to the device as usual.
- A mid-epoch resume goes through the ``Trainer``'s own skip (``skip_first_batches``,
  which keeps its step count, gradient accumulation and RNG restore right), with the
  sampler loaded at the checkpoint's epoch and position 0, so nothing is skipped twice.
  That skip wraps the loader in one whose ``set_epoch`` does not reach the sampler, so
  the sampler's epoch comes from the checkpoint, as do the batches to skip: the
  ``Trainer`` computes both from ``global_step`` assuming equal epochs, which InfoBatch's
  are not.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from sievetrain.files import atomic_torch_save, load_torch
from sievetrain.integrations import missing_extra
from sievetrain.integrations.loader import ResumableLoader
from sievetrain.sampling import SoftRandomSampler
from sievetrain.sampling.base import EpochSampler
from sievetrain.selection.base import Selector

try:
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as error:  # the optional extra is not installed
    raise ImportError(missing_extra("hf", "hf")) from error

__all__ = ["STATE_FILE", "SieveTrainer"]

STATE_FILE = "sievetrain_state.pt"  # in each checkpoint folder, next to the Trainer's files


class _Logits(nn.Module):
    """The model as a selector calls it: ``model(x)`` returns logits, and stage names
    (``get_submodule``) are the wrapped model's own, e.g. ``"bert.encoder.layer.0"``."""

    def __init__(self, model: nn.Module, input_key: str) -> None:
        super().__init__()
        self.model, self.input_key = model, input_key

    def forward(self, x: Tensor) -> Tensor:
        return self.model(**{self.input_key: x}).logits

    def get_submodule(self, target: str) -> nn.Module:
        return self.model.get_submodule(target)


class SieveTrainer(Trainer):
    """A ``transformers.Trainer`` that trains on a sievetrain sampler's epochs, with an
    optional batch-level selector, and resumes both exactly.

    Args:
        *args: the ``Trainer``'s arguments (``model``, ``args``, ...).
        sampler: an :class:`~sievetrain.sampling.EpochSampler` over ``train_dataset``,
            built after ``TrainingArguments`` (which starts the process group under
            ``torchrun``), so that it shards by rank; None: full data, a fresh
            permutation every epoch (``SoftRandomSampler(n, 1.0, seed=args.seed)``).
        selector: a :class:`~sievetrain.selection.Selector`; None: every sample of
            every batch is trained.
        input_key: the batch key a selector's scoring pass feeds the model.
        **kwargs: the ``Trainer``'s keyword arguments.

    Training batches are dicts of model inputs, ``"labels"`` and ``"idx"`` (each
    sample's dataset index: wrap the dataset in :class:`~sievetrain.data.IndexedDataset`);
    the collator sees the items as they are (no columns are removed). The loss is the
    mean cross-entropy over the kept samples' predicted targets; with a sampler that
    observes losses (InfoBatch) it is ``mean(w * l)`` over per-sample losses ``l``,
    which the sampler is fed. A selector that ``accumulates`` (Selective Backprop)
    simply trains the samples it keeps of each batch. ``samples_backpropagated`` counts
    this rank's trained samples. Evaluation is the ``Trainer``'s own.
    """

    loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

    def __init__(
        self,
        *args: Any,
        sampler: EpochSampler | None = None,
        selector: Selector | None = None,
        input_key: str = "input_ids",
        **kwargs: Any,
    ) -> None:
        if sampler is not None and not isinstance(sampler, EpochSampler):
            raise TypeError(
                f"sampler must be a sievetrain EpochSampler, got {type(sampler).__name__}"
            )
        if selector is not None and not isinstance(selector, Selector):
            raise TypeError(
                f"selector must be a sievetrain Selector, got {type(selector).__name__}"
            )
        super().__init__(*args, **kwargs)
        self.sampler, self.selector, self.input_key = sampler, selector, input_key
        self.samples_backpropagated = 0
        self._counted: tuple[int | None, int] = (None, 0)  # (epoch, its batches trained)

    def get_train_dataloader(self) -> ResumableLoader:
        """A :class:`ResumableLoader` over the sampler; not prepared by accelerate,
        which would shard the batches a second time."""
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        args = self.args
        if self.sampler is None:
            self.sampler = SoftRandomSampler(len(self.train_dataset), 1.0, seed=args.seed)
        if self.sampler.num_replicas != args.world_size:
            raise ValueError(
                f"sampler has num_replicas={self.sampler.num_replicas} but the run has "
                f"{args.world_size} processes: build it after TrainingArguments, which starts "
                f"the process group, and leave num_replicas unset"
            )
        self._counted = (None, 0)
        return ResumableLoader(
            self.train_dataset,
            self._train_batch_size,
            sampler=self.sampler,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            drop_last=args.dataloader_drop_last,
        )

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Training: select, forward the kept samples, weight and feed back their losses.
        Evaluation (the model not in training mode): the ``Trainer``'s own."""
        inputs = dict(inputs)  # the caller's dict stays as it was
        idx = inputs.pop("idx", None)
        if not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if idx is None:
            raise ValueError(
                "a training batch has no 'idx' (each sample's dataset index): wrap the "
                "train dataset in sievetrain.data.IndexedDataset"
            )
        self._count_batch()
        labels = inputs.pop("labels")  # the model computes no loss of its own
        keep = self._select(inputs[self.input_key], labels)
        if keep is not None:
            if len(keep) == 0:  # Selective Backprop in one process may keep none: no step
                loss = torch.zeros((), device=labels.device, requires_grad=True)
                return (loss, None) if return_outputs else loss
            inputs = {k: _take(v, keep, len(labels)) for k, v in inputs.items()}
            labels, idx = labels[keep], idx[keep]
        outputs = model(**inputs)
        self.samples_backpropagated += len(labels)
        loss = self.sampler.loss(outputs.logits, labels, idx)
        return (loss, outputs) if return_outputs else loss

    def _select(self, x: Tensor, labels: Tensor) -> Tensor | None:
        if self.selector is None:
            return None
        if self.selector.epoch != self.sampler.epoch:
            self.selector.set_epoch(self.sampler.epoch)
        # The plain model, not the DDP wrapper: a scoring pass runs no DDP collective.
        return self.selector.select(_Logits(self.model, self.input_key), x, labels)

    def _count_batch(self) -> None:
        """Count the batches trained in the sampler's epoch (the checkpoint's position)."""
        epoch, done = self._counted
        self._counted = (self.sampler.epoch, done + 1 if epoch == self.sampler.epoch else 1)

    def _epoch_batches(self) -> int:
        """Batches in the sampler's current epoch on this rank."""
        samples, size = len(self.sampler), self._train_batch_size
        return samples // size if self.args.dataloader_drop_last else -(-samples // size)

    def _sieve_state(self) -> dict[str, Any]:
        """The sampler's state at the batches trained, the selector's, and the count of
        samples backpropagated. Call it on every rank: InfoBatch's is a collective."""
        epoch, done = self._counted
        done = done if epoch == self.sampler.epoch else 0
        position = min(done * self._train_batch_size, len(self.sampler))
        return {
            "sampler": {**self.sampler.state_dict(), "position": position},
            "batches_done": done,
            "selector": None if self.selector is None else self.selector.state_dict(),
            "samples_backpropagated": self.samples_backpropagated,
        }

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        state = self._sieve_state()  # every rank, before rank 0 writes
        if self.args.should_save:
            folder = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
            path = os.path.join(self._get_output_dir(trial), folder, STATE_FILE)
            atomic_torch_save(state, path)  # a crash mid-write leaves no half file

    def _init_training_state(
        self,
        max_steps: int,
        num_update_steps_per_epoch: int,
        num_train_epochs: int,
        resume_from_checkpoint: str | None,
        trial: Any,
    ) -> tuple[int, int]:
        """The ``Trainer``'s ``(epochs_trained, batches to skip)``, from our checkpoint
        state when the checkpoint has one; loads the sampler and the selector."""
        resume = super()._init_training_state(
            max_steps, num_update_steps_per_epoch, num_train_epochs, resume_from_checkpoint, trial
        )
        if resume_from_checkpoint is None:
            return resume
        path = os.path.join(resume_from_checkpoint, STATE_FILE)
        if not os.path.isfile(path):  # the Trainer's own arithmetic would pick the wrong epoch
            raise FileNotFoundError(
                f"{path} not found: {resume_from_checkpoint} was not saved by a SieveTrainer"
            )
        state = load_torch(path)  # weights_only=True: nothing in the file runs
        # Position 0: the Trainer's skip_first_batches skips the trained batches itself.
        self.sampler.load_state_dict({**state["sampler"], "position": 0})
        if self.selector is not None:
            self.selector.load_state_dict(state["selector"])
        self.samples_backpropagated = state["samples_backpropagated"]
        epoch, done = state["sampler"]["epoch"], state["batches_done"]
        if done >= self._epoch_batches():  # saved at the epoch's end
            epoch, done = epoch + 1, 0
        if self.args.ignore_data_skip:  # the Trainer then retrains the epoch from its start
            done = 0
        self._counted = (epoch, done)
        return epoch, done


def _take(value: Any, keep: Tensor, batch: int) -> Any:
    """The kept rows of a batch entry; an entry that is not per-sample stays whole."""
    if isinstance(value, Tensor) and value.dim() > 0 and len(value) == batch:
        return value[keep]
    return value
