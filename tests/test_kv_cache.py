"""The KV cache: feeding a sequence in chunks through the cache gives the logits of one full forward
(RoPE at the right absolute positions, causal masking within a chunk), for every model variant, with a
shared batch-1 prompt broadcast into a batch; buffers are written in place; misuse fails clearly."""

from __future__ import annotations

import pytest
import torch

from lit_llm.model.attention import KVCache, MultiHeadSelfAttention
from tests.tiny_lm import one_thread, tiny_model  # noqa: F401  (autouse fixture)

VARIANTS = [
    {},
    {"attn_impl": "naive"},
    {"norm": "post"},
    {"norm": "none", "ffn": "silu"},
    {"position": "nope"},
    {"tie_embeddings": True, "rope_theta": 500.0},
]


@pytest.mark.parametrize(
    "variant", VARIANTS, ids=lambda v: ",".join(f"{k}={x}" for k, x in v.items()) or "base"
)
@pytest.mark.parametrize("chunks", [[16], [1] * 16, [5, 1, 1, 4, 5], [7, 9]])
def test_chunked_cached_forward_equals_full_forward(variant: dict, chunks: list[int]) -> None:
    model = tiny_model(**variant)
    tokens = torch.randint(0, 262, (3, 16), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        full = model(tokens)  # (3, 16, vocab)
        cache = model.new_kv_cache(3)
        outs, start = [], 0
        for size in chunks:
            outs.append(model(tokens[:, start : start + size], kv_cache=cache))
            start += size
    assert cache[0].length == 16
    torch.testing.assert_close(torch.cat(outs, dim=1), full, atol=2e-5, rtol=1e-5)


def test_shared_prompt_is_broadcast_into_every_row() -> None:
    model = tiny_model()
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, 262, (1, 6), generator=gen)
    continuations = torch.randint(0, 262, (4, 3), generator=gen)
    with torch.inference_mode():
        cache = model.new_kv_cache(4)
        first = model(prompt, kv_cache=cache, last_only=True)  # batch 1 in, 4 cached rows
        later = model(continuations, kv_cache=cache)
        full = model(torch.cat([prompt.expand(4, -1), continuations], dim=1))
    torch.testing.assert_close(first, full[:1, 5:6], atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(later, full[:, 6:], atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_impl", ["sdpa", "naive"])
def test_explicit_positions_are_used_for_rope(attn_impl: str) -> None:
    # RoPE makes q.k depend on positions only through their difference, so a chunk is only pinned down
    # relative to keys already cached. With positions 0..2 cached, the chunk at explicit positions 3..7
    # must give the full forward's rows 3..7 (float32 rounding apart); the same chunk claimed to sit at
    # 8..12 moves every query 5 further from the cached keys, which changes the scores, so it must differ.
    attn: MultiHeadSelfAttention = tiny_model(attn_impl=attn_impl).layers[0].attn
    x = torch.randn(2, 8, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        full = attn(x)  # positions 0..7, no cache
        cache = KVCache(2, 4, 16, 8)

        def chunk_after_prefix(positions: torch.Tensor) -> torch.Tensor:
            cache.reset()
            attn(x[:, :3], torch.arange(3), cache)  # cache positions 0..2
            return attn(x[:, 3:], positions, cache)

        right = chunk_after_prefix(torch.arange(3, 8))
        wrong = chunk_after_prefix(torch.arange(8, 13))
    torch.testing.assert_close(right, full[:, 3:], atol=1e-5, rtol=1e-5)
    # ~0.1 to 0.4 per row measured (outputs of magnitude ~1): far above rounding (~1e-7)
    assert (wrong - full[:, 3:]).abs().amax(dim=-1).min() > 1e-3


def test_cache_buffers_are_written_in_place() -> None:
    model = tiny_model()
    cache = model.new_kv_cache(2)
    pointers = [(c.k.data_ptr(), c.v.data_ptr()) for c in cache]
    with torch.inference_mode():
        model(torch.zeros(2, 4, dtype=torch.long), kv_cache=cache)
        for _ in range(5):
            model(torch.zeros(2, 1, dtype=torch.long), kv_cache=cache, last_only=True)
    assert [(c.k.data_ptr(), c.v.data_ptr()) for c in cache] == pointers
    assert all(c.length == 9 for c in cache)
    assert cache[0].k.shape == (2, 4, 16, 8)  # (batch, heads, context_length, head_dim)


def test_last_only_returns_the_last_position() -> None:
    model = tiny_model()
    tokens = torch.randint(0, 262, (2, 10), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        last, full = model(tokens, last_only=True), model(tokens)
    # A 1-row and a 10-row matmul may take different BLAS kernels: equal to rounding, not bit for bit.
    assert last.shape == (2, 1, 262)
    torch.testing.assert_close(last, full[:, -1:], atol=1e-5, rtol=1e-5)


def test_misuse_fails_with_one_clear_line() -> None:
    model = tiny_model()
    with torch.inference_mode():
        cache = model.new_kv_cache(2)
        model(torch.zeros(2, 12, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="12 cached \\+ 5 exceeds the model's context_length=16"):
            model(torch.zeros(2, 5, dtype=torch.long), kv_cache=cache)
        with pytest.raises(ValueError, match="batch of 3 but the KV cache holds 2"):
            model(torch.zeros(3, 1, dtype=torch.long), kv_cache=cache)
        small = KVCache(1, 4, 4, 8)
        small.append(torch.zeros(1, 4, 3, 8), torch.zeros(1, 4, 3, 8))
        with pytest.raises(ValueError, match="KV cache full: 3 tokens held, 2 more exceed max_len=4"):
            small.append(torch.zeros(1, 4, 2, 8), torch.zeros(1, 4, 2, 8))
