"""Fashion-MNIST, from its four published IDX files, as an in-memory ``TensorDataset`` of
``(x float32, y int64)``, read by an index gather (:mod:`sievetrain.data.loader`) rather
than a per-sample collate.

Everything the loader reads is checked before training starts: a bad argument or a
damaged file is a one-line ``ValueError`` naming the value or the file.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pathlib
import urllib.request
import zlib
from typing import IO

import numpy as np
import torch
from torch.utils.data import TensorDataset

from sievetrain.data.split import DataSplit
from sievetrain.files import atomic_write_bytes, cache_dir
from sievetrain.options import ArgumentError, as_int

__all__ = [
    "DEBIAN_FASHION_MNIST_DIR",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_IMAGE_SHAPE",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FASHION_MNIST_URL",
    "load_fashion_mnist",
]

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
FASHION_MNIST_IMAGE_SHAPE, FASHION_MNIST_CLASSES = (28, 28), 10
_DOWNLOAD_TIMEOUT_S = 30.0
_READ_CHUNK = 1 << 24  # bytes; IDX data is read in chunks, so a bad header cannot allocate


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
        ValueError: A size is not an int > 0 or is more than a file holds;
            ``data_dir`` lacks the files; a file is damaged (not gzip, truncated,
            a bad header, images not 28x28, image and label counts that differ,
            labels outside 0..9: the message names the file); a download fails
            its checksum; or no source works (the message lists the ways to get
            the data).
    """
    if train_size is not None:
        train_size = as_int("train_size", train_size, 1)
    if test_size is not None:
        test_size = as_int("test_size", test_size, 1)
    folder = _find_fashion_mnist(data_dir, base_url, download)
    train = _read_fashion_mnist(folder, "train", train_size, "train_size")
    test = _read_fashion_mnist(folder, "t10k", test_size, "test_size")
    return DataSplit(
        "fashion-mnist",
        TensorDataset(*train),
        TensorDataset(*test),
        FASHION_MNIST_CLASSES,
        (1, *FASHION_MNIST_IMAGE_SHAPE),
    )


def _read_fashion_mnist(
    folder: pathlib.Path, stem: str, count: int | None, count_name: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised images ``(N, 1, 28, 28)`` and labels ``(N,)`` of one split, checked
    against each other: as many labels as images, every label in 0..9."""
    images_path = _idx_path(folder, f"{stem}-images-idx3-ubyte")
    labels_path = _idx_path(folder, f"{stem}-labels-idx1-ubyte")
    images, n_images = _read_idx(images_path, FASHION_MNIST_IMAGE_SHAPE, count, count_name)
    labels, n_labels = _read_idx(labels_path, (), count, count_name)
    if n_images != n_labels:
        raise ValueError(
            f"{str(images_path)!r} holds {n_images} images but "
            f"{str(labels_path)!r} holds {n_labels} labels"
        )
    bad = np.flatnonzero(labels >= FASHION_MNIST_CLASSES)
    if len(bad):
        raise ValueError(
            f"{str(labels_path)!r} holds label {labels[bad[0]]} at item {bad[0]}; "
            f"Fashion-MNIST labels are 0..{FASHION_MNIST_CLASSES - 1}"
        )
    x = torch.from_numpy(images).unsqueeze(1).float().div_(255)  # (N, 1, 28, 28)
    x.sub_(FASHION_MNIST_MEAN).div_(FASHION_MNIST_STD)
    return x, torch.from_numpy(labels.astype(np.int64))


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


def _read_idx(
    path: pathlib.Path, item_shape: tuple[int, ...], count: int | None, count_name: str
) -> tuple[np.ndarray, int]:
    """The first ``count`` items (all if ``None``) of an IDX file of unsigned bytes, and
    how many items the file holds.

    IDX layout: 2 zero bytes, type code 0x08 (ubyte), number of dimensions, then
    one big-endian uint32 per dimension, then the data in C order.

    Raises:
        ValueError: naming ``path``: a ``.gz`` that is not gzip or is damaged, a
            header that is not ubyte IDX, items not of ``item_shape``, no items,
            fewer than ``count`` items, or data shorter (or, when every item is
            read, longer) than the header says.
    """
    gz = path.suffix == ".gz"
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            shape = _read_idx_header(f, path, item_shape)
            if count is not None and count > shape[0]:
                raise ValueError(
                    f"{count_name}={count} is more than the {shape[0]} items in {str(path)!r}"
                )
            n = shape[0] if count is None else count
            size = n * int(np.prod(item_shape, dtype=np.int64))
            # bytearray: writable, so torch.from_numpy does not warn. Read in chunks:
            # memory grows with the data, not with what the header claims.
            data = bytearray()
            while size > 0 and (chunk := f.read(min(size, _READ_CHUNK))):
                data += chunk
                size -= len(chunk)
            longer = count is None and f.read(1)  # the last read also checks gzip's CRC
    except (OSError, EOFError, zlib.error) as error:  # BadGzipFile is an OSError
        what = "is not an intact gzip file" if gz else "cannot be read"
        raise ValueError(f"{str(path)!r} {what}: {error}") from None
    if size > 0:
        raise ValueError(
            f"{str(path)!r} is truncated: {size} data bytes short of its header's {shape}"
        )
    if longer:
        raise ValueError(f"{str(path)!r} is longer than its header's {shape} says")
    return np.frombuffer(data, dtype=np.uint8).reshape((n, *item_shape)), shape[0]


def _read_idx_header(
    f: IO[bytes], path: pathlib.Path, item_shape: tuple[int, ...]
) -> tuple[int, ...]:
    """The shape in the IDX header at the start of ``f``: ``(N, *item_shape)``, N > 0."""
    header = f.read(4)
    if len(header) != 4 or header[:3] != b"\x00\x00\x08" or not 1 <= header[3] <= 3:
        raise ValueError(f"{str(path)!r} is not an unsigned-byte IDX file (header {header!r})")
    dims = f.read(4 * header[3])
    if len(dims) != 4 * header[3]:
        raise ValueError(f"{str(path)!r} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(dims, dtype=">u4"))
    if shape[1:] != item_shape:
        found, expected = ("x".join(map(str, s)) for s in (shape, ("N", *item_shape)))
        raise ValueError(f"{str(path)!r} holds a {found} array, expected {expected}")
    if shape[0] == 0:
        raise ValueError(f"{str(path)!r} holds no items")
    return shape
