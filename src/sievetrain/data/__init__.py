"""Datasets held in memory as tensors, and loaders that yield ``(x, y, idx)`` batches."""

from sievetrain.data.datasets import (
    DATASETS,
    cache_dir,
    load_dataset,
    load_fashion_mnist,
    load_mnist1d,
)
from sievetrain.data.loader import BatchLoader, IndexedDataset, make_loader
from sievetrain.data.shakespeare import IGNORE_INDEX, VOCAB_SIZE, load_shakespeare, mask_tokens
from sievetrain.data.split import DataSplit

__all__ = [
    "DATASETS",
    "IGNORE_INDEX",
    "VOCAB_SIZE",
    "BatchLoader",
    "DataSplit",
    "IndexedDataset",
    "cache_dir",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist1d",
    "load_shakespeare",
    "make_loader",
    "mask_tokens",
]
