"""Files that survive a crash and cannot run code: atomic writes, safe loads.

Every write goes through one writer: a temporary file in the same folder, flushed
and ``fsync``-ed, renamed over the target, then the folder ``fsync``-ed so that the
rename itself is on disk. A crash leaves the old file or the new one, never a mix.
Torch files are loaded with ``weights_only=True``: tensors and plain types only,
so a file someone else handed you cannot execute anything when it is read.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "CheckpointError",
    "append_jsonl",
    "atomic_torch_save",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_torch",
    "read_jsonl",
]


class CheckpointError(ValueError):
    """A torch file that cannot be loaded safely: unsafe, truncated or not torch's."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform whose folders cannot be opened (Windows): nothing to sync
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> None:
    """``torch.save`` through the atomic writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_torch(path: str | os.PathLike) -> Any:
    """``torch.load(path, weights_only=True)``: tensors and plain types, nothing executed.

    Raises:
        CheckpointError: naming the file, when it holds anything else (a pickled
            object whose loading would run code), is truncated or is no torch file.
    """
    try:
        return torch.load(path, weights_only=True, map_location="cpu")
    except Exception as error:  # UnpicklingError, RuntimeError (bad zip), EOFError, ...
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(
            f"{str(path)!r} cannot be loaded safely (tensors and plain types only): {reason}"
        ) from None


def append_jsonl(path: str | os.PathLike, record: dict) -> None:
    """Append one JSON line; the file is rewritten atomically, so a crash leaves
    either the old lines or the old lines plus this one."""
    path = Path(path)
    old = path.read_bytes() if path.exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    atomic_write_bytes(path, old + (json.dumps(record) + "\n").encode())


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a JSON-lines file; an empty list if it does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
