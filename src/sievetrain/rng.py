"""Owned randomness: seeds for independent random streams, derived by hashing."""

from __future__ import annotations

import hashlib

import torch

__all__ = ["derive_seed", "make_generator", "rng_devices"]


def derive_seed(seed: int, *parts: object) -> int:
    """A 63-bit seed for the stream named by ``parts`` under ``seed``.

    Hashing (seed, purpose, epoch, ...) rather than adding numbers keeps streams
    independent: ``derive_seed(0, "order", 1)`` and ``derive_seed(1, "order", 0)``
    share nothing.
    """
    text = repr((int(seed), *parts)).encode()
    return int.from_bytes(hashlib.blake2b(text, digest_size=8).digest(), "little") >> 1


def make_generator(
    seed: int, *parts: object, device: str | torch.device = "cpu"
) -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with ``derive_seed(seed, *parts)``."""
    generator = torch.Generator(device=device)
    generator.manual_seed(derive_seed(seed, *parts))
    return generator


def rng_devices(device: torch.device) -> list[int]:
    """The CUDA devices whose RNG ``torch.random.fork_rng`` must fork for work on
    ``device`` (none on the CPU)."""
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]
