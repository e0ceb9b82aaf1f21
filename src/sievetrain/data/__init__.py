"""Datasets held in memory as tensors, and loaders that yield ``(x, y, idx)`` batches."""

from sievetrain.data.datasets import (
    DATASETS,
    DataSplit,
    cache_dir,
    load_dataset,
    load_fashion_mnist,
    load_mnist1d,
)
from sievetrain.data.loader import BatchLoader, make_loader

__all__ = [
    "DATASETS",
    "BatchLoader",
    "DataSplit",
    "cache_dir",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist1d",
    "make_loader",
]
