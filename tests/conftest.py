import os

import pytest
from hypothesis import settings

# CI sets HYPOTHESIS_PROFILE=ci: derandomized, so a CI run is reproducible.
settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True)
settings.register_profile("dev", deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory):
    """Generated datasets go to a cache private to the test session."""
    path = tmp_path_factory.mktemp("cache")
    old = os.environ.get("SIEVETRAIN_CACHE_DIR")
    os.environ["SIEVETRAIN_CACHE_DIR"] = str(path)
    yield path
    if old is None:
        os.environ.pop("SIEVETRAIN_CACHE_DIR", None)
    else:
        os.environ["SIEVETRAIN_CACHE_DIR"] = old


@pytest.fixture(scope="session")
def mnist1d(_private_cache):
    from sievetrain.data import load_dataset

    return load_dataset("mnist1d", train_size=2000, test_size=500)


@pytest.fixture(scope="session")
def fashion_mnist_dir(_private_cache):
    """The folder Fashion-MNIST loads from without a download; skips the test when there is none.

    The one guard for every test that reads Fashion-MNIST. It asks the loader's own
    search (the Debian folder, then the session's cache) with downloads off, so a
    test that is not skipped finds the files exactly where ``load_dataset`` will.
    """
    from sievetrain.data import fashion_mnist

    try:
        return fashion_mnist._find_fashion_mnist(None, None, download=False)
    except ValueError:
        pytest.skip(
            f"Fashion-MNIST not found locally: install the Debian package "
            f"dataset-fashion-mnist ({fashion_mnist.DEBIAN_FASHION_MNIST_DIR})"
        )


@pytest.fixture
def one_thread():
    """One torch thread: tiny models gain nothing from a second one, and on a busy
    machine the thread pool's barriers make them many times slower (13x measured)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def ranks():
    """``run_ranks(fn, *args, world=2)``: ``fn(rank, world, *args)`` on gloo ranks."""
    from ranks import run_ranks  # tests/ is on sys.path: this conftest's folder

    return run_ranks
