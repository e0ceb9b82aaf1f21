"""A dataset's train and test parts: what every loader returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor
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
        flags: What each training sample is, for the selection audit: name -> bool
            ``(N,)`` (``noisy``, ``duplicate``, ``off_target``), set by the data regimes
            (:mod:`sievetrain.data.regimes`); empty for clean data.
        regimes: The regimes applied to the training split and their options, as plain
            JSON (recorded in ``bench.json`` and the run keys); empty for clean data.
    """

    name: str
    train: TensorDataset
    test: TensorDataset
    num_classes: int
    input_shape: tuple[int, ...]
    flags: Mapping[str, Tensor] = field(default_factory=dict)
    regimes: Mapping[str, Any] = field(default_factory=dict)
