"""export: a lit-llm folder round-trips to identical logits; the Hugging Face Llama folder loads in
transformers offline and gives our logits to 1e-4 (the q/k RoPE permutation is right), with a tokenizer
that encodes like ours; the folder appears complete or not at all."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lit_llm.checkpoint import load_model
from lit_llm.export import export_model, interleaved_to_half_rows
from lit_llm.model import RotaryEmbedding
from tests.tiny_lm import SMALL_MERGES, byte_tokenizer, one_thread, tiny_model, write_lightning_ckpt  # noqa: F401
from tokenizer.files import sha256_file

REPO = Path(__file__).resolve().parent.parent
TEXT = "the cat and the hat\nsat on a mat <|endoftext|> then ran"


def test_lit_export_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    model, tokenizer = tiny_model(norm="post", ffn="silu"), byte_tokenizer(SMALL_MERGES)
    out = export_model(model, tokenizer, tmp_path / "out")
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "config.json",
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "meta.json",
    }
    assert json.loads((out / "config.json").read_text()) == {  # the config, and the weights' hash
        **model.config.to_dict(),
        "sha256": {"model.safetensors": sha256_file(out / "model.safetensors")},
    }
    loaded, loaded_tokenizer = load_model(out)
    tokens = torch.randint(0, 262, (2, 16), generator=torch.Generator().manual_seed(0))
    state = model.state_dict()  # the weights come back bit for bit (a copy); the logits to rounding
    assert loaded.state_dict().keys() == state.keys()
    assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
    with torch.inference_mode():
        torch.testing.assert_close(loaded(tokens), model(tokens), atol=1e-6, rtol=1e-6)
    assert loaded_tokenizer.encode(TEXT) == tokenizer.encode(TEXT)


def test_the_permutation_turns_interleaved_rope_into_rotate_half() -> None:
    # Permuting after our RoPE == HF's rotate_half formula applied to the permuted vector.
    d = 8
    rope = RotaryEmbedding(10000.0, d, 32)
    x = torch.randn(3, 5, d, generator=torch.Generator().manual_seed(0))  # (heads, seq, d)
    perm = interleaved_to_half_rows(torch.eye(d), num_heads=1)  # rows of the identity: a permutation
    assert perm[:, 0].nonzero().item() == 0 and perm[d // 2, 1] == 1  # our x[1] becomes HF's x[d/2]
    xp = x @ perm.t()
    inv_freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angles = torch.outer(torch.arange(5, dtype=torch.float64), inv_freq).float()  # (seq, d/2)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)  # (seq, d)
    rotate_half = torch.cat([-xp[..., d // 2 :], xp[..., : d // 2]], dim=-1)
    torch.testing.assert_close(rope(x) @ perm.t(), xp * cos + rotate_half * sin, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("variant", [{}, {"tie_embeddings": True, "rope_theta": 500.0, "norm_eps": 1e-6}])
def test_hf_export_loads_offline_and_matches_our_logits(tmp_path: Path, variant: dict) -> None:
    import transformers  # a dev dependency: its absence is a broken install, not a skip

    model, tokenizer = tiny_model(**variant), byte_tokenizer(SMALL_MERGES)
    out = export_model(model, tokenizer, tmp_path / "hf", format="hf")
    hf = transformers.LlamaForCausalLM.from_pretrained(out, local_files_only=True).eval()
    hf_tokenizer = transformers.AutoTokenizer.from_pretrained(out, local_files_only=True)
    ids = hf_tokenizer(TEXT)["input_ids"]
    assert ids == tokenizer.encode(TEXT)
    tokens = torch.tensor([ids[:16], ids[-16:]])
    with torch.inference_mode():
        torch.testing.assert_close(hf(tokens).logits, model(tokens), atol=1e-4, rtol=0)
    assert hf.config.tie_word_embeddings == model.config.tie_embeddings


def test_hf_refuses_a_model_that_is_not_a_llama_and_nothing_is_left_behind(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="format=hf: this model is not a Llama: norm='post'"):
        export_model(tiny_model(norm="post"), byte_tokenizer(), tmp_path / "hf", format="hf")
    with pytest.raises(ValueError, match="format='onnx': expected one of lit, hf"):
        export_model(tiny_model(), byte_tokenizer(), tmp_path / "x", format="onnx")
    assert list(tmp_path.iterdir()) == []


def test_an_existing_folder_is_kept_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    export_model(tiny_model(seed=0), byte_tokenizer(), out)
    with pytest.raises(FileExistsError, match="exists and is not an empty folder"):
        export_model(tiny_model(seed=1), byte_tokenizer(), out)
    export_model(tiny_model(seed=1), byte_tokenizer(), out, overwrite=True)
    loaded, _ = load_model(out)
    # saved tensors loaded back, and a seeded init rebuilt on the same shapes: both exact
    assert torch.equal(loaded.lm_head.weight, tiny_model(seed=1).lm_head.weight)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary or old folder left


def test_cli_exports_a_lightning_checkpoint(tmp_path: Path) -> None:
    model, tokenizer = tiny_model(), byte_tokenizer(SMALL_MERGES)
    tokenizer.save(tmp_path / "artifacts" / "tokenizers" / "t")
    ckpt = write_lightning_ckpt(tmp_path / "logs" / "r" / "checkpoints" / "last.ckpt", model, tokenizer)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "lit_llm.export", *a], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    result = run(f"ckpt={ckpt}", "out=exported")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "exported to exported"
    loaded, _ = load_model(tmp_path / "exported")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())  # copies: exact
    again = run(f"ckpt={ckpt}", "out=exported")
    assert again.returncode == 1 and again.stderr.startswith("error: out=exported: exists")
    assert "Traceback" not in again.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifacts", "exported", "logs"]
