"""A dataset's train and test parts: what every loader returns."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

__all__ = ["DataSplit", "cached_split_problem"]


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
        input_shape: Shape of one sample: ``(1, 40)``, ``(1, 28, 28)``, ``(T,)`` tokens, or
            ``(40, 101)`` log-mel bands by frames (``"speech-kws"``).
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


def cached_split_problem(
    content: object,
    train_size: int,
    test_size: int,
    sample_shape: tuple[int, ...],
    other_keys: tuple[str, ...] = (),
) -> str | None:
    """What makes ``content`` differ from a generated dataset's cache, or ``None``: a dict
    of float32 samples ``x`` and ``x_test`` of ``sample_shape``, int64 labels ``y`` and
    ``y_test``, of the two sizes, and ``other_keys``."""
    expected = {  # key -> (dtype, shape)
        "x": (torch.float32, (train_size, *sample_shape)),
        "y": (torch.int64, (train_size,)),
        "x_test": (torch.float32, (test_size, *sample_shape)),
        "y_test": (torch.int64, (test_size,)),
    }
    keys = {*expected, *other_keys}
    if not isinstance(content, dict) or set(content) != keys:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        return f"holds {found}, not a dict of {sorted(keys)}"
    for key, (dtype, shape) in expected.items():
        t = content[key]
        if not isinstance(t, torch.Tensor) or t.dtype != dtype or tuple(t.shape) != shape:
            return f"{key} is not a {dtype} tensor of shape {shape}"
    return None
