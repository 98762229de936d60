"""Shared test fixtures.

The real data samples live in ``shared/data`` beside the repository (``../shared/data`` from a clone). Tests that
use them skip with the reason when the folder is absent: the kit itself never needs them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("LUNGKIT_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


def shared_sample(name: str) -> Path:
    """Path of one real-data sample folder, or skip the test saying what is missing."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"real data sample {path} not present (set LUNGKIT_SHARED_DATA to the shared/data folder)")
    return path


@pytest.fixture
def lungrads_sample() -> Path:
    return shared_sample("lungrads-sample")


@pytest.fixture
def luna16_sample() -> Path:
    return shared_sample("luna16-sample")


@pytest.fixture
def petct_sample() -> Path:
    return shared_sample("lung-pet-ct-dx-sample")


@pytest.fixture
def pyradiomics_sample() -> Path:
    return shared_sample("pyradiomics-lung")


# The notebooks' smoke runs are the longest file of the suite and must run in order in one process (they share one
# run folder). `make test` runs the suite in two processes, one file per process at a time (pytest-xdist's
# `--dist loadfile --no-loadscope-reorder`); collecting them first starts them at once, so the other process works
# through every other file meanwhile instead of leaving the notebooks for last.
LONGEST_FIRST = ("tests/test_notebooks.py",)


def pytest_collection_modifyitems(config, items):
    def runs_first(item) -> bool:
        return item.nodeid.split("::", 1)[0] in LONGEST_FIRST

    items.sort(key=lambda item: not runs_first(item))  # stable: the order inside each group is kept
