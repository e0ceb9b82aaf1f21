"""The environment recorded next to every result."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

import torch

__all__ = ["environment"]


def environment() -> dict:
    """Versions, hardware and source revision, as plain JSON-ready values."""
    env = {
        "sievetrain": _version(),
        "git_sha": _git_sha(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
    }
    return env


def _version() -> str:
    from sievetrain import __version__

    return __version__


@functools.cache
def _git_sha() -> str | None:
    """The source revision at this process's first call: a bench calls it before its
    first run, so that edits to the tree while it runs do not relabel its records."""
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        if out.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
