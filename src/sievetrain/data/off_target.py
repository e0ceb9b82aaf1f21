"""Off-target text for the Shakespeare masked-LM task: Python source, not plays.

A data-selection method should learn to skip training rows that do not look like
the task's data. The off-target rows come from text every install already has:
the Python standard library's own top-level modules (``sysconfig``'s ``stdlib``
folder, ``*.py``, sorted by name; a file that is not valid UTF-8 is skipped), about
4.7 MB under Python 3.11, as much as the plays' training text. Code differs from
verse in what a masked character can be predicted from (indentation, identifiers,
brackets) yet uses the same character vocabulary, so the rows pass through the
same model unchanged. The text depends on the Python version, so its version,
file count, length and SHA-256 are recorded with every run that uses it.
"""

from __future__ import annotations

import functools
import hashlib
import pathlib
import platform
import re
import sysconfig
from typing import Any

import torch

from sievetrain.data.shakespeare import chunk_tokens, encode, mask_tokens
from sievetrain.rng import make_generator

__all__ = ["clean_source", "mix_off_target", "off_target_sequences"]

_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_BLANK_RUN = re.compile(r"\n{3,}")


def clean_source(text: str) -> str:
    """Light cleaning of a source file, as :func:`~sievetrain.data.shakespeare.clean_play`
    does for a play: Windows line ends and tabs (not in the vocabulary) become
    ``\\n`` and spaces, trailing spaces go, and runs of blank lines collapse to one."""
    text = text.replace("\r\n", "\n").expandtabs(8)  # Python's own tab width
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_RUN.sub("\n\n", text).strip("\n").rstrip() + "\n"


def off_target_sequences(seq_len: int) -> tuple[torch.Tensor, dict[str, Any]]:
    """The standard library's source as token sequences, and where they came from.

    Each file is cleaned (:func:`clean_source`), encoded and cut into chunks of
    ``seq_len`` on its own, its last chunk padded, as each play is.

    Returns:
        ``(tokens, source)``: int64 ``(N, seq_len)`` unmasked token ids (shared with
        a cache: do not change them in place), and ``source`` =
        ``{"text": "python-stdlib", "python": version, "files": count,
        "characters": count, "sha256": hex digest of the files' cleaned text, joined}``.
    """
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len <= 0:
        raise ValueError(f"invalid seq_len={seq_len!r}: must be a positive integer")
    tokens, source = _sequences(seq_len)
    return tokens, dict(source)


@functools.lru_cache(maxsize=2)
def _sequences(seq_len: int) -> tuple[torch.Tensor, dict[str, Any]]:
    texts = _texts()
    tokens = torch.cat([chunk_tokens(encode(text), seq_len) for text in texts])
    joined = "".join(texts)
    source = {
        "text": "python-stdlib",
        "python": platform.python_version(),
        "files": len(texts),
        "characters": len(joined),
        "sha256": hashlib.sha256(joined.encode("utf-8")).hexdigest(),
    }
    return tokens, source


def _texts() -> list[str]:
    """The cleaned text of each top-level stdlib module, sorted by file name."""
    folder = pathlib.Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for path in sorted(folder.glob("*.py"), key=lambda p: p.name):
        try:
            texts.append(clean_source(path.read_text(encoding="utf-8")))
        except (UnicodeDecodeError, OSError):  # not text we can read: not part of the set
            continue
    if not texts:
        raise ValueError(f"no readable Python source (*.py) under {str(folder)!r}")
    return texts


def mix_off_target(
    inputs: torch.Tensor,
    targets: torch.Tensor,
    fraction: float,
    *,
    seq_len: int,
    generator: torch.Generator,
    seed: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace ``round(F·N)`` random training rows with masked off-target sequences.

    The rows (one ``randperm`` of N) and the sequences put there (one ``randperm``
    of the off-target chunks, so none is used twice) come from ``generator``; the
    sequences are then masked with :func:`~sievetrain.data.shakespeare.mask_tokens`
    (p = 0.15, generator ``make_generator(seed, "off-target-mask")``), the masking
    the Shakespeare rows had, so only their text tells them apart.

    Args:
        inputs: Masked token ids, int64 ``(N, seq_len)``.
        targets: Token targets, int64 ``(N, seq_len)``.
        fraction: F in [0, 1].
        seq_len: Characters per sequence; must be the width of ``inputs``.
        generator: Chooses rows and sequences; on the device of ``inputs``.
        seed: Seeds the off-target rows' masks.

    Returns:
        ``(inputs, targets, off_target)``: new tensors like the inputs, and bool
        ``(N,)``, True at the replaced rows.

    Raises:
        ValueError: F outside [0, 1], a width other than ``seq_len``, or more rows
            asked for than there are off-target sequences.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"invalid fraction={fraction!r}: must be in [0, 1]")
    if inputs.dim() != 2 or inputs.shape != targets.shape or inputs.shape[1] != seq_len:
        raise ValueError(
            f"inputs {tuple(inputs.shape)} and targets {tuple(targets.shape)} "
            f"must both be (N, seq_len={seq_len})"
        )
    n, device = len(inputs), inputs.device
    count = round(fraction * n)
    pool, _ = off_target_sequences(seq_len)  # (P, seq_len)
    if count > len(pool):
        raise ValueError(
            f"fraction={fraction!r} asks for {count} off-target rows; the Python source "
            f"makes only {len(pool)} sequences of {seq_len} characters"
        )
    rows = torch.randperm(n, generator=generator, device=device)[:count]  # (count,)
    picks = torch.randperm(len(pool), generator=generator, device=device)[:count]
    mask_generator = make_generator(seed, "off-target-mask", device=device)
    new_inputs, new_targets = mask_tokens(pool.to(device)[picks], generator=mask_generator)
    inputs, targets = inputs.clone(), targets.clone()
    inputs[rows], targets[rows] = new_inputs, new_targets
    off_target = torch.zeros(n, dtype=torch.bool, device=device)
    off_target[rows] = True
    return inputs, targets, off_target
