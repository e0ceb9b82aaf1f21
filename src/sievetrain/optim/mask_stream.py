"""StochGradAdam's owned randomness: a seed, and one generator per device type."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sievetrain import distributed
from sievetrain.optim.checks import generator_states
from sievetrain.options import as_int
from sievetrain.rng import derive_seed

__all__ = ["MaskStream"]


class MaskStream:
    """A seed (None until taken: rank 0's, at the first step) and one generator per
    device type (``"cuda"`` on every rank, whichever GPU it holds), each seeded from
    (seed, device type) when first needed, or given the state loaded for it."""

    def __init__(self, seed: int | None) -> None:
        self.seed = None if seed is None else as_int("seed", seed)
        self._generators: dict[str, torch.Generator] = {}
        self._pending: dict[str, Tensor] = {}  # loaded states of generators not yet made

    def take_seed(self) -> None:
        """Take rank 0's seed if there is none yet: a collective, so every rank calls it
        together (at a step: every rank steps together)."""
        if self.seed is None:
            self.seed = distributed.shared_seed(None, "stochgradadam")

    def generator(self, device: torch.device) -> torch.Generator:
        """The generator of ``device``'s type, made on ``device`` when first needed."""
        key = device.type
        if key not in self._generators:
            generator = torch.Generator(device=device)
            generator.manual_seed(derive_seed(self.seed, "stochgradadam", key))
            if key in self._pending:
                generator.set_state(self._pending.pop(key))
            self._generators[key] = generator
        return self._generators[key]

    def states(self) -> dict[str, Tensor]:
        """The generators' states (CPU byte tensors), a loaded one not yet used too."""
        return {**self._pending, **{k: g.get_state() for k, g in self._generators.items()}}

    @classmethod
    def restored(cls, seed: Any, generators: Any) -> MaskStream:
        """The stream saved as ``seed`` and ``generators`` (by device type: byte tensors
        or bytes); ValueError naming a bad value."""
        stream = cls(seed)
        stream._pending = generator_states(generators)
        return stream
