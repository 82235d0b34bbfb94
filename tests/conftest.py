"""Shared fixtures: the real texts in tests/fixtures/ (committed, so a fresh clone runs every test)."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    """The folder tests/fixtures/ (see its README.md for the source and licence of each file)."""
    return FIXTURES


@pytest.fixture(scope="session")
def fixture_file():
    """``fixture_file("corpus.en")``: one file of tests/fixtures/; a missing one is an error, never a skip."""

    def get(name: str) -> Path:
        path = FIXTURES / name
        assert path.is_file(), f"{path} is missing: tests/fixtures/ is part of the repository"
        return path

    return get


@pytest.fixture(scope="session")
def session_data_paths(tmp_path_factory) -> list[str]:
    """Overrides giving every training subprocess of the session one data/ and artifacts/ folder: the
    corpus, tokenizer and token arrays are built by the first run and reused (cached by their inputs)."""
    root = tmp_path_factory.getbasetemp() / "lit_llm_train_data"
    return [f"paths.data_dir={root / 'data'}", f"paths.artifacts_dir={root / 'artifacts'}"]


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
