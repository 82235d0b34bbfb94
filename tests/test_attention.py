"""Attention equals F.scaled_dot_product_attention; MultiHeadSelfAttention equals a built-in twin."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import lit_llm.model.attention as attention_mod
from lit_llm.model import MultiHeadSelfAttention, RotaryEmbedding, scaled_dot_product_attention

pytestmark = pytest.mark.usefixtures("seeded_single_thread")


def _random_mask(*shape: int) -> torch.Tensor:
    mask = torch.rand(*shape) > 0.5
    mask[..., 0] = True  # every query may attend somewhere: a fully masked row has no defined output
    return mask


def _assert_same_with_grads(ours_fn, ref_fn, inputs, atol=1e-5, rtol=1e-5):
    ours = ours_fn(*inputs)
    ref = ref_fn(*inputs)
    torch.testing.assert_close(ours, ref, atol=atol, rtol=rtol)
    g = torch.randn_like(ours)
    grads_ours = torch.autograd.grad(ours, inputs, g)
    grads_ref = torch.autograd.grad(ref, inputs, g)
    for a, b in zip(grads_ours, grads_ref, strict=True):
        torch.testing.assert_close(a, b, atol=atol, rtol=rtol)


@pytest.mark.parametrize(
    ("lead", "mask_shape"),
    [
        ((3,), None),
        ((3,), "full"),
        ((2, 4), None),
        ((2, 4), "full"),
        ((2, 4), "broadcast"),  # (queries, keys) shared by every batch and head
    ],
)
def test_sdpa_matches_torch(lead, mask_shape):
    q = torch.randn(*lead, 7, 16, requires_grad=True)
    k = torch.randn(*lead, 9, 16, requires_grad=True)
    v = torch.randn(*lead, 9, 12, requires_grad=True)
    mask = {None: None, "full": _random_mask(*lead, 7, 9), "broadcast": _random_mask(7, 9)}[mask_shape]
    _assert_same_with_grads(
        lambda a, b, c: scaled_dot_product_attention(a, b, c, mask),
        lambda a, b, c: F.scaled_dot_product_attention(a, b, c, attn_mask=mask),
        (q, k, v),
    )


def test_sdpa_in_many_blocks_equals_one_block(monkeypatch):
    q, k, v = (torch.randn(3, 5, 8, 16, requires_grad=True) for _ in range(3))
    mask = _random_mask(3, 1, 8, 8)  # broadcast over the head dim
    ref = scaled_dot_product_attention(q, k, v, mask)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (q, k, v), g)
    monkeypatch.setattr(attention_mod, "_BLOCK_ELEMENTS", 2 * 64)  # two (8, 8) score matrices per block
    out = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, ref)
    for a, b in zip(torch.autograd.grad(out, (q, k, v), g), ref_grads, strict=True):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(
        out, F.scaled_dot_product_attention(q, k, v, attn_mask=mask), atol=1e-5, rtol=1e-5
    )


def test_sdpa_large_scores_are_stable():
    q = torch.randn(2, 6, 8) * 100
    k = torch.randn(2, 6, 8) * 100
    v = torch.randn(2, 6, 8)
    out = scaled_dot_product_attention(q, k, v)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, F.scaled_dot_product_attention(q, k, v), atol=1e-4, rtol=1e-4)


def test_sdpa_gradcheck_float64():
    q, k, v = (torch.randn(2, 5, 4, dtype=torch.float64, requires_grad=True) for _ in range(3))
    mask = _random_mask(5, 5)
    assert torch.autograd.gradcheck(lambda a, b, c: scaled_dot_product_attention(a, b, c, mask), (q, k, v))


def _reference_mha(
    mha: MultiHeadSelfAttention, x: torch.Tensor, positions: torch.Tensor | None
) -> torch.Tensor:
    """The same layer from built-ins: F.linear, F.scaled_dot_product_attention and a RoPE of our own
    (checked independently in test_layers)."""
    b, s, d = x.shape
    h = mha.num_heads

    def heads(w: torch.Tensor) -> torch.Tensor:
        return F.linear(x, w).view(b, s, h, d // h).transpose(1, 2)

    q, k, v = heads(mha.q_proj.weight), heads(mha.k_proj.weight), heads(mha.v_proj.weight)
    if mha.rope is not None:
        rope = RotaryEmbedding(mha.rope.theta, d // h, mha.rope.max_seq_len)
        pos = torch.arange(s) if positions is None else positions
        q, k = rope(q, pos), rope(k, pos)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.linear(out.transpose(1, 2).reshape(b, s, d), mha.output_proj.weight)


@pytest.mark.parametrize("attn_impl", ["naive", "sdpa"])
@pytest.mark.parametrize("rope", [True, False])
def test_mha_matches_builtin_reference(attn_impl, rope):
    mha = MultiHeadSelfAttention(32, 4, max_seq_len=16, theta=10000.0 if rope else None, attn_impl=attn_impl)
    x = torch.randn(2, 11, 32, requires_grad=True)
    positions = torch.arange(3, 14)  # an offset window, as a cache-less continuation would use
    torch.testing.assert_close(mha(x, positions), _reference_mha(mha, x, positions), atol=1e-5, rtol=1e-5)
    _assert_same_with_grads(lambda t: mha(t), lambda t: _reference_mha(mha, t, None), (x,))
    assert {n for n, _ in mha.named_parameters()} == {
        "q_proj.weight",
        "k_proj.weight",
        "v_proj.weight",
        "output_proj.weight",
    }


@pytest.mark.parametrize("query_block", [128, 8, 5])  # one block; even blocks; a ragged last block
def test_naive_and_sdpa_agree_to_1e5(monkeypatch, query_block):
    monkeypatch.setattr(attention_mod, "_CAUSAL_QUERY_BLOCK", query_block)
    naive = MultiHeadSelfAttention(64, 8, max_seq_len=32, theta=10000.0, attn_impl="naive")
    fused = MultiHeadSelfAttention(64, 8, max_seq_len=32, theta=10000.0, attn_impl="sdpa")
    fused.load_state_dict(naive.state_dict())
    x = torch.randn(3, 32, 64, requires_grad=True)
    _assert_same_with_grads(naive, fused, (x,))


def test_causal_mask_is_built_once_and_sliced():
    mha = MultiHeadSelfAttention(16, 2, max_seq_len=8, theta=10000.0, attn_impl="naive")
    buffer = mha.causal_mask
    for seq in (3, 8, 5):
        mha(torch.randn(1, seq, 16))
    assert mha.causal_mask is buffer  # never rebuilt
    assert "causal_mask" not in mha.state_dict()
    torch.testing.assert_close(mha._mask(4), torch.ones(4, 4, dtype=torch.bool).tril())


def test_mask_grows_once_without_max_seq_len():
    mha = MultiHeadSelfAttention(16, 2, attn_impl="naive")
    mha(torch.randn(1, 6, 16))
    grown = mha.causal_mask
    assert grown.shape == (6, 6)
    mha(torch.randn(1, 4, 16))
    assert mha.causal_mask is grown


def test_mha_rejects_bad_shapes():
    with pytest.raises(ValueError, match="num_heads=3"):
        MultiHeadSelfAttention(16, 3)
    with pytest.raises(ValueError, match="max_seq_len"):
        MultiHeadSelfAttention(16, 2, theta=10000.0)
    with pytest.raises(ValueError, match="attn_impl='flash'"):
        MultiHeadSelfAttention(16, 2, attn_impl="flash")
