"""Files that survive a crash and cannot run code: atomic writes, safe loads, and a
lock that keeps two processes from writing one folder.

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
import hashlib
import io
import json
import os
import re
import secrets
import socket
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import platformdirs
import torch

__all__ = [
    "CheckpointError",
    "FolderInUse",
    "FolderLock",
    "LOCK_FILE",
    "TEMPORARY_SUFFIX",
    "append_jsonl",
    "atomic_torch_save",
    "cache_dir",
    "atomic_write_bytes",
    "atomic_write_text",
    "cached",
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


def cached(
    folder: str,
    key: object,
    what: str,
    problem: Callable[[Any], str | None],
    make: Callable[[], Any],
) -> Any:
    """Generated data: read back from the cache when an intact copy is there, else made
    by ``make()`` and written there atomically.

    The file is ``cache_dir() / folder / NAME.pt``, NAME the first 16 hex digits of the
    SHA-256 of ``repr(key)``. A copy that cannot be loaded safely, or whose content
    ``problem(content)`` finds wrong, is named in a warning and made again over
    (regenerating loses nothing).

    Args:
        folder: The dataset's folder in the cache.
        key: What the data depends on (a version tag and the arguments).
        what: The dataset's name, for the warning.
        problem: What makes loaded content differ from what ``make`` returns, or
            ``None`` when nothing does.
        make: Generates the content (tensors and plain types).
    """
    digest = hashlib.sha256(repr(key).encode()).hexdigest()
    path = cache_dir() / folder / f"{digest[:16]}.pt"
    if path.exists():
        try:
            content = load_torch(path)
        except CheckpointError as error:  # its message names the file
            reason = str(error)
        else:
            reason = problem(content)
            if reason is None:
                return content
            reason = f"{str(path)!r} {reason}"
        warnings.warn(f"regenerating the damaged {what} cache: {reason}", stacklevel=3)
    content = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(content, path)
    return content


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


# The lock file a writing process holds in its output folder.
LOCK_FILE = ".sievetrain.lock"


class FolderInUse(ValueError):
    """Another live process holds the folder's lock."""


class FolderLock:
    """One process's claim on a folder it writes to: ``FOLDER/.sievetrain.lock``, which
    names the owner (pid and host).

    The claim is an ``fcntl.flock`` on that file, not the file's existence. The kernel
    drops it when the process ends, however it ends (``kill -9`` too), so a lock file left
    by a dead process is known to be stale without guessing from its pid (which the system
    may have given to another process since), and two processes cannot both take a stale
    one over, as they could by checking a pid and replacing the file. Linux's NFS client
    carries ``flock`` to the server. Where ``fcntl`` is missing (Windows) nothing is locked.

    Args:
        folder: the folder; :meth:`acquire` creates it and its missing parents.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_FILE
        self._fd: int | None = None
        self._created: list[Path] = []  # folders acquire() made, outermost first

    def acquire(self) -> FolderLock:
        """Create the folder if needed and take the lock; returns ``self``. A lock file
        whose process has ended is taken over with a warning naming that process.

        Raises:
            FolderInUse: another process holds it (the message names its pid and host).
            OSError: the folder or its lock file cannot be created.
        """
        self._created = _make_folders(self.folder)
        try:
            self._fd = self._take()
        except BaseException:
            self._remove_created()
            raise
        return self

    def _take(self) -> int | None:
        try:
            import fcntl
        except ImportError:  # no flock here: nothing to hold
            return None
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                owner = _owner(os.pread(fd, 4096, 0))
                os.close(fd)
                raise FolderInUse(
                    f"{str(self.folder)!r} is in use by {owner} (it holds "
                    f"{str(self.path)!r}): wait for it to end, or choose another folder"
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if _same_file(fd, self.path):
                break
            os.close(fd)  # its owner released it (and removed it) as we opened it: again
        left = os.pread(fd, 4096, 0)
        if left.strip():  # written by an owner that ended without releasing it
            warnings.warn(
                f"{str(self.path)!r} was left by {_owner(left)}, which has ended: "
                "taking the folder over",
                stacklevel=3,
            )
        mine = json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, mine.encode(), 0)
        return fd

    def release(self) -> None:
        """Remove the lock file and let go of the lock; then remove the folders
        :meth:`acquire` created, if nothing was written in them. Safe to call twice."""
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                if _same_file(fd, self.path):  # not a file someone put in its place
                    self.path.unlink()
            except OSError:
                pass  # the folder went away meanwhile: nothing left to clean
            finally:
                os.close(fd)  # unlinked first: a waiting process then retries on a new file
        self._remove_created()

    def _remove_created(self) -> None:
        for folder in reversed(self._created):
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
        self._created = []

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def _make_folders(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; the ones made here, outermost first."""
    missing = []
    for path in (folder, *folder.parents):
        if path.is_dir():
            break
        missing.append(path)
    made = []
    for path in reversed(missing):
        try:
            path.mkdir()
        except FileExistsError:
            if not path.is_dir():
                raise
            continue  # another process made it meanwhile: not ours to remove
        made.append(path)
    return made


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd``."""
    try:
        there = path.stat()
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _owner(content: bytes) -> str:
    """``process PID on HOST`` from a lock file's content; what it can of a damaged one."""
    try:
        owner = json.loads(content)
        return f"process {int(owner['pid'])} on {owner['host']}"
    except (ValueError, TypeError, KeyError):
        return "another process"
