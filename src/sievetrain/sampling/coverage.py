"""Coverage of random subset sampling: how much of the data a run sees, in theory and in fact.

Soft Random Sampling: after K epochs of m draws from n samples (METHODS.md §1), the expected
fraction seen is ``1 - (1 - m/n)^K`` for the paper's scheme (m distinct samples per epoch) and
``1 - (1 - 1/n)^(m K)`` for m i.i.d. draws per epoch. The expected number of epochs until every
sample has been seen follows from inclusion–exclusion over the set of unseen samples.

RS2 (subsets without replacement across epochs, :mod:`sievetrain.sampling.rs2`) walks through
a permutation before drawing again, so its coverage is not random: exactly ``min(1, K m / n)``
after K epochs, and every sample is seen after ``ceil(n / m)`` epochs.
"""

from __future__ import annotations

import math
import numbers
from fractions import Fraction
from math import comb

import torch

__all__ = [
    "CoverageTracker",
    "expected_coverage",
    "expected_epochs_to_full_coverage",
    "rs2_coverage",
    "rs2_epochs_to_full_coverage",
]


def _check_sizes(n: int, m: int) -> None:
    for name, value in (("n", n), ("m", m)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if m > n:
        raise ValueError(f"m must be <= n={n}, got {m!r}")


def _check_epochs(epochs: int) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 0:
        raise ValueError(f"epochs must be a non-negative integer, got {epochs!r}")


def expected_coverage(n: int, m: int, epochs: int, within_epoch_replacement: bool = False) -> float:
    """Expected fraction of the ``n`` samples seen after ``epochs`` epochs of ``m`` draws.

    Paper scheme (m distinct samples per epoch, fresh each epoch): ``1 - (1 - m/n)^K``, computed
    exactly with ``Fraction``. With replacement (m i.i.d. uniform draws per epoch):
    ``1 - (1 - 1/n)^(m K)``; the exact power would have ``m K log10(n)`` digits, so it is computed
    as ``-expm1(m K log1p(-1/n))``, accurate to a few units in the last place of a float64.

    Args:
        n: Dataset size.
        m: Draws per epoch, ``1 <= m <= n``.
        epochs: K, the number of epochs (>= 0).
        within_epoch_replacement: Use the i.i.d.-draws variant.

    Returns:
        Expected coverage in [0, 1] (multiply by n for the expected number of samples).
    """
    _check_sizes(n, m)
    n, m = int(n), int(m)
    _check_epochs(epochs)
    if within_epoch_replacement and n == 1:  # log1p(-1) = -inf: the first draw sees it all
        return float(epochs > 0)
    if within_epoch_replacement:
        return -math.expm1(m * epochs * math.log1p(-1 / n))
    return float(1 - (1 - Fraction(m, n)) ** int(epochs))


def expected_epochs_to_full_coverage(
    n: int, m: int, within_epoch_replacement: bool = False
) -> Fraction:
    """Expected number of epochs until every one of ``n`` samples has been seen, exactly.

    With ``q_j`` the probability that one epoch misses a given set of ``j`` samples,
    ``P(K̄ > k) = Σ_{j>=1} (-1)^(j+1) C(n, j) q_j^k``; summing over k >= 0 gives
    ``E[K̄] = Σ_{j=1}^{n} (-1)^(j+1) C(n, j) / (1 - q_j)``. Paper scheme:
    ``q_j = C(n-j, m) / C(n, m)``, which with ``i = n - j`` is METHODS.md's
    ``Σ_{i=0}^{n-1} (-1)^(n-i+1) C(n,i) C(n,m) / (C(n,m) - C(i,m))``. With replacement:
    ``q_j = ((n - j) / n)^m``. For m = 1 both give the coupon collector's ``n H_n``.

    The alternating sum cancels catastrophically in floating point, so it is summed in exact
    rationals: the cost grows quickly with n (fine for n up to a few hundred).

    Args:
        n: Dataset size.
        m: Samples per epoch, ``1 <= m <= n``.
        within_epoch_replacement: m i.i.d. draws per epoch instead of m distinct samples.

    Returns:
        E[K̄] as an exact ``Fraction`` (``float()`` it for display).
    """
    _check_sizes(n, m)
    n, m = int(n), int(m)
    total = Fraction(0)
    for j in range(1, n + 1):
        if within_epoch_replacement:
            miss = Fraction(n - j, n) ** m  # all m draws avoid the j samples
        else:
            miss = Fraction(comb(n - j, m), comb(n, m))  # the subset avoids the j samples
        total += (-1) ** (j + 1) * comb(n, j) / (1 - miss)
    return total


def rs2_coverage(n: int, m: int, epochs: int) -> float:
    """Fraction of the ``n`` samples RS2 has seen after ``epochs`` epochs of ``m``: exactly
    ``min(1, K m / n)``, for every seed.

    RS2's first K m draws are the start of one permutation (then of the next), so the first pass
    has no repeats: nothing is random about its coverage. Soft Random Sampling's m distinct
    samples per epoch, drawn afresh every epoch, cover ``1 - (1 - m/n)^K`` in expectation
    (:func:`expected_coverage`), which is less for every K >= 2 with m < n: its later epochs
    spend draws on samples already seen.

    Args:
        n: Dataset size.
        m: Samples per epoch, ``1 <= m <= n``.
        epochs: K, the number of epochs (>= 0).

    Returns:
        Coverage in [0, 1] (multiply by n for the number of samples).
    """
    _check_sizes(n, m)
    _check_epochs(epochs)
    return float(min(Fraction(1), Fraction(int(m) * int(epochs), int(n))))


def rs2_epochs_to_full_coverage(n: int, m: int) -> int:
    """Epochs until RS2 has seen every one of ``n`` samples, ``m`` per epoch: ``ceil(n / m)``.

    Exact (not an expectation): the first pass of the stream reaches its end in that epoch.
    Compare :func:`expected_epochs_to_full_coverage` for Soft Random Sampling, which grows
    roughly like ``ln(n) / -ln(1 - m/n)`` (the coupon collector's ``n H_n`` for m = 1).

    Args:
        n: Dataset size.
        m: Samples per epoch, ``1 <= m <= n``.
    """
    _check_sizes(n, m)
    return -(-int(n) // int(m))


class CoverageTracker:
    """Counts the distinct samples a run has trained on.

    Args:
        n: Dataset size; samples are indices ``0 .. n-1``.
    """

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, numbers.Integral) or n < 1:
            raise ValueError(f"n must be a positive integer, got {n!r}")
        self._seen = torch.zeros(int(n), dtype=torch.bool)  # (n,) True once trained on

    def update(self, indices: torch.Tensor) -> None:
        """Mark ``indices`` (any shape, any device; repeats allowed) as seen."""
        indices = torch.as_tensor(indices, dtype=torch.long).flatten().cpu()
        if indices.numel() and not (0 <= indices.min() and indices.max() < self._seen.numel()):
            bad = indices[(indices < 0) | (indices >= self._seen.numel())][0].item()
            raise ValueError(f"index {bad} is out of range for n={self._seen.numel()}")
        self._seen[indices] = True

    @property
    def seen(self) -> int:
        """Number of distinct samples seen so far."""
        return int(self._seen.sum())

    @property
    def fraction(self) -> float:
        """Fraction of the data seen so far, in [0, 1]."""
        return self.seen / self._seen.numel()

    def state_dict(self) -> dict:
        """The seen-mask, a bool tensor of shape (n,)."""
        return {"seen": self._seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore the seen-mask saved by ``state_dict``."""
        seen = torch.as_tensor(state["seen"], dtype=torch.bool)
        if seen.shape != self._seen.shape:
            raise ValueError(f"seen-mask shape {tuple(seen.shape)} != ({self._seen.numel()},)")
        self._seen = seen.clone()
