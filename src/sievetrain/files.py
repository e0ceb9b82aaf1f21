"""Files that survive a crash and cannot run code: atomic writes, safe loads.

Every write goes through one writer: a temporary file in the same folder, flushed
and ``fsync``-ed, renamed over the target, then the folder ``fsync``-ed so that the
rename itself is on disk. A crash leaves the old file or the new one, never a mix.
New files get the permissions the umask allows (as ``open`` would give them); a
file replaced keeps its own. Torch files are loaded with ``weights_only=True``:
tensors and plain types only, so a file someone else handed you cannot execute
anything when it is read. Every file read back names itself, and the line, when
it is damaged.
"""

from __future__ import annotations

import fnmatch
import io
import json
import os
import re
import secrets
from pathlib import Path
from typing import Any

import platformdirs
import torch

__all__ = [
    "CheckpointError",
    "TEMPORARY_SUFFIX",
    "append_jsonl",
    "atomic_torch_save",
    "cache_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_torch",
    "read_jsonl",
    "remove_temporaries",
]


def cache_dir() -> Path:
    """Cache folder (generated datasets, built kernels): ``$SIEVETRAIN_CACHE_DIR``,
    else the platform's user cache dir."""
    return Path(os.environ.get("SIEVETRAIN_CACHE_DIR") or platformdirs.user_cache_dir("sievetrain"))


# The suffix of the writer's temporary files: ``.NAME.RANDOM.tmp`` next to ``NAME``.
TEMPORARY_SUFFIX = ".tmp"


class CheckpointError(ValueError):
    """A torch file that cannot be loaded safely: unsafe, truncated or not torch's."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and an atomic rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}{TEMPORARY_SUFFIX}"
    # Mode 0o666 less the umask, as open() would give; an existing file keeps its own.
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if path.exists():
            os.chmod(tmp, mode)  # the umask narrowed it at creation
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_temporaries(folder: str | os.PathLike, target: str = "*") -> list[Path]:
    """Delete the writer's temporary files in ``folder`` for targets whose names match
    the glob ``target`` (files left by a process killed mid-write: incomplete by
    construction, never the only copy); returns them."""
    found = []
    for path in Path(folder).glob(f".*{TEMPORARY_SUFFIX}"):
        # .NAME.RANDOM.tmp, RANDOM being 8 characters (this writer's, or mkstemp's)
        parts = re.fullmatch(r"\.(.+)\.[A-Za-z0-9_]{8}" + re.escape(TEMPORARY_SUFFIX), path.name)
        if parts and fnmatch.fnmatchcase(parts[1], target) and path.is_file():
            path.unlink(missing_ok=True)
            found.append(path)
    return sorted(found)


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
    """Records of a JSON-lines file; an empty list if it does not exist.

    Raises:
        ValueError: naming the file and the line, when a line is not a JSON object
            or the file is not UTF-8 text.
    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise ValueError(f"{str(path)!r} is not UTF-8 text: {error.reason}") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(
                f"{str(path)!r} line {number} is not valid JSON: {error.msg}"
            ) from None
        if not isinstance(record, dict):
            raise ValueError(f"{str(path)!r} line {number} is not a JSON object: {_clip(line)}")
        records.append(record)
    return records


def _clip(text: str, width: int = 60) -> str:
    text = text.strip()
    return text if len(text) <= width else text[: width - 1] + "…"
