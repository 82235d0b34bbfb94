"""Tiny models, tokenizers and checkpoints for the generation/evaluation/export/loading tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lit_llm.model import TransformerLM
from tokenizer.tokenizer import Tokenizer

EOT = "<|endoftext|>"


def byte_tokenizer(merges: list[tuple[bytes, bytes]] = ()) -> Tokenizer:
    """<|endoftext|> (id 0), the 256 bytes (ids 1..256), then ``merges`` in order."""
    vocab = {0: EOT.encode(), **{i + 1: bytes([i]) for i in range(256)}}
    for a, b in merges:
        vocab[len(vocab)] = a + b
    return Tokenizer(vocab, list(merges), [EOT])


SMALL_MERGES = [(b" ", b"t"), (b"h", b"e"), (b" t", b"he"), (b"a", b"n"), (b" ", b"a")]


def tiny_model(seed: int = 0, **overrides) -> TransformerLM:
    torch.manual_seed(seed)
    config = dict(vocab_size=262, context_length=16, d_model=32, num_layers=2, num_heads=4) | overrides
    return TransformerLM(**config).eval()


def write_lightning_ckpt(path: Path, model: TransformerLM, tokenizer: Tokenizer | None, **extra) -> Path:
    """A checkpoint with the layout ``python -m lit_llm.train`` writes (see tests/test_train_e2e.py):
    LanguageModelModule's ``model.``-prefixed state dict, its hyper_parameters, the ``model_config``
    entry, and the data module's fingerprint (which holds the tokenizer hash)."""
    config = model.config.to_dict()
    payload = {
        "epoch": 0,
        "global_step": 4,
        "pytorch-lightning_version": "2.6.0",
        "state_dict": {f"model.{k}": v for k, v in model.state_dict().items()},
        "loops": {},
        "callbacks": {},
        "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-3, "params": [0]}]}],
        "lr_schedulers": [],
        "hparams_name": "kwargs",
        "hyper_parameters": {"model": config, "optimizer": {"lr": 1e-3}, "scheduler": {}, "compile": False},
        "model_config": config,
        "rng_states": {"torch": torch.get_rng_state()},
    }
    if tokenizer is not None:
        payload["TokenWindowDataModule"] = {
            "fingerprint": {"tokenizer": tokenizer.fingerprint, "tokens": "0" * 64, "train_tokens": 1}
        }
    payload.update(extra)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(payload, path)
    return path


@pytest.fixture(autouse=True)
def one_thread():
    """Import into a test module to run its tiny tensors on one thread: a second brings nothing, and on
    a shared, loaded machine every multi-threaded op can wait a whole time slice for its partner."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
