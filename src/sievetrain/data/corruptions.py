"""The data regimes' pure functions: noisy labels, duplicated samples, long-tailed classes.

Tensors in, tensors out; every random draw comes from the ``generator`` passed in,
in a fixed order, so a seed fixes the result. :mod:`sievetrain.data.regimes` applies
them to a dataset's training split; :mod:`sievetrain.data.off_target` holds the
fourth regime's text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = [
    "CONFUSION_PAIRS",
    "duplicate_sources",
    "long_tail_indices",
    "long_tail_sizes",
    "noisy_labels",
    "shift",
]

# Class pairs that confusion noise swaps, per dataset; every class is in exactly one.
CONFUSION_PAIRS: dict[str, tuple[tuple[int, int], ...]] = {
    # Fashion-MNIST's classes that look alike: T-shirt/top-shirt, pullover-coat,
    # sneaker-ankle boot, trouser-dress (long shapes), sandal-bag (the rest).
    "fashion-mnist": ((0, 6), (2, 4), (7, 9), (1, 3), (5, 8)),
    # MNIST-1D draws each digit from a 12-point template (mnist1d.data.get_templates),
    # then pads, shears, shifts and adds noise; it has no handwriting, so MNIST's
    # classic confusions need not hold. These are the pairing with the least total
    # squared distance between the templates (get_templates()["x"]) out of all 945
    # pairings of ten digits: 1.72, against 1.74 for the next best (1-5, 4-9).
    "mnist1d": ((0, 3), (1, 4), (2, 7), (5, 9), (6, 8)),
    # speech-kws (SPEECH_KWS_WORDS): the pairing with the least total edit distance
    # between the words' en-us phonemes (espeak-ng -q --ipa, stress marks dropped; each
    # distance over the longer word's length) out of all 654,729,075 pairings of the 20
    # words: yes-left, no-go, up-one, down-nine, right-eight, on-off, stop-two,
    # zero-three, four-five, six-seven.
    "speech-kws": (
        (0, 4),
        (1, 9),
        (2, 11),
        (3, 19),
        (5, 18),
        (6, 7),
        (8, 12),
        (10, 13),
        (14, 15),
        (16, 17),
    ),  # fmt: skip
}


# ---------------------------------------------------------------------------- label noise


def noisy_labels(
    y: torch.Tensor,
    rate: float,
    num_classes: int,
    *,
    generator: torch.Generator,
    kind: str = "symmetric",
    pairs: Sequence[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip each label independently with probability ``rate`` (P).

    The number flipped is binomial(N, P), not exactly P·N: each sample's fate is its
    own, as in the label-noise literature. A flipped label always changes.

    Args:
        y: Class labels, int64 ``(N,)`` in ``0 .. num_classes - 1``.
        rate: Flip probability P in [0, 1].
        num_classes: Number of classes C, >= 2.
        generator: Source of all randomness; on the device of ``y``.
        kind: ``"symmetric"``: a flipped label becomes one of the C - 1 other classes,
            uniformly; ``"confusion"``: it becomes its partner in ``pairs``.
        pairs: For ``"confusion"``: class pairs, every class in exactly one.

    Returns:
        ``(labels, noisy)``: int64 ``(N,)`` and bool ``(N,)``, True where flipped.

    Raises:
        ValueError: naming a rate outside [0, 1], fewer than two classes, a label out
            of range, an unknown kind, or pairs that do not pair every class once.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"invalid rate={rate!r}: must be in [0, 1]")
    if num_classes < 2:
        raise ValueError(f"invalid num_classes={num_classes!r}: noise needs at least 2")
    if len(y) and not 0 <= int(y.min()) <= int(y.max()) < num_classes:
        raise ValueError(
            f"labels must be in 0..{num_classes - 1}, got {int(y.min())}..{int(y.max())}"
        )
    if kind not in ("symmetric", "confusion"):
        raise ValueError(f"invalid kind={kind!r}: must be 'symmetric' or 'confusion'")
    if kind == "confusion" and pairs is None:
        raise ValueError("kind='confusion' needs pairs")
    noisy = torch.rand(y.shape, generator=generator, device=y.device) < rate
    if kind == "symmetric":
        # Adding 1 .. C-1 (mod C) reaches every other class with equal odds, never y itself.
        step = torch.randint(1, num_classes, y.shape, generator=generator, device=y.device)
        flipped = (y + step) % num_classes
    else:
        flipped = _partner_table(pairs, num_classes).to(y.device)[y]  # (C,) indexed by y
    return torch.where(noisy, flipped, y), noisy


def _partner_table(pairs: Sequence[tuple[int, int]], num_classes: int) -> torch.Tensor:
    """Each class's partner, int64 ``(num_classes,)``; ValueError unless every class
    ``0 .. num_classes - 1`` is in exactly one pair of two different classes."""
    partner = [-1] * num_classes
    for a, b in pairs:
        for c in (a, b):
            if not 0 <= c < num_classes:
                raise ValueError(f"pair {(a, b)}: class {c} is not in 0..{num_classes - 1}")
            if partner[c] != -1 or a == b:
                raise ValueError(f"pair {(a, b)}: class {c} has more than one partner")
        partner[a], partner[b] = b, a
    alone = [c for c, p in enumerate(partner) if p == -1]
    if alone:
        raise ValueError(f"pairs {list(pairs)} give no partner to classes {alone}")
    return torch.tensor(partner)


# ---------------------------------------------------------------------------- duplicates


def duplicate_sources(
    n: int, items: int, copies: int, *, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each of ``n`` positions takes its content from, with K items in M copies.

    K distinct originals (``items``) are drawn at random, and K·(M - 1) other
    positions are overwritten, M - 1 per original; the size stays ``n``, so the
    copies push out as many unique samples.

    Args:
        n: Number of samples N.
        items: Originals K, >= 1.
        copies: Copies M of each, original included, >= 2.
        generator: Source of the draw (one ``randperm``), on any device.

    Returns:
        ``(source, duplicate, copy)``: int64 ``(N,)``, position i takes the content
        of ``source[i]`` (itself unless overwritten); bool ``(N,)`` marking the K·M
        positions of the originals and their copies; bool ``(N,)`` marking the
        K·(M - 1) overwritten positions only.

    Raises:
        ValueError: K < 1, M < 2, or K·M > N, naming the values.
    """
    if items < 1 or copies < 2:
        raise ValueError(f"need items K >= 1 and copies M >= 2, got K={items}, M={copies}")
    if items * copies > n:
        raise ValueError(f"K·M = {items}·{copies} = {items * copies} is more than n = {n}")
    order = torch.randperm(n, generator=generator, device=generator.device)
    originals, overwritten = order[:items], order[items : items * copies]  # (K,), (K·(M-1),)
    source = torch.arange(n, device=generator.device)
    # Row k of the (K, M - 1) view holds original k's copies.
    source[overwritten.view(items, copies - 1)] = originals[:, None]
    duplicate = torch.zeros(n, dtype=torch.bool, device=generator.device)
    duplicate[order[: items * copies]] = True
    copy = torch.zeros_like(duplicate)
    copy[overwritten] = True
    return source, duplicate, copy


def shift(x: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Roll each sample by its own integer offsets along its trailing dims.

    Circular, like ``torch.roll``: ``out[n, ..., i] = x[n, ..., (i - offset) % L]``, so
    nothing is padded or lost. ``offsets`` has one column per rolled dim, the last
    ``D`` dims of ``x``: images ``(N, 1, H, W)`` take ``(N, 2)`` (rows, columns);
    signals ``(N, 1, L)`` and token sequences ``(N, T)`` take ``(N, 1)``.
    """
    n, dims = offsets.shape
    if n != len(x) or not 0 < dims < x.dim():
        raise ValueError(f"offsets {tuple(offsets.shape)} do not fit samples {tuple(x.shape)}")
    offsets = offsets.to(x.device)
    for k in range(dims):
        dim = x.dim() - dims + k
        length = x.shape[dim]
        index = (torch.arange(length, device=x.device) - offsets[:, k, None]) % length  # (N, L)
        view = [n] + [1] * (x.dim() - 1)
        view[dim] = length
        x = x.gather(dim, index.view(view).expand_as(x))
    return x


# ---------------------------------------------------------------------------- long tail


def long_tail_sizes(largest: int, ratio: float, num_classes: int) -> list[int]:
    """Class sizes falling geometrically from ``largest`` (class 0) to
    ``largest / ratio`` (the last class): class c keeps
    ``max(1, floor(largest * ratio ** (-c / (C - 1))))`` samples.

    Written as a division, ``largest / ratio ** (c / (C - 1))``, so the last class
    is exactly ``floor(largest / ratio)`` (``6000 * 3 ** -1`` rounds to 1999.99...).
    """
    if not ratio >= 1:
        raise ValueError(f"invalid ratio={ratio!r}: must be >= 1")
    if num_classes == 1:
        return [max(1, largest)]
    return [
        max(1, math.floor(largest / ratio ** (c / (num_classes - 1)))) for c in range(num_classes)
    ]


def long_tail_indices(
    y: torch.Tensor, ratio: float, num_classes: int, *, generator: torch.Generator
) -> torch.Tensor:
    """Indices of a long-tailed subset of labels ``y`` ``(N,)``, sorted, int64.

    Class sizes are :func:`long_tail_sizes` with ``largest`` the smallest class's
    count, so every class can supply its size; each class keeps a random subset
    (one ``randperm`` per class, in label order, from ``generator`` on ``y``'s device).

    Raises:
        ValueError: ratio < 1, or a class with no samples.
    """
    counts = torch.bincount(y, minlength=num_classes).tolist()
    if len(counts) > num_classes or min(counts) == 0:
        raise ValueError(f"every class 0..{num_classes - 1} needs samples; counts: {counts}")
    sizes = long_tail_sizes(min(counts), ratio, num_classes)
    kept = []
    for c, size in enumerate(sizes):
        members = (y == c).nonzero().squeeze(1)  # (count_c,)
        pick = torch.randperm(len(members), generator=generator, device=y.device)[:size]
        kept.append(members[pick])
    return torch.cat(kept).sort().values
