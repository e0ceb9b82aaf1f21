"""An optimizer's and a model's state through ``torch.distributed.checkpoint``, as a
resumed run takes it: the helper of the DDP and FSDP2 resume tests."""

from __future__ import annotations

from collections.abc import Callable

import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_state_dict,
)
from torch.optim import Optimizer


def through_checkpoint(
    model: nn.Module,
    optimizer: Optimizer,
    fresh: Callable[[], tuple[nn.Module, Optimizer]],
    options: StateDictOptions,
    folder: str | None,
) -> tuple[nn.Module, Optimizer]:
    """The model and optimizer ``fresh()`` makes, given ``model``'s and ``optimizer``'s
    states: ``get_state_dict``, then to ``folder`` and back with ``dcp.save`` and
    ``dcp.load`` (into the fresh objects' state dicts, as dcp loads) when one is given,
    else in memory; then ``set_state_dict``."""
    model_state, optim_state = get_state_dict(model, optimizer, options=options)
    if folder is not None:
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=folder)
    model, optimizer = fresh()
    if folder is not None:
        model_state, optim_state = get_state_dict(model, optimizer, options=options)
        dcp.load({"model": model_state, "optim": optim_state}, checkpoint_id=folder)
    set_state_dict(
        model,
        optimizer,
        model_state_dict=model_state,
        optim_state_dict=optim_state,
        options=options,
    )
    return model, optimizer
