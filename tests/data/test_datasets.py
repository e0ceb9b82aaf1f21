"""Datasets: MNIST-1D generation and caching, Fashion-MNIST from each of its sources."""

from __future__ import annotations

import functools
import gzip
import http.server
import random
import shutil
import socket
import threading

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
from sievetrain.data import datasets as datasets_module

DEBIAN_DIR = datasets_module.DEBIAN_FASHION_MNIST_DIR
needs_debian_files = pytest.mark.skipif(
    not DEBIAN_DIR.is_dir(), reason=f"{DEBIAN_DIR} absent (Debian package dataset-fashion-mnist)"
)
FILES = [f"{stem}.gz" for stem in datasets_module.FASHION_MNIST_FILES]


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
    assert DATASETS == ("mnist1d", "fashion-mnist", "shakespeare")
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


@needs_debian_files
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


@needs_debian_files
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


@needs_debian_files
def test_fashion_mnist_from_a_data_dir_with_plain_and_gzip_files(tmp_path, cache):
    folder = tmp_path / "idx"
    folder.mkdir()
    for name in FILES:
        if name.startswith("train"):  # uncompressed
            with gzip.open(DEBIAN_DIR / name) as src:
                (folder / name.removesuffix(".gz")).write_bytes(src.read())
        else:
            shutil.copy(DEBIAN_DIR / name, folder / name)
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
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR", tmp_path / "no-debian")
    monkeypatch.delenv("SIEVETRAIN_FASHION_MNIST_URL", raising=False)
    return cache / "fashion-mnist"


@pytest.fixture
def mirror(tmp_path):
    """A folder holding a copy of the four gzip files, served over HTTP."""
    folder = tmp_path / "mirror"
    folder.mkdir()
    for name in FILES:
        shutil.copy(DEBIAN_DIR / name, folder / name)
    server, url = _serve(folder)
    yield folder, url
    server.shutdown()
    server.server_close()


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/"


@needs_debian_files
def test_fashion_mnist_download_verifies_and_caches(no_local_copies, mirror, monkeypatch):
    _, url = mirror
    monkeypatch.setenv("SIEVETRAIN_FASHION_MNIST_URL", url)  # base_url defaults to it
    got = load_fashion_mnist(train_size=300, test_size=100)
    assert sorted(p.name for p in no_local_copies.iterdir()) == sorted(FILES)
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR", DEBIAN_DIR)
    _assert_same(got, load_fashion_mnist(train_size=300, test_size=100))
    # Later loads read the cache: the mirror is no longer needed.
    monkeypatch.setattr(datasets_module, "DEBIAN_FASHION_MNIST_DIR", no_local_copies / "none")
    again = load_fashion_mnist(train_size=300, test_size=100, base_url=_closed_port_url())
    _assert_same(got, again)


@needs_debian_files
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
