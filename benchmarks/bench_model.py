"""Training-step throughput of our from-scratch TransformerLM + AdamW against a PyTorch-built-ins twin.

One step = forward, cross-entropy, backward, optimizer step, float32, on whatever device torch picks
(CPU here, with torch's default thread count). Configuration (``--shape``): ``base``, the TinyStories
base model (vocab 10000, context 256, d_model 512, 4 layers, 16 heads, d_ff 1344, RoPE theta 10000),
batch 8; ``small``, the ``ablation_base`` model (vocab 256, context 64, d_model 128, 4 layers, 4 heads,
d_ff 384), batch 12, where the attention and per-op costs weigh most in a step.

The reference has the same shapes and the same maths, written with ``nn.Embedding``, ``nn.Linear``,
``F.rms_norm``, ``F.silu``, ``F.scaled_dot_product_attention``, ``F.cross_entropy`` and
``torch.optim.AdamW(fused=True)``. The models are timed in interleaved rounds (one step of each per
round) so a change in machine load hits all of them alike; tokens/s comes from the median step time
(the best step is printed beside it: on a shared machine it is the least disturbed figure).
MFU = tokens/s x training FLOPs per token (lit_llm.flops) / a float32 matmul peak measured in this run.

    python -m benchmarks.bench_model [--shape base|small] [--rounds 8] [--warmup 2] [--batch-size N]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from benchmarks.timing import interleaved_times
from lit_llm.flops import estimate_flops_per_token
from lit_llm.losses import cross_entropy
from lit_llm.model import ModelConfig, TransformerLM, default_d_ff
from lit_llm.optim import AdamW

BASE = dict(
    vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344, rope_theta=1e4
)
# configs/experiment/ablation_base.yaml's model, with its default (SwiGLU) feed-forward width
SMALL = dict(
    vocab_size=256,
    context_length=64,
    d_model=128,
    num_layers=4,
    num_heads=4,
    rope_theta=1e4,
    d_ff=default_d_ff(128, "swiglu"),
)
SHAPES = {"base": (BASE, 8), "small": (SMALL, 12)}  # config, default batch size


class _RefRoPE(nn.Module):
    """RoPE as Llama's reference code writes it: adjacent pairs as complex numbers times e^{i angle}.

    Under ``torch.compile`` the same rotation in real arithmetic (as HF's Llama writes it, and as ours
    does there): Inductor generates no code for complex ops, and a reference left falling back to eager
    kernels would flatter our compiled figures."""

    def __init__(self, head_dim: int, max_seq_len: int, theta: float) -> None:
        super().__init__()
        inv_freq = theta ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.outer(torch.arange(max_seq_len, dtype=torch.float64), inv_freq)
        self.register_buffer("freqs_cis", torch.polar(torch.ones_like(angles), angles).to(torch.complex64))
        self.register_buffer("cos", angles.cos().float())  # (max_seq_len, head_dim / 2)
        self.register_buffer("sin", angles.sin().float())

    def forward(self, x: Tensor) -> Tensor:  # (b, h, s, d)
        pairs = x.reshape(*x.shape[:-1], -1, 2)
        if torch.compiler.is_compiling():
            a, b = pairs.unbind(-1)
            cos, sin = self.cos[: x.shape[-2]], self.sin[: x.shape[-2]]
            return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)
        return torch.view_as_real(torch.view_as_complex(pairs) * self.freqs_cis[: x.shape[-2]]).flatten(-2)


class _RefBlock(nn.Module):
    def __init__(self, d: int, heads: int, d_ff: int, rope: _RefRoPE) -> None:
        super().__init__()
        self.heads, self.rope = heads, rope
        self.ln1, self.ln2 = nn.Parameter(torch.ones(d)), nn.Parameter(torch.ones(d))
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        self.w1, self.w3 = nn.Linear(d, d_ff, bias=False), nn.Linear(d, d_ff, bias=False)
        self.w2 = nn.Linear(d_ff, d, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        b, s, d = x.shape
        h = F.rms_norm(x, (d,), self.ln1, 1e-5)
        q, k, v = (proj(h).view(b, s, self.heads, -1).transpose(1, 2) for proj in (self.q, self.k, self.v))
        a = F.scaled_dot_product_attention(self.rope(q), self.rope(k), v, is_causal=True)
        x = x + self.o(a.transpose(1, 2).reshape(b, s, d))
        h = F.rms_norm(x, (d,), self.ln2, 1e-5)
        return x + self.w2(F.silu(self.w1(h)) * self.w3(h))


class ReferenceLM(nn.Module):
    """The same architecture written with PyTorch's built-in modules and kernels."""

    def __init__(self, vocab_size, context_length, d_model, num_layers, num_heads, d_ff, rope_theta) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab_size, d_model)
        rope = _RefRoPE(d_model // num_heads, context_length, rope_theta)
        self.layers = nn.ModuleList(_RefBlock(d_model, num_heads, d_ff, rope) for _ in range(num_layers))
        self.ln_final = nn.Parameter(torch.ones(d_model))
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def forward(self, ids: Tensor) -> Tensor:
        x = self.emb(ids)
        for layer in self.layers:
            x = layer(x)
        return self.head(F.rms_norm(x, (x.shape[-1],), self.ln_final, 1e-5))


@torch.no_grad()
def check_same_function(ours: TransformerLM, ref: ReferenceLM, ids: Tensor) -> float:
    """Copy our weights into the reference and return the largest logit difference: the two must be
    the same model, or the comparison means nothing."""
    ref.emb.weight.copy_(ours.token_embeddings.weight)
    ref.head.weight.copy_(ours.lm_head.weight)
    ref.ln_final.copy_(ours.ln_final.weight)
    for mine, theirs in zip(ours.layers, ref.layers, strict=True):
        theirs.ln1.copy_(mine.ln1.weight)
        theirs.ln2.copy_(mine.ln2.weight)
        for a, b in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v"), ("output_proj", "o")):
            getattr(theirs, b).weight.copy_(getattr(mine.attn, a).weight)
        for name in ("w1", "w2", "w3"):
            getattr(theirs, name).weight.copy_(getattr(mine.ffn, name).weight)
    return (ours(ids) - ref(ids)).abs().max().item()


def matmul_peak_flops(n: int = 2048, reps: int = 10) -> float:
    """Best observed float32 GEMM throughput (FLOP/s) on square n x n matrices."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn, x: Tensor, y: Tensor):
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()

    return step


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8, help="timed steps per model (interleaved)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="base")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 (base), 12 (small)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.2f}"
    )
    shape, default_batch = SHAPES[args.shape]
    args.batch_size = args.batch_size or default_batch
    print(f"--shape {args.shape}: config {shape}, batch {args.batch_size}, float32")
    torch.manual_seed(0)
    cfg = ModelConfig(**shape)
    x = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.context_length))
    y = torch.randint(0, cfg.vocab_size, (args.batch_size, cfg.context_length))
    lr, wd = 1e-3, 0.1

    steps = {}
    for impl in ("naive", "sdpa"):
        ours = TransformerLM.from_config(ModelConfig(**shape, attn_impl=impl))
        opt = AdamW(ours.parameters(), lr=lr, weight_decay=wd)
        steps[f"ours ({impl})"] = make_step(ours, opt, cross_entropy, x, y)
    ref = ReferenceLM(**shape)
    print(f"max |logits ours - reference| with shared weights: {check_same_function(ours, ref, x[:2]):.1e}")
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=lr, weight_decay=wd, fused=True)

    def ref_loss(logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    steps["reference"] = make_step(ref, ref_opt, ref_loss, x, y)

    peak_before = matmul_peak_flops()
    for step in steps.values():
        for _ in range(args.warmup):
            step()
    times = interleaved_times(steps, args.rounds)
    peak = max(peak_before, matmul_peak_flops())  # the best of before and after the timed steps
    flops_per_token = estimate_flops_per_token(cfg)
    print(f"matmul peak {peak / 1e9:.1f} GFLOP/s; {flops_per_token / 1e6:.1f} MFLOP per token (training)")

    tokens = args.batch_size * cfg.context_length
    median = {name: tokens / statistics.median(ts) for name, ts in times.items()}
    best = {name: tokens / min(ts) for name, ts in times.items()}
    print(f"{'model':<14}{'tokens/s':>10}{'ratio':>8}{'MFU':>8}   (best step: tokens/s, ratio)")
    for name, value in median.items():
        ratio, mfu = value / median["reference"], value * flops_per_token / peak
        print(
            f"{name:<14}{value:>10.0f}{ratio:>8.3f}{mfu:>8.1%}"
            f"   {best[name]:>8.0f}{best[name] / best['reference']:>7.3f}"
        )
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
