"""Scoring speed: ``lit_llm.evaluate.evaluate`` (what ``python -m lit_llm.evaluate`` runs once the model
is loaded) against a bare ``torch.inference_mode`` loop over the same windows, in interleaved rounds.

The quickstart model shape (vocab 2000, context 128, d_model 128, 4 layers, 4 heads) with random
weights, on a token array as long as the quickstart validation split (random ids: the speed does not
depend on them), non-overlapping windows, batch 8 (the CLI's default). The bare loop cuts the windows
with the same ``windows`` function and sums ``F.cross_entropy`` per batch; both must give the same loss.

    python -m benchmarks.bench_evaluate [--rounds 5] [--tokens 200000] [--batch-size 8] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics

import numpy as np
import torch
import torch.nn.functional as F

from benchmarks.timing import interleaved_times
from lit_llm.data.batch import windows
from lit_llm.evaluate import evaluate, window_plan
from lit_llm.model import TransformerLM

QUICKSTART = dict(vocab_size=2000, context_length=128, d_model=128, num_layers=4, num_heads=4, rope_theta=1e4)


@torch.inference_mode()
def bare_loop(model: TransformerLM, tokens: np.ndarray, batch_size: int) -> float:
    """Mean loss over the same non-overlapping windows, the plain way."""
    context = model.config.context_length
    starts = np.array([start for start, _ in window_plan(len(tokens), context)])
    total, count = 0.0, 0
    for i in range(0, len(starts), batch_size):
        x, y = windows(tokens, starts[i : i + batch_size], context)
        logits = model(x)
        total += F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum").item()
        count += y.numel()
    return total / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tokens", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = TransformerLM(**QUICKSTART).eval()
    tokens = np.random.default_rng(0).integers(0, QUICKSTART["vocab_size"], args.tokens).astype(np.uint16)
    token_bytes = np.ones(QUICKSTART["vocab_size"], dtype=np.int64)
    runners = {
        "bare inference_mode loop": lambda: bare_loop(model, tokens, args.batch_size),
        "lit_llm.evaluate": lambda: evaluate(model, tokens, token_bytes, batch_size=args.batch_size)["loss"],
    }
    losses = {name: run() for name, run in runners.items()}  # warm-up, and the losses to compare
    times = interleaved_times(runners, args.rounds)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"load average {os.getloadavg()[0]:.2f}; {args.tokens} tokens, batch {args.batch_size}, "
        f"{args.rounds} rounds"
    )
    scored = len(tokens) - 1
    rate = {name: scored / statistics.median(t) for name, t in times.items()}
    bare = rate["bare inference_mode loop"]
    for name in runners:
        ratio = rate[name] / bare
        print(f"  {name:<26} {rate[name]:9.0f} tokens/s  ratio {ratio:.3f}  loss {losses[name]:.6f}")
    assert math.isclose(*losses.values(), rel_tol=1e-4), losses
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
