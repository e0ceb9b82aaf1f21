"""What the loaders share: the cache folder and the check on a requested size."""

from __future__ import annotations

import numbers
import os
import pathlib

import platformdirs

__all__ = ["cache_dir"]


def cache_dir() -> pathlib.Path:
    """Cache folder: ``$SIEVETRAIN_CACHE_DIR``, else the platform's user cache dir."""
    return pathlib.Path(
        os.environ.get("SIEVETRAIN_CACHE_DIR") or platformdirs.user_cache_dir("sievetrain")
    )


def _as_size(label: str, size: object) -> int:
    """``size`` as an int; a ``ValueError`` naming it unless it is an integer > 0 (bools
    and floats are refused: ``1.5`` samples has no meaning, ``True`` is a typo)."""
    if isinstance(size, bool) or not isinstance(size, numbers.Integral) or size <= 0:
        raise ValueError(f"{label} must be an int > 0, got {size!r}")
    return int(size)
