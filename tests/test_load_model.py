"""load_model: a Lightning checkpoint (real, from `python -m lit_llm.train`, and hand-built with the
same layout), a save_checkpoint file and an exported folder all give back the exact model and its
tokenizer; nothing is unpickled beyond tensors (a crafted checkpoint's code does not run); a wrong
shape, a missing tokenizer or a missing file is one clear line."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_llm.checkpoint import load_model, save_checkpoint
from lit_llm.export import export_model
from tests.tiny_lm import SMALL_MERGES, byte_tokenizer, one_thread, tiny_model, write_lightning_ckpt  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


def same_logits(a, b) -> bool:
    """The very weights (bit for bit: loading saved tensors back is a copy) and the same function (the
    logits, to a tolerance: the weights were allocated anew, and a BLAS kernel need not give the same
    last bit for other buffers)."""
    sa, sb = a.state_dict(), b.state_dict()
    if sa.keys() != sb.keys() or not all(torch.equal(sa[k], sb[k]) for k in sa):
        return False
    tokens = torch.randint(0, a.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return torch.allclose(a(tokens), b(tokens), atol=1e-6, rtol=1e-6)


def test_lightning_checkpoint_finds_its_tokenizer_by_hash(tmp_path: Path, monkeypatch) -> None:
    model, tokenizer = tiny_model(), byte_tokenizer(SMALL_MERGES)
    other = byte_tokenizer(SMALL_MERGES[:2])  # same folder layout, another hash: must not be picked
    other.save(tmp_path / "artifacts" / "tokenizers" / "a-other")
    tokenizer.save(tmp_path / "artifacts" / "tokenizers" / "b-right")
    ckpt = write_lightning_ckpt(
        tmp_path / "logs" / "run" / "2026" / "checkpoints" / "last.ckpt", model, tokenizer
    )
    monkeypatch.chdir(tmp_path / "logs")  # found by walking up from the checkpoint, not from cwd
    loaded, loaded_tokenizer = load_model(ckpt)
    assert same_logits(model, loaded) and loaded.config == model.config
    assert loaded_tokenizer.fingerprint == tokenizer.fingerprint
    assert not loaded.training


def test_a_missing_tokenizer_is_one_line_and_can_be_given(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    model, tokenizer = tiny_model(), byte_tokenizer()
    ckpt = write_lightning_ckpt(tmp_path / "x.ckpt", model, tokenizer)
    with pytest.raises(FileNotFoundError) as err:
        load_model(ckpt)
    message = str(err.value)
    assert "\n" not in message and f"tokenizer with hash {tokenizer.fingerprint[:12]}" in message
    assert "pass tokenizer=" in message
    tokenizer.save(tmp_path / "elsewhere")
    _, given = load_model(ckpt, tokenizer=tmp_path / "elsewhere")
    assert given.fingerprint == tokenizer.fingerprint
    with pytest.raises(FileNotFoundError, match="meta.json not found"):
        load_model(ckpt, tokenizer=tmp_path / "nothing")


def test_a_tokenizer_larger_than_the_model_is_refused(tmp_path: Path) -> None:
    big = byte_tokenizer(SMALL_MERGES)  # 262 tokens
    big.save(tmp_path / "tok")
    ckpt = write_lightning_ckpt(tmp_path / "x.ckpt", tiny_model(vocab_size=257), None)
    with pytest.raises(ValueError, match="the tokenizer has 262 tokens but the model only vocab_size=257"):
        load_model(ckpt, tokenizer=tmp_path / "tok")


def test_shapes_that_do_not_match_the_config_are_one_line(tmp_path: Path) -> None:
    model, tokenizer = tiny_model(), byte_tokenizer()
    tokenizer.save(tmp_path / "tok")
    config = dict(model.config.to_dict(), d_model=64, num_heads=4)
    ckpt = write_lightning_ckpt(tmp_path / "x.ckpt", model, tokenizer, model_config=config)
    with pytest.raises(ValueError) as err:
        load_model(ckpt, tokenizer=tmp_path / "tok")
    assert "\n" not in str(err.value)
    assert "parameter token_embeddings.weight has shape (262, 32) in the checkpoint but (262, 64)" in str(
        err.value
    )
    config["d_model"] = 30  # not a multiple of num_heads
    write_lightning_ckpt(tmp_path / "x.ckpt", model, tokenizer, model_config=config)
    with pytest.raises(ValueError, match="d_model=30: expected a multiple of num_heads=4"):
        load_model(ckpt, tokenizer=tmp_path / "tok")


def test_save_checkpoint_files_and_exported_folders_load_too(tmp_path: Path) -> None:
    model, tokenizer = tiny_model(tie_embeddings=True), byte_tokenizer()
    tokenizer.save(tmp_path / "tok")
    save_checkpoint(model, None, 7, tmp_path / "plain.pt")
    loaded, _ = load_model(tmp_path / "plain.pt", tokenizer=tmp_path / "tok")
    assert same_logits(model, loaded)
    export_model(model, tokenizer, tmp_path / "exported")
    loaded, loaded_tokenizer = load_model(tmp_path / "exported")
    assert same_logits(model, loaded) and loaded.lm_head.weight is loaded.token_embeddings.weight
    assert loaded_tokenizer.fingerprint == tokenizer.fingerprint
    (tmp_path / "exported" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="exported: missing meta.json"):
        load_model(tmp_path / "exported")
    with pytest.raises(FileNotFoundError, match="model not found"):
        load_model(tmp_path / "nope.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.ckpt: not a readable checkpoint"):
        load_model(tmp_path / "junk.ckpt")


class _RunsCode:
    """Unpickling this calls exec(): the classic payload of a malicious checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",))


def test_a_checkpoint_crafted_to_run_code_is_refused_and_the_code_does_not_run(tmp_path: Path) -> None:
    model, tokenizer = tiny_model(), byte_tokenizer()
    tokenizer.save(tmp_path / "tok")
    marker = tmp_path / "marker"
    ckpt = write_lightning_ckpt(tmp_path / "evil.ckpt", model, tokenizer, hyper_parameters=_RunsCode(marker))
    with pytest.raises(ValueError) as err:
        load_model(ckpt, tokenizer=tmp_path / "tok")
    assert "evil.ckpt: refused" in str(err.value) and "\n" not in str(err.value)
    assert not marker.exists()
    # The file is a live exploit: plain unpickling (what weights_only=True prevents) runs the code.
    torch.load(ckpt, weights_only=False)
    assert marker.read_text() == "pwned"
    # A bare pickle (not a torch zip file) is refused too.
    marker.unlink()
    (tmp_path / "bare.ckpt").write_bytes(pickle.dumps(_RunsCode(marker)))
    with pytest.raises(ValueError):
        load_model(tmp_path / "bare.ckpt", tokenizer=tmp_path / "tok")
    assert not marker.exists()


def test_a_real_training_checkpoint_loads_and_generates(tmp_path: Path) -> None:
    """`python -m lit_llm.train debug=fast` (about 10 s): the layout is the real one, not our copy."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_llm.train",
            "experiment=quickstart",
            "debug=fast",
            "callbacks.progress_bar=null",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (ckpt,) = tmp_path.glob("logs/debug/*/checkpoints/last.ckpt")
    model, tokenizer = load_model(ckpt)
    payload = torch.load(ckpt, weights_only=True)
    state = {k.removeprefix("model."): v for k, v in payload["state_dict"].items()}
    # the model holds copies of the saved tensors: exact
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    assert model.config.to_dict() == payload["model_config"]
    (tok_dir,) = tmp_path.glob("artifacts/tokenizers/*")
    assert tokenizer.fingerprint == type(tokenizer).from_dir(tok_dir).fingerprint
    from lit_llm.generate import generate

    assert isinstance(generate(model, tokenizer, "Once upon a time", max_new_tokens=5, seed=0), str)
