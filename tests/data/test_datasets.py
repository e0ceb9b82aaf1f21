"""Datasets: MNIST-1D generation and caching, Fashion-MNIST from each of its sources,
and the one-line errors that bad arguments and damaged files give."""

from __future__ import annotations

import functools
import gzip
import http.server
import os
import random
import shutil
import socket
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import torch

from sievetrain.data import (
    DATASETS,
    DataSplit,
    cache_dir,
    load_dataset,
    load_fashion_mnist,
    load_mnist1d,
)
from sievetrain.data import fashion_mnist as fashion_mnist_module
from sievetrain.data import mnist1d as mnist1d_module
from sievetrain.options import ArgumentError

REPO = Path(__file__).parents[2]
# The shared guard (tests/conftest.py): skips a test when Fashion-MNIST is not on disk.
needs_fashion_mnist = pytest.mark.usefixtures("fashion_mnist_dir")
FILES = [f"{stem}.gz" for stem in fashion_mnist_module.FASHION_MNIST_FILES]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private, empty cache folder."""
    path = tmp_path / "cache"
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(path))
    return path


def _tensors(split: DataSplit) -> list[torch.Tensor]:
    return [*split.train.tensors, *split.test.tensors]


def _assert_same(a: DataSplit, b: DataSplit) -> None:
    for ta, tb in zip(_tensors(a), _tensors(b), strict=True):
        assert torch.equal(ta, tb)


# ---------------------------------------------------------------------------- MNIST-1D


def test_mnist1d_shapes_dtypes_and_sizes(cache):
    # 203 + 101 is not a multiple of 10: generation rounds up, then trims.
    split = load_mnist1d(203, 101)
    x, y = split.train.tensors
    x_test, y_test = split.test.tensors
    assert (split.name, split.num_classes, split.input_shape) == ("mnist1d", 10, (1, 40))
    assert x.shape == (203, 1, 40) and x_test.shape == (101, 1, 40)
    assert x.dtype == x_test.dtype == torch.float32
    assert y.shape == (203,) and y_test.shape == (101,)
    assert y.dtype == y_test.dtype == torch.int64
    assert set(y.tolist()) == set(range(10))


def test_mnist1d_is_deterministic_and_seeded(tmp_path, monkeypatch):
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(tmp_path / "a"))
    first = load_mnist1d(100, 50)
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(tmp_path / "b"))
    _assert_same(first, load_mnist1d(100, 50))
    other_seed = load_mnist1d(100, 50, seed=7)
    assert not torch.equal(first.train.tensors[0], other_seed.train.tensors[0])


def test_mnist1d_reuses_the_cache_and_regenerates_a_corrupt_one(cache, monkeypatch):
    first = load_mnist1d(100, 50)
    (path,) = (cache / "mnist1d").glob("*.pt")
    import mnist1d.data

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    with monkeypatch.context() as patch:
        patch.setattr(mnist1d.data, "make_dataset", fail)
        _assert_same(first, load_mnist1d(100, 50))
    path.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="regenerating"):
        _assert_same(first, load_mnist1d(100, 50))


def test_mnist1d_leaves_global_rngs_untouched(cache):
    # The legacy global numpy RNG is exactly what must stay untouched here.
    random.seed(123)
    np.random.seed(123)  # noqa: NPY002
    states = random.getstate(), np.random.get_state(), torch.random.get_rng_state()  # noqa: NPY002
    load_mnist1d(30, 20)  # empty cache: really generates
    assert random.getstate() == states[0]
    after = np.random.get_state()  # noqa: NPY002
    assert after[0] == states[1][0] and np.array_equal(after[1], states[1][1])
    assert after[2:] == states[1][2:]
    assert torch.equal(torch.random.get_rng_state(), states[2])


@pytest.mark.parametrize("sizes", [(0, 10), (10, 0), (-5, 10)])
def test_mnist1d_rejects_bad_sizes(cache, sizes):
    bad = sizes[0] if sizes[0] <= 0 else sizes[1]
    with pytest.raises(ValueError, match=str(bad)):
        load_mnist1d(*sizes)


def test_load_dataset_by_name(cache):
    assert DATASETS == ("mnist1d", "fashion-mnist", "shakespeare", "speech-kws")
    split = load_dataset("mnist1d", train_size=40, test_size=20)
    assert (len(split.train), len(split.test)) == (40, 20)
    with pytest.raises(ValueError, match="'cifar'.*mnist1d, fashion-mnist"):
        load_dataset("cifar")


def test_cache_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SIEVETRAIN_CACHE_DIR", str(tmp_path))
    assert cache_dir() == tmp_path
    monkeypatch.delenv("SIEVETRAIN_CACHE_DIR")
    assert "sievetrain" in str(cache_dir())


# ---------------------------------------------------------------------------- Fashion-MNIST


@needs_fashion_mnist
def test_fashion_mnist_from_the_debian_folder(cache):
    split = load_dataset("fashion-mnist")
    x, y = split.train.tensors
    x_test, y_test = split.test.tensors
    assert (split.name, split.num_classes, split.input_shape) == ("fashion-mnist", 10, (1, 28, 28))
    assert x.shape == (60000, 1, 28, 28) and x_test.shape == (10000, 1, 28, 28)
    assert x.dtype == torch.float32 and y.dtype == y_test.dtype == torch.int64
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01  # normalised
    assert torch.bincount(y).tolist() == [6000] * 10
    assert y_test[:5].tolist() == [9, 2, 1, 1, 6]  # the published test order
    assert not cache.exists()  # nothing downloaded


@needs_fashion_mnist
def test_fashion_mnist_sizes_take_the_first_samples(cache):
    full = load_fashion_mnist(train_size=1000, test_size=300)
    small = load_fashion_mnist(train_size=100, test_size=30)
    assert (len(small.train), len(small.test)) == (100, 30)
    assert torch.equal(small.train.tensors[0], full.train.tensors[0][:100])
    assert torch.equal(small.test.tensors[1], full.test.tensors[1][:30])
    with pytest.raises(ValueError, match="0"):
        load_fashion_mnist(train_size=0)
    with pytest.raises(ValueError, match="60001"):
        load_fashion_mnist(train_size=60001)


def test_fashion_mnist_from_a_data_dir_with_plain_and_gzip_files(
    tmp_path, cache, fashion_mnist_dir
):
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in FILES:
        if name.startswith("train"):  # uncompressed
            with gzip.open(fashion_mnist_dir / name) as src:
                (folder / name.removesuffix(".gz")).write_bytes(src.read())
        else:
            shutil.copy(fashion_mnist_dir / name, folder / name)
    got = load_dataset("fashion-mnist", data_dir=folder, train_size=500, test_size=200)
    _assert_same(got, load_fashion_mnist(train_size=500, test_size=200))


def test_fashion_mnist_data_dir_must_hold_the_files(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match="nowhere"):
        load_fashion_mnist(missing)
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / FILES[0]).write_bytes(b"")
    with pytest.raises(ValueError, match="partial"):
        load_fashion_mnist(partial)


def _serve(folder):
    """Start an HTTP server for ``folder`` on an ephemeral port; returns (server, url)."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    handler = functools.partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/"


@pytest.fixture
def no_local_copies(tmp_path, monkeypatch, cache):
    """No Debian folder; an empty cache. Returns the cache's Fashion-MNIST folder."""
    monkeypatch.setattr(fashion_mnist_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.delenv("SIEVETRAIN_FASHION_MNIST_URL", raising=False)
    return cache / "fashion-mnist"


@pytest.fixture
def mirror(tmp_path, fashion_mnist_dir):
    """A folder holding a copy of the four gzip files, served over HTTP."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in FILES:
        shutil.copy(fashion_mnist_dir / name, folder / name)
    server, url = _serve(folder)
    yield folder, url
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


def test_fashion_mnist_download_verifies_and_caches(
    no_local_copies, mirror, monkeypatch, fashion_mnist_dir
):
    _, url = mirror
    monkeypatch.setenv("SIEVETRAIN_FASHION_MNIST_URL", url)  # base_url defaults to it
    got = load_fashion_mnist(train_size=300, test_size=100)
    assert sorted(p.name for p in no_local_copies.iterdir()) == sorted(FILES)
    _assert_same(got, load_fashion_mnist(fashion_mnist_dir, train_size=300, test_size=100))
    # Later loads read the cache: the mirror is no longer needed.
    monkeypatch.setattr(fashion_mnist_module, "DEBIAN_FASHION_MNIST_DIR", no_local_copies / "none")
    again = load_fashion_mnist(train_size=300, test_size=100, base_url=_closed_port_url())
    _assert_same(got, again)


def test_fashion_mnist_download_rejects_a_corrupted_file(no_local_copies, mirror):
    folder, url = mirror
    bad = folder / "train-labels-idx1-ubyte.gz"
    data = bytearray(bad.read_bytes())
    data[-1] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 mismatch.*train-labels"):
        load_fashion_mnist(base_url=url)
    assert not (no_local_copies / bad.name).exists()


def test_fashion_mnist_error_lists_three_ways_to_get_the_data(no_local_copies):
    for kwargs in ({"base_url": _closed_port_url()}, {"download": False}):
        with pytest.raises(ValueError) as info:
            load_fashion_mnist(**kwargs)
        message = str(info.value)
        assert "dataset-fashion-mnist" in message
        assert "data_dir=" in message  # the CLI spells it --data-dir (tests/test_cli.py)
        assert "SIEVETRAIN_FASHION_MNIST_URL" in message


# ---------------------------------------------------------------------------- the shared guard

# Every test that reads Fashion-MNIST, by node id; each must skip when the data is absent.
FASHION_MNIST_TESTS = [
    "tests/sampling/test_gradmatch.py::"
    "test_weighted_selection_matches_the_full_gradient_better_than_random_batches",
    "tests/train/test_trainer.py::test_learns_fashion_mnist_subset",
    "tests/data/test_datasets.py::test_fashion_mnist_from_the_debian_folder",
    "tests/data/test_datasets.py::test_fashion_mnist_sizes_take_the_first_samples",
    "tests/data/test_datasets.py::test_fashion_mnist_from_a_data_dir_with_plain_and_gzip_files",
    "tests/data/test_datasets.py::test_fashion_mnist_download_verifies_and_caches",
    "tests/data/test_datasets.py::test_fashion_mnist_download_rejects_a_corrupted_file",
]
# A pytest plugin for the run below: no Debian folder, and any download fails at once.
HIDE_FASHION_MNIST = """
import pathlib
from sievetrain.data import fashion_mnist

def pytest_configure(config):
    fashion_mnist.DEBIAN_FASHION_MNIST_DIR = pathlib.Path({debian!r})

    def no_download(base_url, folder):
        raise OSError("downloads are off in this test")

    fashion_mnist._download_fashion_mnist = no_download
"""


def test_fashion_mnist_tests_skip_when_the_data_is_absent(tmp_path):
    (tmp_path / "hide_fashion_mnist.py").write_text(
        HIDE_FASHION_MNIST.format(debian=str(tmp_path / "no-debian"))
    )
    report = tmp_path / "report.xml"
    env = {
        **os.environ,
        "PYTHONPATH": str(tmp_path),
        "SIEVETRAIN_CACHE_DIR": str(tmp_path / "empty-cache"),
    }
    command = [sys.executable, "-m", "pytest", "-p", "hide_fashion_mnist", "-p", "no:cacheprovider"]
    done = subprocess.run(
        [*command, "-q", f"--junitxml={report}", *FASHION_MNIST_TESTS],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    outcomes = {
        case.get("name"): [child.tag for child in case]
        for case in ET.parse(report).iter("testcase")
    }
    assert len(outcomes) == len(FASHION_MNIST_TESTS), done.stdout
    assert all(tags == ["skipped"] for tags in outcomes.values()), (outcomes, done.stdout)


# ---------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize("name", ["mnist1d", "shakespeare", "speech-kws"])
def test_data_dir_is_refused_by_datasets_that_read_no_files(name):
    with pytest.raises(ArgumentError, match=f"data_dir '/nonexistent'.*{name} reads no files"):
        load_dataset(name, data_dir="/nonexistent")


def test_mnist1d_refuses_a_size_above_its_bound_before_generating(cache, monkeypatch):
    import mnist1d.data

    def fail(*args, **kwargs):
        raise AssertionError("generation started")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    bound = mnist1d_module.MNIST1D_MAX_SAMPLES
    with pytest.raises(ValueError, match=f"100001000.*{bound}.*hours.*GB") as info:
        load_dataset("mnist1d", train_size=100_000_000)
    assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match=str(bound + 1)):
        load_mnist1d(bound, 1)


@pytest.mark.parametrize("name", DATASETS)
@pytest.mark.parametrize("size", [True, 1.5, 100.0, "100"])
def test_sizes_must_be_ints(cache, name, size):
    for label in ("train_size", "test_size"):
        with pytest.raises(ValueError, match=f"{label}.*{size!r}"):
            load_dataset(name, **{label: size})


def test_fashion_mnist_size_above_the_file_names_the_file(idx_folder):
    with pytest.raises(ValueError, match="test_size=11.*10 items.*t10k-images"):
        load_fashion_mnist(idx_folder, test_size=11)


# ---------------------------------------------------------------------------- damaged files


def _idx_bytes(array: np.ndarray) -> bytes:
    """An unsigned-byte IDX file holding ``array``: magic, big-endian dims, data."""
    header = bytes([0, 0, 8, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    return header + array.astype(np.uint8).tobytes()


def _write_gz(path: Path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data, mtime=0))


@pytest.fixture
def idx_folder(tmp_path):
    """Four small valid gzip IDX files: 20 train and 10 test samples."""
    folder = tmp_path / "idx"
    folder.mkdir()
    pixels = np.random.default_rng(0).integers(0, 256, (20, 28, 28))
    for split, n in (("train", 20), ("t10k", 10)):
        _write_gz(folder / f"{split}-images-idx3-ubyte.gz", _idx_bytes(pixels[:n]))
        _write_gz(folder / f"{split}-labels-idx1-ubyte.gz", _idx_bytes(np.arange(n) % 10))
    return folder


def test_small_idx_files_load(idx_folder):
    split = load_dataset("fashion-mnist", data_dir=idx_folder)
    assert (len(split.train), len(split.test), split.input_shape) == (20, 10, (1, 28, 28))
    assert split.train.tensors[1].tolist() == [i % 10 for i in range(20)]


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


def _break_deflate(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[10] = 0xFF  # the first deflate block header: block type 3 is invalid
    path.write_bytes(bytes(data))


def _flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # caught by the deflate decoder or the CRC
    path.write_bytes(bytes(data))


def _rewrite(array: np.ndarray, *, extra: bytes = b"", header: bytes | None = None):
    def damage(path: Path) -> None:
        data = _idx_bytes(array)
        if header is not None:
            data = header + data[len(header) :]
        _write_gz(path, data + extra)

    return damage


LABELS, IMAGES = "train-labels-idx1-ubyte.gz", "train-images-idx3-ubyte.gz"
TRAIN_LABELS = np.arange(20) % 10
TRAIN_IMAGES = np.zeros((20, 28, 28))


@pytest.mark.parametrize(
    ("name", "damage", "match"),
    [
        (IMAGES, _truncate, "not an intact gzip file.*end-of-stream"),
        (LABELS, _break_deflate, "not an intact gzip file.*invalid block type"),
        (IMAGES, _flip_a_byte, "not an intact gzip file"),
        (LABELS, lambda p: p.write_bytes(b"plain text"), "not an intact gzip file.*Not a gzip"),
        (LABELS, _rewrite(TRAIN_LABELS[:19]), "holds 20 images but.*labels.* holds 19"),
        (LABELS, _rewrite(np.where(TRAIN_LABELS == 7, 10, TRAIN_LABELS)), "label 10 .*0..9"),
        (IMAGES, _rewrite(np.zeros((20, 28, 27))), "20x28x27 array, expected Nx28x28"),
        (IMAGES, _rewrite(np.zeros((20, 784))), "20x784 array, expected Nx28x28"),
        (LABELS, _rewrite(TRAIN_LABELS[:, None]), "20x1 array, expected N"),
        (IMAGES, _rewrite(np.zeros((0, 28, 28))), "holds no items"),
        (LABELS, _rewrite(TRAIN_LABELS, extra=b"\0"), "longer than its header"),
        (LABELS, _rewrite(TRAIN_LABELS, header=b"\0\0\x0d\1"), "not an unsigned-byte IDX"),
        (IMAGES, _rewrite(TRAIN_IMAGES, header=b"\0\0\x08\3\0\0\0\x15"), "truncated"),
        # A header announcing 4e9 images must not allocate 3 TB before finding out.
        (IMAGES, _rewrite(TRAIN_IMAGES, header=b"\0\0\x08\3\xff\xff\xff\xff"), "truncated"),
    ],
)
def test_damaged_fashion_mnist_files_give_one_line_naming_the_file(idx_folder, name, damage, match):
    damage(idx_folder / name)
    with pytest.raises(ValueError, match=match) as info:
        load_fashion_mnist(idx_folder)
    message = str(info.value)
    assert name in message and "\n" not in message


def test_damaged_plain_idx_files_are_caught_too(idx_folder):
    labels = idx_folder / LABELS
    plain = labels.with_suffix("")
    labels.unlink()
    plain.write_bytes(_idx_bytes(TRAIN_LABELS)[:-1])
    with pytest.raises(ValueError, match=f"{plain.name}.*truncated"):
        load_fashion_mnist(idx_folder)
    plain.write_bytes(_idx_bytes(TRAIN_LABELS) + b"\0")
    with pytest.raises(ValueError, match=f"{plain.name}.*longer than its header"):
        load_fashion_mnist(idx_folder)


def test_a_subset_of_damaged_files_is_still_checked(idx_folder):
    """Counts and labels are checked even when only the first samples are kept."""
    _rewrite(TRAIN_LABELS[:19])(idx_folder / LABELS)
    with pytest.raises(ValueError, match="holds 20 images but.* holds 19"):
        load_fashion_mnist(idx_folder, train_size=5)


# ---------------------------------------------------------------------------- the MNIST-1D cache


def _foreign_torch_file(path: Path) -> None:
    torch.save({"x": torch.zeros(3)}, path)


def _labels_out_of_range(path: Path) -> None:
    tensors = torch.load(path, weights_only=True)
    tensors["y"] = tensors["y"] + 10
    torch.save(tensors, path)


def _wrong_dtype(path: Path) -> None:
    tensors = torch.load(path, weights_only=True)
    tensors["x"] = tensors["x"].double()
    torch.save(tensors, path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(b"not a torch file"), "cannot be loaded"),
        (_truncate, "cannot be loaded"),
        (_foreign_torch_file, "x_test"),
        (lambda p: torch.save([1, 2, 3], p), "list"),
        (_labels_out_of_range, "0..9"),
        (_wrong_dtype, "float32"),
    ],
)
def test_a_damaged_mnist1d_cache_warns_and_is_regenerated(cache, monkeypatch, damage, reason):
    first = load_mnist1d(100, 50)
    (path,) = (cache / "mnist1d").glob("*.pt")
    damage(path)
    with pytest.warns(UserWarning, match=f"regenerating.*{path.name}.*{reason}"):
        _assert_same(first, load_mnist1d(100, 50))
    import mnist1d.data

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although cached")

    monkeypatch.setattr(mnist1d.data, "make_dataset", fail)
    _assert_same(first, load_mnist1d(100, 50))  # rewritten over the damaged file
