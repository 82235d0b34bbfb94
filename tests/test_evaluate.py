"""evaluate: every target scored exactly once by the window plan; the loss equals PyTorch's
cross-entropy computed directly on the same windows (non-overlapping and strided); bits per byte use
the bytes of the scored text; the CLI's JSON is the API's result."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lit_llm.evaluate import evaluate, load_tokens, token_byte_lengths, window_plan
from lit_llm.export import export_model
from tests.tiny_lm import SMALL_MERGES, byte_tokenizer, one_thread, tiny_model  # noqa: F401

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n_tokens", [2, 5, 16, 17, 18, 40, 101])
@pytest.mark.parametrize("stride", [None, 1, 5, 16])
def test_window_plan_scores_every_target_once(n_tokens: int, stride: int | None) -> None:
    plan = window_plan(n_tokens, 16, stride)
    length = min(16, n_tokens - 1)
    scored = [start + i + 1 for start, first in plan for i in range(first, length)]
    assert scored == list(range(1, n_tokens))  # in order, no gap, no repeat
    assert all(start + length + 1 <= n_tokens for start, _ in plan)
    if stride is not None and n_tokens - 1 >= 16:  # overlapping windows: all but the first keep context
        assert all(first >= 16 - stride for _, first in plan[1:])


def test_window_plan_refuses_bad_input() -> None:
    with pytest.raises(ValueError, match="stride=17: expected an integer in 1..context_length=16"):
        window_plan(100, 16, 17)
    with pytest.raises(ValueError, match="holds 1 token"):
        window_plan(1, 16)


def direct_loss(model, tokens: np.ndarray, plan, length: int) -> float:
    """The same windows, scored one by one with torch's cross-entropy in float64."""
    nats, count = 0.0, 0
    with torch.inference_mode():
        for start, first in plan:
            window = torch.from_numpy(tokens[start : start + length + 1].astype(np.int64))
            logits = model(window[None, :-1])[0].double()
            nats += F.cross_entropy(logits[first:], window[first + 1 :], reduction="sum").item()
            count += length - first
    return nats / count


@pytest.mark.parametrize("stride", [None, 4])
def test_loss_equals_cross_entropy_on_the_same_windows(stride: int | None) -> None:
    model = tiny_model()
    tokens = np.random.default_rng(0).integers(0, 262, size=75).astype(np.uint16)
    byte_lengths = np.ones(262, dtype=np.int64)
    result = evaluate(model, tokens, byte_lengths, stride=stride, batch_size=3)
    plan = window_plan(75, 16, stride)
    assert result["tokens"] == 74 and result["windows"] == len(plan)
    assert result["loss"] == pytest.approx(direct_loss(model, tokens, plan, 16), rel=1e-5)
    assert result["ppl"] == pytest.approx(math.exp(result["loss"]))
    assert result["bpb"] == pytest.approx(result["loss"] * 74 / math.log(2) / 74)


def test_bits_per_byte_counts_the_bytes_of_the_scored_text(tmp_path: Path) -> None:
    tokenizer = byte_tokenizer(SMALL_MERGES)
    text = "the cat and the hat sat on the mat; then the man ran. " * 3 + "<|endoftext|>é✓"
    (tmp_path / "valid.txt").write_text(text, encoding="utf-8")
    tokens = load_tokens(tmp_path / "valid.txt", tokenizer, num_workers=1)
    assert tokens.tolist() == tokenizer.encode(text)
    model = tiny_model()
    result = evaluate(model, tokens, token_byte_lengths(tokenizer, 262))
    first_token_bytes = len(tokenizer.vocab[int(tokens[0])])  # the first token is never a target
    assert result["bytes"] == len(text.encode("utf-8")) - first_token_bytes
    assert result["bpb"] == pytest.approx(result["loss"] * result["tokens"] / math.log(2) / result["bytes"])
    np.save(tmp_path / "tokens.npy", tokens)
    # The same integer ids through the same model, shapes and thread count: deterministic, so exact.
    assert (
        evaluate(model, load_tokens(tmp_path / "tokens.npy", tokenizer), token_byte_lengths(tokenizer, 262))
        == result
    )


def test_tokens_outside_the_vocabulary_are_one_line() -> None:
    with pytest.raises(ValueError, match="token id 300 but the model's vocab_size is 262"):
        evaluate(tiny_model(), np.array([1, 2, 300]), np.ones(262, dtype=np.int64))


def test_cli_prints_the_result_as_json(tmp_path: Path) -> None:
    tokenizer, model = byte_tokenizer(SMALL_MERGES), tiny_model()
    export_model(model, tokenizer, tmp_path / "model")
    text = "the hat and the cat " * 10
    (tmp_path / "valid.txt").write_text(text, encoding="utf-8")
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "lit_llm.evaluate",
            "ckpt=model",
            "data=valid.txt",
            "stride=8",
            "json=true",
            "out=r.json",
            "num_workers=1",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    printed = json.loads(result.stdout)
    expected = evaluate(model, np.array(tokenizer.encode(text)), token_byte_lengths(tokenizer, 262), stride=8)
    # The CLI's process runs torch on its own thread count (these tests use one), and float sums need
    # not round alike across thread counts: the counts are exact, the losses equal to rounding.
    losses = {k: pytest.approx(expected[k], rel=1e-5) for k in ("loss", "ppl", "bpb")}
    assert printed == {"ckpt": "model", "data": "valid.txt", **expected, **losses}
    assert json.loads((tmp_path / "r.json").read_text()) == printed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "r.json", "valid.txt"]
