"""sievetrain in a Hugging Face accelerate loop (``pip install 'sievetrain[hf]'``).

Model and optimizer (StochGradAdam too) go through ``accelerator.prepare`` as usual;
the training loader must not. A sievetrain sampler already gives each rank its own
share of the epoch, and ``accelerator.prepare`` undoes that (accelerate 1.15,
``accelerate/data_loader.py``):

- ``prepare_data_loader`` rebuilds the loader with its batch sampler wrapped in a
  ``BatchSamplerShard``, which shards the already sharded batches again (each rank then
  trains 1/W² of the epoch) and, with ``even_batches``, pads them with repeated samples;
- the rebuilt ``DataLoaderShard`` calls ``set_epoch(self.iteration)`` at every
  ``__iter__``, its own count of passes, over the sampler's epoch: a resumed run
  retrains epoch 0's subset;
- it is a plain ``DataLoader`` again (a :class:`~sievetrain.integrations.ResumableLoader`'s
  state is lost) and reads one batch ahead.

:func:`prepare_loader` builds the training loader instead: an :class:`AcceleratedLoader`,
which puts batches on ``accelerator.device``, tells accelerate where the epoch ends (for
``accelerator.accumulate``), and is saved by ``accelerator.save_state``.

:func:`register_for_checkpointing` adds any object with ``state_dict`` /
``load_state_dict`` (a selector) to ``accelerator.save_state`` / ``load_state``.
accelerate's own method of that name loads with ``torch.load(weights_only=False)``
(``accelerate/checkpointing.py``, ``load_custom_state``), which runs whatever code the
file holds; this one loads with ``weights_only=True``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from weakref import WeakKeyDictionary

import torch
from torch.utils.data import Dataset

from sievetrain.files import atomic_torch_save, load_torch
from sievetrain.integrations import missing_extra
from sievetrain.integrations.loader import ResumableLoader
from sievetrain.sampling.base import EpochSampler

try:
    from accelerate import Accelerator
    from accelerate.data_loader import DataLoaderStateMixin
    from accelerate.state import GradientState, PartialState
    from accelerate.utils import ProjectConfiguration, send_to_device
except ImportError as error:  # the optional extra is not installed
    raise ImportError(missing_extra("accelerate", "hf")) from error

__all__ = ["STATE_FILE", "AcceleratedLoader", "prepare_loader", "register_for_checkpointing"]

STATE_FILE = "sievetrain_state.pt"  # in each accelerate checkpoint folder


class AcceleratedLoader(ResumableLoader, DataLoaderStateMixin):
    """A :class:`~sievetrain.integrations.ResumableLoader` that puts each batch on
    ``device`` and tells accelerate's ``GradientState`` which batch ends the epoch.

    It reads no batch ahead, so its position is the batches handed out. The last batch
    of each pass sets ``end_of_dataloader``, so ``accelerator.accumulate`` steps there
    even when the epoch's batches are not a multiple of ``gradient_accumulation_steps``
    (as with a prepared loader). ``remainder`` stays -1: no sample is repeated, so
    ``gather_for_metrics`` has nothing to drop.

    Args:
        dataset, batch_size, sampler, **kwargs: as for ``ResumableLoader``.
        device: where batches go (``send_to_device``); None: where the dataset has them.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 1,
        *,
        sampler: EpochSampler,
        device: torch.device | str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, batch_size, sampler=sampler, **kwargs)
        self.device = None if device is None else torch.device(device)
        self.gradient_state = GradientState()  # accelerate's shared one

    def _batches_left(self) -> int:
        """Batches the next pass yields: from the resume point (or 0) to the epoch's end."""
        left = len(self.sampler) - self.sampler.next_start
        return left // self.batch_size if self.drop_last else math.ceil(left / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        last = self._batches_left()
        self.reset()  # end_of_dataloader False, remainder -1
        self.gradient_state._add_dataloader(self)  # as DataLoaderStateMixin.begin does
        try:
            for i, batch in enumerate(super().__iter__(), 1):
                self.end_of_dataloader = i == last
                yield batch if self.device is None else send_to_device(batch, self.device)
        finally:  # also when the loop breaks out mid-epoch
            self.end()


class _Checkpointed:
    """The objects saved with one accelerator's checkpoints; its save and load hooks."""

    def __init__(self, project: ProjectConfiguration) -> None:
        self.objects: list[Any] = []
        self.project = project

    def save(self, models: list, weights: list, output_dir: str) -> None:
        # Every rank: some state_dicts are collectives (InfoBatch merges the ranks' losses).
        states = [obj.state_dict() for obj in self.objects]
        # The main process writes (each node's, with save_on_each_node), as accelerate does.
        state = PartialState()
        if state.is_local_main_process if self.project.save_on_each_node else state.is_main_process:
            atomic_torch_save(states, Path(output_dir) / STATE_FILE)

    def load(self, models: list, input_dir: str) -> None:
        path = Path(input_dir) / STATE_FILE
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: {input_dir} was saved with no sievetrain object registered"
            )
        states = load_torch(path)  # weights_only=True: nothing in the file runs
        if len(states) != len(self.objects):
            raise ValueError(
                f"{path} holds {len(states)} states, but {len(self.objects)} objects are "
                f"registered: register the same objects, in the same order, as the saving run"
            )
        for obj, state in zip(self.objects, states, strict=True):
            obj.load_state_dict(state)


_CHECKPOINTED: WeakKeyDictionary[Accelerator, _Checkpointed] = WeakKeyDictionary()


def register_for_checkpointing(accelerator: Accelerator, *objects: Any) -> None:
    """Save ``objects`` with every ``accelerator.save_state`` and restore them with
    ``accelerator.load_state``, in one file (:data:`STATE_FILE`) of the checkpoint folder.

    Every rank calls each object's ``state_dict`` (call ``save_state`` on every rank, as
    accelerate requires); the main process writes; every rank loads that state, read with
    ``torch.load(weights_only=True)``. Objects load in the order they were registered.

    Raises:
        TypeError: an object lacks ``state_dict`` or ``load_state_dict``.
    """
    for obj in objects:
        if not (
            callable(getattr(obj, "state_dict", None))
            and callable(getattr(obj, "load_state_dict", None))
        ):
            raise TypeError(
                f"{type(obj).__name__} object has no state_dict/load_state_dict to checkpoint"
            )
    if accelerator not in _CHECKPOINTED:
        entry = _CHECKPOINTED[accelerator] = _Checkpointed(accelerator.project_configuration)
        accelerator.register_save_state_pre_hook(entry.save)
        accelerator.register_load_state_pre_hook(entry.load)
    _CHECKPOINTED[accelerator].objects.extend(objects)


def prepare_loader(
    accelerator: Accelerator,
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: EpochSampler,
    **kwargs: Any,
) -> AcceleratedLoader:
    """The training loader of an accelerate loop: use it instead of ``accelerator.prepare``.

    Each rank's loader yields its sampler's share of the epoch, on ``accelerator.device``,
    not sharded again; ``loader.set_epoch(epoch)`` selects the epoch (not overridden); and
    the loader is registered for checkpointing (:func:`register_for_checkpointing`), so
    ``accelerator.load_state`` resumes it where ``accelerator.save_state`` found it,
    mid-epoch too. After ``load_state``, ``loader.sampler.epoch`` is the epoch to go on with.

    Args:
        accelerator: the run's; the sampler shards over its processes at its first epoch.
        dataset: a map-style dataset (wrap it in :class:`~sievetrain.data.IndexedDataset`
            for each sample's index).
        batch_size: samples per batch on each process (the global batch is W times it).
        sampler: a sievetrain :class:`~sievetrain.sampling.EpochSampler`.
        **kwargs: other ``DataLoader`` arguments (``num_workers``, ``collate_fn``, ...).

    Raises:
        TypeError: ``sampler`` is not an ``EpochSampler``.
        ValueError: the sampler does not shard over the accelerator's processes.
    """
    loader = AcceleratedLoader(
        dataset, batch_size, sampler=sampler, device=accelerator.device, **kwargs
    )
    mine = (accelerator.num_processes, accelerator.process_index)
    if (sampler.num_replicas, sampler.rank) != mine:
        raise ValueError(
            f"sampler has num_replicas={sampler.num_replicas}, rank={sampler.rank}, but the "
            f"accelerator runs {mine[0]} processes and this is process {mine[1]}: leave "
            f"num_replicas and rank unset, and the sampler follows the process group at its "
            f"first epoch"
        )
    register_for_checkpointing(accelerator, loader)
    return loader
