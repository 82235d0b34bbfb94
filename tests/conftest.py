"""Shared fixtures: the real text in ../shared/data (skipped with a reason where it is absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder ../shared/data; tests that need real text skip where a fresh clone lacks it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is absent (real-text fixtures live beside the repo, see README)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_file():
    """``shared_file("corpus.en")``: one file of ../shared/data, or a skip naming it."""

    def get(name: str) -> Path:
        path = SHARED_DATA / name
        if not path.is_file():
            pytest.skip(f"{path} is absent (real-text fixtures live beside the repo, see README)")
        return path

    return get


@pytest.fixture
def seeded_single_thread():
    """Seed torch and run on one intra-op thread (restored afterwards).

    Unit-test tensors are tiny: a second thread brings nothing, and on a loaded machine intra-op threads
    waiting for each other can make a step 30x slower.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)
