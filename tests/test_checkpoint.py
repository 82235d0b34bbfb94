"""save_checkpoint / load_checkpoint: full round trip, atomic writes, clear errors, no unpickling."""

from __future__ import annotations

import io
import pickle

import pytest
import torch

from lit_llm.checkpoint import load_checkpoint, save_checkpoint
from lit_llm.losses import cross_entropy
from lit_llm.model import ModelConfig, TransformerLM
from lit_llm.optim import AdamW

TINY = dict(vocab_size=32, context_length=8, d_model=16, num_layers=2, num_heads=2)


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors: a second thread brings nothing, and on a loaded machine it can slow a step 30x.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _train(model, optimizer, steps, seed):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        ids = torch.randint(0, 32, (2, 9), generator=gen)
        optimizer.zero_grad()
        cross_entropy(model(ids[:, :-1]), ids[:, 1:]).backward()
        optimizer.step()


def _fresh(**overrides):
    torch.manual_seed(123)
    model = TransformerLM(**{**TINY, **overrides})
    return model, AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)


@pytest.mark.parametrize("to_file_object", [False, True])
def test_round_trip_restores_model_optimizer_and_iteration(tmp_path, to_file_object):
    model, opt = _fresh()
    _train(model, opt, 3, seed=0)
    target = io.BytesIO() if to_file_object else tmp_path / "sub" / "ckpt.pt"
    save_checkpoint(model, opt, 3, target)
    if to_file_object:
        target.seek(0)
    restored, restored_opt = _fresh()
    assert load_checkpoint(target, restored, restored_opt) == 3
    for (name, a), b in zip(model.state_dict().items(), restored.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    # the optimizer state came back too: training on continues identically
    _train(model, opt, 2, seed=1)
    _train(restored, restored_opt, 2, seed=1)
    for a, b in zip(model.parameters(), restored.parameters(), strict=True):
        assert torch.equal(a, b)


def test_file_holds_plain_state_and_config(tmp_path):
    model, opt = _fresh(tie_embeddings=True)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(torch.compile(model), opt, 7, path)  # compiled wrapper: never called, so no compile
    payload = torch.load(path, weights_only=True)
    assert set(payload) == {"model", "optimizer", "iteration", "config"}
    assert payload["iteration"] == 7
    assert not any("_orig_mod" in k for k in payload["model"])
    assert ModelConfig.from_dict(payload["config"]) == model.config
    assert list(tmp_path.iterdir()) == [path]  # the temp file was renamed, nothing left behind
    plain = tmp_path / "plain"
    plain.write_bytes(b"")
    assert path.stat().st_mode == plain.stat().st_mode  # usual permissions, not a temp file's 0600
    restored, _ = _fresh(tie_embeddings=True)
    load_checkpoint(path, torch.compile(restored), None)
    assert restored.lm_head.weight is restored.token_embeddings.weight
    assert torch.equal(restored.lm_head.weight, model.lm_head.weight)


def test_truncated_file_gives_a_clear_error(tmp_path):
    model, opt = _fresh()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, opt, 1, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"ckpt\.pt: not a readable checkpoint"):
        load_checkpoint(path, model, opt)


def test_arbitrary_pickles_are_refused(tmp_path):
    path = tmp_path / "evil.pt"

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))

    with path.open("wb") as f:
        torch.save({"model": {}, "iteration": 0, "x": Evil()}, f, pickle_module=pickle)
    model, opt = _fresh()
    with pytest.raises(ValueError, match=r"evil\.pt: not a readable checkpoint"):
        load_checkpoint(path, model, opt)


def test_shape_mismatch_names_the_parameter(tmp_path):
    model, opt = _fresh()
    path = tmp_path / "ckpt.pt"
    save_checkpoint(model, opt, 1, path)
    wider, wider_opt = _fresh(d_model=32)
    with pytest.raises(
        ValueError, match=r"token_embeddings\.weight has shape \(32, 16\) in the checkpoint but \(32, 32\)"
    ):
        load_checkpoint(path, wider, wider_opt)
    other, other_opt = _fresh(ffn="silu")
    with pytest.raises(ValueError, match=r"missing: none; unexpected: layers\.0\.ffn\.w3\.weight"):
        load_checkpoint(path, other, other_opt)


def test_missing_file(tmp_path):
    model, opt = _fresh()
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt", model, opt)
