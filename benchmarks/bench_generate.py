"""Generation speed: our sampler without and with the KV cache against Hugging Face's
``LlamaForCausalLM.generate`` on the same weights (exported with ``lit_llm.export format=hf``).

The TinyStories base model (vocab 10000, context 256, d_model 512, 4 layers, 16 heads, d_ff 1344) with
random weights, float32, batch 1, greedy decoding of 256 new tokens after a 1-token prompt (so the
sequence just fills the context and no cropping happens), on whatever device torch picks (CPU here).
The three are timed in interleaved rounds, so a change in machine load hits all of them alike;
tokens/s comes from the median run (the best run is printed beside it). All three must produce the
same tokens: the count of agreeing tokens is printed (float rounding may flip a near-tie late on).

Decoding one token at batch 1 reads every weight matrix once (all parameters but the embedding table,
of which one row is read), so memory bandwidth bounds it: the limit printed is the measured read
bandwidth (a sum over a 256 MB tensor, best of 5) divided by those bytes, and each generator's
fraction of it. (Ours decodes with a copy of its float32 weights transposed and cut into one block of
columns per thread, ``generate.decoding_layout``: ``torch.bmm`` reads the blocks on every thread at once,
where MKL's one-row GEMM reads on one.) Ours with ``bfloat16`` weights (``model.to(torch.bfloat16)``)
is reported on its own line: half the bytes, but its greedy tokens may differ from float32's.

    python -m benchmarks.bench_generate [--rounds 3] [--new-tokens 256] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from benchmarks.timing import interleaved_times
from lit_llm.export import export_model
from lit_llm.generate import generate_ids
from lit_llm.model import TransformerLM
from tokenizer.tokenizer import Tokenizer

BASE = dict(
    vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344, rope_theta=1e4
)
EOT = "<|endoftext|>"


def byte_tokenizer() -> Tokenizer:
    """<|endoftext|> + the 256 bytes: enough for an export (the weights are random anyway)."""
    vocab = {0: EOT.encode(), **{i + 1: bytes([i]) for i in range(256)}}
    return Tokenizer(vocab, [], [EOT])


def ours(model: TransformerLM, prompt: list[int], new_tokens: int, use_cache: bool) -> list[int]:
    steps = generate_ids(model, prompt, max_new_tokens=new_tokens, temperature=0.0, use_cache=use_cache)
    return [int(t) for t in torch.cat(list(steps))]


def hf(model, prompt: list[int], new_tokens: int) -> list[int]:
    with torch.inference_mode():
        out = model.generate(
            torch.tensor([prompt]),
            max_new_tokens=new_tokens,
            min_new_tokens=new_tokens,  # the random model may emit <|endoftext|>: do not stop there
            do_sample=False,
            pad_token_id=0,
        )
    return out[0, len(prompt) :].tolist()


def read_bandwidth(megabytes: int = 256, rounds: int = 5) -> float:
    """Bytes per second a reduction reads from memory (a tensor far larger than the caches)."""
    x = torch.ones(megabytes * 2**20 // 4)
    x.sum()
    best = min(interleaved_times({"sum": x.sum}, rounds)["sum"])
    return x.numel() * 4 / best


def weight_bytes_per_token(model: TransformerLM) -> int:
    """Bytes of the weights a batch-1 decoding step reads: everything except the embedding table."""
    table = model.token_embeddings.weight
    return sum(p.numel() * p.element_size() for p in model.parameters() if p is not table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3, help="timed runs per generator (interleaved)")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = TransformerLM(**BASE).eval()
    with tempfile.TemporaryDirectory() as tmp:
        export_model(model, byte_tokenizer(), f"{tmp}/hf", format="hf")
        hf_model = LlamaForCausalLM.from_pretrained(f"{tmp}/hf", local_files_only=True).eval()
    prompt = [0]  # <|endoftext|>: the start of a document

    model_bf16 = TransformerLM(**BASE).eval()
    model_bf16.load_state_dict(model.state_dict())
    model_bf16 = model_bf16.to(torch.bfloat16)
    runners = {
        "ours, no cache": lambda: ours(model, prompt, args.new_tokens, use_cache=False),
        "ours, KV cache": lambda: ours(model, prompt, args.new_tokens, use_cache=True),
        "HF generate": lambda: hf(hf_model, prompt, args.new_tokens),
        "ours, KV, bf16": lambda: ours(model_bf16, prompt, args.new_tokens, use_cache=True),
    }
    outputs = {name: run() for name, run in runners.items()}  # warm-up, and the tokens to compare
    times = interleaved_times(runners, args.rounds)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    print(f"config {BASE}, batch 1, greedy, {args.new_tokens} new tokens, float32, {args.rounds} rounds")
    reference = outputs["ours, KV cache"]
    for name, tokens in outputs.items():
        same = sum(a == b for a, b in zip(tokens, reference, strict=True))
        print(f"  {name:<15} tokens equal to ours with cache: {same}/{len(reference)}")
    rate = {name: args.new_tokens / statistics.median(t) for name, t in times.items()}
    best = {name: args.new_tokens / min(t) for name, t in times.items()}
    bandwidth = read_bandwidth()
    limit = {
        name: bandwidth / weight_bytes_per_token(model_bf16 if "bf16" in name else model) for name in runners
    }
    print(
        f"memory-bound limit: read bandwidth {bandwidth / 1e9:.1f} GB/s / "
        f"{weight_bytes_per_token(model) / 1e6:.1f} MB of float32 weights per token = "
        f"{limit['HF generate']:.0f} tokens/s ({limit['ours, KV, bf16']:.0f} in bfloat16)"
    )
    header = f"{'generator':<16}{'tokens/s':>9}{'vs no cache':>13}{'vs HF':>8}{'of limit':>10}"
    print(header + "   (best run: tokens/s)")
    for name in runners:
        print(
            f"{name:<16}{rate[name]:>9.1f}{rate[name] / rate['ours, no cache']:>13.2f}"
            f"{rate[name] / rate['HF generate']:>8.2f}{rate[name] / limit[name]:>10.0%}   {best[name]:.1f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
