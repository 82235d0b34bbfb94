"""get_batch and windows: shapes, shift by one, uniform coverage of start offsets, reproducibility."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lit_llm.data import get_batch
from lit_llm.data.batch import windows


def test_windows_are_consecutive_tokens_shifted_by_one():
    data = np.arange(1000, dtype=np.uint16)
    x, y = get_batch(data, batch_size=16, context_length=32, device="cpu")
    assert x.shape == y.shape == (16, 32)
    assert x.dtype == y.dtype == torch.int64 and x.device.type == "cpu"
    starts = x[:, 0]
    assert torch.equal(x, starts[:, None] + torch.arange(32))  # data[i] == i: contiguous windows
    assert torch.equal(y, x + 1)


def test_every_start_offset_is_reachable_and_none_past_the_end():
    data = np.arange(20, dtype=np.int64)  # context 4 -> starts 0..15
    rng = np.random.default_rng(0)
    seen = set()
    for _ in range(200):
        x, y = get_batch(data, batch_size=8, context_length=4, device="cpu", rng=rng)
        seen.update(x[:, 0].tolist())
        assert y.max().item() <= 19
    assert seen == set(range(16))


@pytest.mark.parametrize(
    "make_rng", [lambda: np.random.default_rng(7), lambda: torch.Generator().manual_seed(7)]
)
def test_reproducible_with_a_generator(make_rng):
    data = np.random.default_rng(0).integers(0, 50000, size=5000).astype(np.uint16)
    a = get_batch(data, 4, 16, "cpu", rng=make_rng())
    b = get_batch(data, 4, 16, "cpu", rng=make_rng())
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    np.random.seed(3)
    c = get_batch(data, 4, 16, "cpu")
    np.random.seed(3)
    assert torch.equal(c[0], get_batch(data, 4, 16, "cpu")[0])  # None: numpy's global generator


def test_reads_a_memmap(tmp_path):
    path = tmp_path / "tokens.npy"
    np.save(path, np.arange(300, dtype=np.uint16))
    data = np.load(path, mmap_mode="r")
    x, y = get_batch(data, 3, 10, torch.device("cpu"))
    assert torch.equal(y[:, :-1], x[:, 1:])


def test_bad_inputs_are_reported():
    with pytest.raises(ValueError, match="too short.*context_length \\+ 1 = 11"):
        get_batch(np.arange(10), 2, 10, "cpu")
    with pytest.raises(ValueError, match="1-D"):
        get_batch(np.zeros((4, 4), dtype=np.int64), 2, 2, "cpu")
    with pytest.raises(ValueError, match="integer token ids"):
        get_batch(np.zeros(100, dtype=np.float32), 2, 2, "cpu")


def test_windows_cuts_the_same_windows_from_a_memmap(tmp_path):
    # The one window function behind get_batch, the data module and evaluate: slices at the starts.
    tokens = np.random.default_rng(0).integers(0, 50_000, size=10_000).astype(np.uint16)
    np.save(tmp_path / "t.npy", tokens)
    mapped = np.load(tmp_path / "t.npy", mmap_mode="r")
    starts = np.array([0, 17, 9_000, 10_000 - 33])
    x, y = windows(mapped, starts, 32)
    expected = torch.from_numpy(np.stack([tokens[s : s + 33] for s in starts]).astype(np.int64))
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (4, 32)
    assert torch.equal(x, expected[:, :-1]) and torch.equal(y, expected[:, 1:])
    assert x.is_contiguous() and y.is_contiguous()
    with pytest.raises(ValueError, match="window starts must lie in 0..9967"):
        windows(mapped, np.array([10_000 - 32]), 32)  # one token short
    with pytest.raises(ValueError, match="window starts must lie in"):
        windows(mapped, np.array([-1]), 32)  # fancy indexing would wrap around silently
