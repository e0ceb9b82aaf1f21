"""What the loaders share: the cache folder."""

from __future__ import annotations

import os
import pathlib

import platformdirs

__all__ = ["cache_dir"]


def cache_dir() -> pathlib.Path:
    """Cache folder: ``$SIEVETRAIN_CACHE_DIR``, else the platform's user cache dir."""
    return pathlib.Path(
        os.environ.get("SIEVETRAIN_CACHE_DIR") or platformdirs.user_cache_dir("sievetrain")
    )
