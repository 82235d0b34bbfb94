"""TokenWindowDataModule: windows as a pure function of (seed, micro-batch, rank), fixed validation."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import torch

from lit_llm.data import TokenWindowDataModule
from lit_llm.data.datamodule import val_starts, window_starts, windows
from lit_llm.data.synthetic import EOT, write_corpus

T, B = 16, 4


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("dm")
    corpus = write_corpus(root / "stories.txt", 200, seed=11)
    return {
        "train_file": str(corpus),
        "data_dir": str(root / "data"),
        "artifacts_dir": str(root / "artifacts"),
    }


def _dm(dirs, **kw) -> TokenWindowDataModule:
    args = dict(
        dataset="local",
        vocab_size=300,
        context_length=T,
        batch_size=B,
        val_windows=10,
        seed=7,
        tokenizer_workers=1,
        **dirs,
    )
    dm = TokenWindowDataModule(**{**args, **kw})
    dm.prepare_data()
    dm.setup("fit")
    return dm


@pytest.fixture(scope="module")
def dm(dirs):
    return _dm(dirs)


def _batches(dm, n, **trainer):
    if trainer:
        dm.trainer = SimpleNamespace(
            **{"global_step": 0, "accumulate_grad_batches": 1, "global_rank": 0, "world_size": 1, **trainer}
        )
    try:
        return list(itertools.islice(iter(dm.train_dataloader()), n))
    finally:
        dm.trainer = None


def test_window_starts_pure_and_in_range():
    a = window_starts(1, 5, 0, 1000, T, 64)
    assert np.array_equal(a, window_starts(1, 5, 0, 1000, T, 64))  # integers from the same seed: exact
    # Another stream draws 64 starts out of 984: all 64 coinciding has probability 984^-64, i.e. never.
    assert not np.array_equal(a, window_starts(1, 5, 1, 1000, T, 64))  # other rank
    assert not np.array_equal(a, window_starts(1, 6, 0, 1000, T, 64))  # other micro-batch
    assert not np.array_equal(a, window_starts(2, 5, 0, 1000, T, 64))  # other seed
    many = window_starts(0, 0, 0, T + 3, T, 1000)
    assert many.min() == 0 and many.max() == 2  # every window of T+1 tokens fits, the last one included


def test_windows_are_shifted_slices():
    tokens = np.arange(100, dtype=np.uint16)
    x, y = windows(tokens, np.array([0, 50, 83]), T)
    assert x.dtype == torch.int64 and x.shape == (3, T) and y.shape == (3, T)
    assert torch.equal(x[1], torch.arange(50, 50 + T)) and torch.equal(y, x + 1)


def test_train_batches_follow_the_pure_function(dm):
    batches = _batches(dm, 3)
    n = len(dm.train_tokens)
    for i, (x, y) in enumerate(batches):
        assert x.shape == (B, T) and x.dtype == torch.int64
        ex, ey = windows(np.asarray(dm.train_tokens), window_starts(7, i, 0, n, T, B), T)
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_resume_draws_what_an_uninterrupted_run_would(dm):
    straight = _batches(dm, 12, accumulate_grad_batches=2)
    resumed = _batches(dm, 6, global_step=3, accumulate_grad_batches=2)  # 3 optimizer steps = 6 micro-batches
    for (x0, y0), (x1, y1) in zip(straight[6:], resumed, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)


def test_ranks_draw_different_windows(dm):
    rank0 = _batches(dm, 4, global_rank=0, world_size=2)
    rank1 = _batches(dm, 4, global_rank=1, world_size=2)
    for (a, _), (b, _) in zip(rank0, rank1, strict=True):
        # B windows drawn independently out of thousands of starts: identical batches would need every
        # start to collide (or the text to repeat exactly there), a negligible chance.
        assert not torch.equal(a, b)
    assert all(
        torch.equal(a, b) for (a, _), (b, _) in zip(rank0, _batches(dm, 4), strict=True)
    )  # rank 0 = single device (integer token ids: exact)


def test_dataloader_workers_keep_the_order(dirs, dm):
    with_workers = _dm(dirs, num_workers=2)
    for (a, _), (b, _) in zip(_batches(with_workers, 5), _batches(dm, 5), strict=True):
        assert torch.equal(a, b)


def test_validation_windows_fixed_and_spread(dm):
    first = list(dm.val_dataloader())
    second = list(dm.val_dataloader())
    assert sum(len(x) for x, _ in first) == 10
    for (x0, y0), (x1, y1) in zip(first, second, strict=True):
        assert torch.equal(x0, x1) and torch.equal(y0, y1)
    n = len(dm.val_tokens)
    starts = val_starts(n, T, 10)
    assert starts[0] == 0 and starts[-1] == n - T - 1  # from the first token to the last
    x = torch.cat([x for x, _ in first])
    assert torch.equal(x[-1], torch.from_numpy(np.asarray(dm.val_tokens[n - T - 1 : n - 1], dtype=np.int64)))


def test_all_non_overlapping_validation_windows(dirs):
    dm = _dm(dirs, val_windows=None)
    n = len(dm.val_tokens)
    x = torch.cat([x for x, _ in dm.val_dataloader()])
    assert len(x) == (n - 1) // T
    assert torch.equal(x.flatten(), torch.from_numpy(np.asarray(dm.val_tokens[: len(x) * T], dtype=np.int64)))


def test_tokenizer_bytes_per_token_and_eot(dm):
    val = np.asarray(dm.val_tokens)
    text = dm.tokenizer.decode(val.tolist())
    assert dm.val_bytes_per_token == pytest.approx(len(text.encode("utf-8")) / len(val))
    assert dm.eot_id == dm.tokenizer.encode(EOT)[0]
    assert (val == dm.eot_id).sum() == text.count(EOT) > 0
    assert isinstance(dm.train_tokens, np.memmap) and isinstance(dm.val_tokens, np.memmap)


def test_state_dict_refuses_other_data(dirs, dm):
    state = dm.state_dict()
    assert state["fingerprint"] == dm.fingerprint and state["fingerprint"]["tokenizer"]
    dm.load_state_dict(state)  # same data: fine
    other = _dm(dirs, vocab_size=320)
    with pytest.raises(
        ValueError, match=r"checkpoint was trained on other data \(tokenizer [0-9a-f]{12} -> [0-9a-f]{12}, "
    ):
        other.load_state_dict(state)


def test_bad_arguments_named_all_at_once():
    with pytest.raises(ValueError) as info:
        TokenWindowDataModule(dataset="nope", context_length=0, batch_size=-1, val_windows=0, num_workers=-2)
    msg = str(info.value)
    for key in (
        "data.dataset='nope'",
        "data.context_length=0",
        "data.batch_size=-1",
        "data.val_windows=0",
        "data.num_workers=-2",
    ):
        assert key in msg
    with pytest.raises(TypeError, match="batch_sise"):  # Hydra's instantiate names the unknown key too
        TokenWindowDataModule(batch_sise=3)


def test_context_longer_than_the_validation_text(dirs):
    with pytest.raises(ValueError, match=r"validation text has only \d+ tokens .*data.context_length=20000"):
        _dm(dirs, context_length=20_000)


def test_accessors_before_setup_say_what_to_do():
    dm = TokenWindowDataModule()
    with pytest.raises(RuntimeError, match="prepare_data\\(\\) and setup\\(\\) first"):
        _ = dm.val_bytes_per_token
    assert dm.eot_id is None and dm.state_dict() == {"fingerprint": None}


class _Recorder(L.LightningModule):
    """The smallest trainable module; records the first token of every window it is fed."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(300, 8)
        self.seen: list[list[int]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.seen.append(x[:, 0].tolist())
        return torch.nn.functional.cross_entropy(self.emb(x).flatten(0, 1) @ self.emb.weight.T, y.flatten())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_lightning_resume_continues_the_window_sequence(dirs, tmp_path):
    """Through a real Trainer: 6 steps straight == 3 steps, checkpoint, resume to 6 (accumulating 2)."""

    def fit(steps, module, ckpt_path=None):
        trainer = L.Trainer(
            max_steps=steps,
            accumulate_grad_batches=2,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            default_root_dir=tmp_path,
            accelerator="cpu",
            devices=1,
        )
        trainer.fit(module, datamodule=_dm(dirs), ckpt_path=ckpt_path)
        return trainer

    straight, first, second = _Recorder(), _Recorder(), _Recorder()
    fit(6, straight)
    fit(3, first).save_checkpoint(tmp_path / "half.ckpt")
    fit(6, second, ckpt_path=tmp_path / "half.ckpt")
    assert len(straight.seen) == 12 and len(first.seen) == len(second.seen) == 6
    assert straight.seen == first.seen + second.seen
