"""sievetrain in the Hugging Face ``transformers.Trainer`` (``pip install 'sievetrain[hf]'``).

:class:`SieveTrainer` is a ``Trainer`` that draws each epoch from a sievetrain sampler
(SRS, InfoBatch, GRAD-MATCH, ...), lets a selector (SIFT, RandomKeep, Selective
Backprop) pick the samples of each batch that get the backward pass, and checkpoints
both so that ``trainer.train(resume_from_checkpoint=...)`` resumes mid-epoch exactly.
Its step runs the protocol of a :class:`~sievetrain.Sieve` (:attr:`SieveTrainer.sieve`),
as every sievetrain front end does. StochGradAdam needs nothing of it:
``optimizer_cls_and_kwargs=(StochGradAdam, {...})`` works in any ``Trainer``.

How it meets the ``Trainer`` (transformers 5.25, accelerate 1.x):

- The train loader is a :class:`~sievetrain.integrations.ResumableLoader` over the
  sampler, bound to the sieve, and not passed to ``accelerator.prepare``: accelerate
  would wrap it in a ``BatchSamplerShard`` and shard the batches again, though the
  sampler already gives each rank its own share. Its ``set_epoch``, which the
  ``Trainer`` calls at each epoch's start, begins the sieve's epoch (GRAD-MATCH selects
  there). ``training_step`` moves batches to the device as usual.
- A selector that gathers kept samples into full batches (Selective Backprop) trains
  one per loaded batch once enough wait, and the loader's empty last batch of each
  epoch trains the rest; a step with nothing to train makes no update.
- A mid-epoch resume loads the sieve's state (the sampler at the samples consumed) and
  hands the ``Trainer`` the loader as it is (``get_resumed_dataloader``), with the epoch
  and the batches done taken from that state: the ``Trainer`` computes both from
  ``global_step`` assuming equal epochs, which InfoBatch's are not.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from sievetrain.files import atomic_torch_save, load_torch
from sievetrain.integrations import missing_extra
from sievetrain.integrations.loader import ResumableLoader
from sievetrain.sampling import SoftRandomSampler
from sievetrain.sampling.base import EpochSampler
from sievetrain.selection.base import Selector
from sievetrain.sieve import Sieve

try:
    import transformers
    from transformers import Trainer
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as error:  # the optional extra is not installed
    raise ImportError(missing_extra("hf", "hf")) from error

if not hasattr(Trainer, "get_resumed_dataloader"):  # a resume would skip batches twice
    raise ImportError(
        f"sievetrain.integrations.hf needs transformers >= 5.25 (Trainer.get_resumed_dataloader), "
        f"found transformers {transformers.__version__}: pip install 'sievetrain[hf]'"
    )

__all__ = ["STATE_FILE", "SieveTrainer"]

STATE_FILE = "sievetrain_state.pt"  # in each checkpoint folder, next to the Trainer's files


class _Logits(nn.Module):
    """The model as a selector calls it: ``model(x)`` returns logits, and stage names
    (``get_submodule``) are the wrapped model's own, e.g. ``"bert.encoder.layer.0"``."""

    def __init__(self, model: nn.Module, input_key: str) -> None:
        super().__init__()
        self.model, self.input_key = model, input_key

    def forward(self, x: Tensor) -> Tensor:
        return _logits(self.model(**{self.input_key: x}))

    def get_submodule(self, target: str) -> nn.Module:
        return self.model.get_submodule(target)


class _Pairs(Dataset):
    """A dataset of dict items as the ``(input, label)`` items a coreset scores."""

    def __init__(self, dataset: Dataset, input_key: str, label_key: str) -> None:
        self.dataset, self.keys = dataset, (input_key, label_key)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        item = self.dataset[i]
        return item[self.keys[0]], item[self.keys[1]]


class _EpochLoader(ResumableLoader):
    """The train loader; the ``Trainer``'s ``set_epoch`` begins the sieve's epoch."""

    def __init__(self, *args: Any, begin_epoch: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._begin_epoch = begin_epoch

    def set_epoch(self, epoch: int) -> None:
        self._begin_epoch(epoch)


class SieveTrainer(Trainer):
    """A ``transformers.Trainer`` that trains on a sievetrain sampler's epochs, with an
    optional batch-level selector, and resumes both exactly.

    Args:
        *args: the ``Trainer``'s arguments (``model``, ``args``, ...).
        sampler: an :class:`~sievetrain.sampling.EpochSampler` over ``train_dataset``;
            None: full data, a fresh permutation every epoch
            (``SoftRandomSampler(n, 1.0, seed=args.seed)``). It shards over the
            processes at its first epoch, wherever it was built.
        selector: a :class:`~sievetrain.selection.Selector`; None: every sample of
            every batch is trained.
        input_key: the batch key a selector's scoring pass (and a coreset's) feeds the
            model.
        **kwargs: the ``Trainer``'s keyword arguments.

    Training batches are dicts of model inputs, ``"labels"`` and ``"idx"`` (each
    sample's dataset index: wrap the dataset in :class:`~sievetrain.data.IndexedDataset`);
    the collator sees the items as they are (no columns are removed). The loss is the
    sieve's: the mean cross-entropy over the kept samples' predicted targets, or with a
    sampler that observes losses (InfoBatch) ``mean(w * l)`` over per-sample losses
    ``l``, which the sampler is fed. ``samples_backpropagated`` counts this rank's
    trained samples. Evaluation is the ``Trainer``'s own.
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
        self.selector, self.input_key = selector, input_key
        self._sieve: Sieve | None = None
        self._sampler = sampler

    @property
    def sampler(self) -> EpochSampler | None:
        """The sieve's sampler (the default one once training has started)."""
        return self._sampler if self._sieve is None else self._sieve.sampler

    @property
    def sieve(self) -> Sieve:
        """The step protocol, made when the train loader is."""
        if self._sieve is None:
            raise RuntimeError("SieveTrainer makes its sieve with the train loader: call train()")
        return self._sieve

    @property
    def samples_backpropagated(self) -> int:
        """Samples trained on this rank."""
        return 0 if self._sieve is None else self._sieve.samples_backpropagated

    def get_train_dataloader(self) -> ResumableLoader:
        """A :class:`ResumableLoader` over the sampler, bound to the sieve; not prepared
        by accelerate, which would shard the batches a second time."""
        if self.train_dataset is None:
            raise ValueError("Trainer: training requires a train_dataset.")
        if self._sieve is None:
            sampler = self._sampler
            if sampler is None:
                sampler = SoftRandomSampler(len(self.train_dataset), 1.0, seed=self.args.seed)
            self._sieve = Sieve(
                sampler, self.selector, batch_size=self._train_batch_size, input_key=self.input_key
            )
        if self._sieve.sampler.num_replicas != self.args.world_size:
            raise ValueError(
                f"sampler has num_replicas={self._sieve.sampler.num_replicas} but the run has "
                f"{self.args.world_size} processes: leave num_replicas and rank unset, and the "
                f"sampler follows the process group at its first epoch"
            )
        args = self.args
        loader = _EpochLoader(
            self.train_dataset,
            self._sieve.loader_batch_size,  # candidate batches of several (RHO-LOSS)
            sampler=self._sieve.sampler,
            begin_epoch=self._begin_epoch,
            collate_fn=self.data_collator,
            num_workers=args.dataloader_num_workers,
            pin_memory=args.dataloader_pin_memory,
            persistent_workers=args.dataloader_persistent_workers,
            prefetch_factor=args.dataloader_prefetch_factor,
            drop_last=args.dataloader_drop_last,
        )
        loader.sieve = self._sieve  # its position; a gathering sieve's end-of-epoch batch
        return loader

    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        """The train loader as it is: the sieve's loaded state resumes it at the samples
        consumed, so nothing is skipped here."""
        return dataloader

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor | tuple[Tensor, Any]:
        """Training: the sieve selects (and gathers) the samples to train, the model runs
        on those, the loss is the sieve's. Evaluation (the model not in training mode):
        the ``Trainer``'s own."""
        if not model.training:
            inputs = {k: v for k, v in inputs.items() if k != "idx"}
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if "idx" not in inputs:
            raise ValueError(
                "a training batch has no 'idx' (each sample's dataset index): wrap the "
                "train dataset in sievetrain.data.IndexedDataset"
            )
        # The plain model, not the DDP wrapper: a scoring pass runs no DDP collective.
        batch = self.sieve.select(dict(inputs), _Logits(self.model, self.input_key))
        if batch is None:  # nothing to train in this step: no gradient, no update
            loss = torch.zeros((), device=inputs["idx"].device, requires_grad=True)
            return (loss, None) if return_outputs else loss
        labels, idx = batch.pop(self.sieve.label_key), batch.pop("idx")
        outputs = model(**batch)  # no labels: the model computes no loss of its own
        loss = self.sieve.loss(_logits(outputs), labels, idx)
        return (loss, outputs) if return_outputs else loss

    def _begin_epoch(self, epoch: int) -> None:
        dataset = _Pairs(self.train_dataset, self.input_key, self.sieve.label_key)
        self.sieve.begin_epoch(epoch, _Logits(self.model, self.input_key), dataset)

    def _save_checkpoint(self, model: nn.Module, trial: Any) -> None:
        super()._save_checkpoint(model, trial)
        state = self.sieve.state_dict()  # every rank, before rank 0 writes
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
        """The ``Trainer``'s ``(epochs_trained, batches done in that epoch)``, from our
        checkpoint state when the checkpoint has one; loads the sieve."""
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
        if self.args.ignore_data_skip:  # the Trainer then retrains the epoch from its start
            state = {**state, "sampler": {**state["sampler"], "position": 0}, "waiting": None}
        self.sieve.load_state_dict(state)
        epoch, position = state["sampler"]["epoch"], state["sampler"]["position"]
        size, samples = self.sieve.loader_batch_size, len(self.sieve.sampler)
        loaded = -(-position // size)  # batches of the epoch consumed (the last may be short)
        if position >= samples and not self.sieve.waiting:  # saved at the epoch's end
            return epoch + 1, 0
        return epoch, loaded


def _logits(outputs: Any) -> Tensor:
    """The logits of a model's outputs: a ``ModelOutput`` or a plain dict."""
    return outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
