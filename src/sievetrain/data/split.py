"""A dataset's train and test parts: what every loader returns."""

from __future__ import annotations

from dataclasses import dataclass

from torch.utils.data import TensorDataset

__all__ = ["DataSplit"]


@dataclass(frozen=True)
class DataSplit:
    """A dataset's train and test parts, held in memory.

    Attributes:
        name: Dataset name, one of :data:`DATASETS`.
        train: ``TensorDataset(x, y)``: ``x`` float32 ``(N, *input_shape)``, ``y`` int64 ``(N,)``;
            for a token dataset (``"shakespeare"``), ``x`` is int64 token ids ``(N, T)`` and
            ``y`` int64 ``(N, T)`` token targets, ``IGNORE_INDEX`` (-100) where there is no
            target (positions not masked).
        test: Same layout as ``train``.
        num_classes: Number of classes; labels are ``0 .. num_classes - 1``. For a token
            dataset, the vocabulary size.
        input_shape: Shape of one sample: ``(1, 40)``, ``(1, 28, 28)`` or ``(T,)`` tokens.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
