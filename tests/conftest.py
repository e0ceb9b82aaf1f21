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
