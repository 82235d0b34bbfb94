"""Each layer equals its PyTorch twin; gradients checked in float64; RoPE's relative-position property."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lit_llm.model import (
    Embedding,
    Linear,
    RMSNorm,
    RotaryEmbedding,
    SiLUFeedForward,
    SwiGLU,
    silu,
    silu_gate,
    softmax,
)

pytestmark = pytest.mark.usefixtures("seeded_single_thread")


def test_linear_matches_f_linear_and_its_gradients():
    layer = Linear(24, 40)
    x = torch.randn(3, 5, 24, requires_grad=True)
    y = layer(x)
    ref = F.linear(x, layer.weight)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, layer.weight), g)
    theirs = torch.autograd.grad(ref, (x, layer.weight), g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_linear_init_is_truncated_normal_with_glorot_std():
    layer = Linear(300, 500)
    std = math.sqrt(2 / (300 + 500))
    w = layer.weight.detach()
    assert w.shape == (500, 300)
    assert w.abs().max() <= 3 * std + 1e-6
    # truncation at 3 std shrinks the std by ~1.4%; 150k samples pin it far tighter than 5%
    assert abs(w.std().item() / std - 1) < 0.05
    assert abs(w.mean().item()) < 0.05 * std


def test_embedding_matches_f_embedding():
    emb = Embedding(50, 16)
    ids = torch.randint(0, 50, (4, 7))
    torch.testing.assert_close(emb(ids), F.embedding(ids, emb.weight))
    out = emb(ids)
    g = torch.randn_like(out)
    (ours,) = torch.autograd.grad(out, emb.weight, g)
    (theirs,) = torch.autograd.grad(F.embedding(ids, emb.weight), emb.weight, g)
    torch.testing.assert_close(ours, theirs)
    w = emb.weight.detach()
    assert w.abs().max() <= 3.0 and 0.9 < w.std().item() < 1.05


def test_rmsnorm_matches_f_rms_norm():
    norm = RMSNorm(32, eps=1e-5)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32))
    x = torch.randn(2, 3, 32, requires_grad=True)
    y = norm(x)
    ref = F.rms_norm(x, (32,), norm.weight, 1e-5)
    torch.testing.assert_close(y, ref)
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, norm.weight), g)
    theirs = torch.autograd.grad(ref, (x, norm.weight), g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b)


def test_rmsnorm_computes_in_float32_and_returns_input_dtype():
    norm = RMSNorm(64)
    x = (torch.randn(4, 64) * 30).to(torch.bfloat16)
    y = norm(x)
    assert y.dtype == torch.bfloat16
    # Computed in float32 and rounded once: within half a bf16 ulp (<= 2^-8 relative) of the float32
    # reference, plus slack for float32 rounding (F.rms_norm is another kernel, so the two float32
    # results, and hence their bf16 roundings, may differ in the last bit). Computing in bf16 misses
    # this bound on dozens of the 256 entries.
    expected = F.rms_norm(x.float(), (64,), norm.weight, 1e-5)
    torch.testing.assert_close(y.float(), expected, atol=0, rtol=2**-8 + 1e-5)


def test_silu_matches_f_silu_with_gradient():
    x = (torch.randn(1000) * 6).requires_grad_()
    torch.testing.assert_close(silu(x), F.silu(x))
    g = torch.randn(1000)
    (ours,) = torch.autograd.grad(silu(x), x, g)
    (theirs,) = torch.autograd.grad(F.silu(x), x, g)
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("dim", [-1, 0, 1])
def test_softmax_matches_torch_softmax(dim):
    x = torch.randn(4, 5, 6, requires_grad=True)
    torch.testing.assert_close(softmax(x, dim), torch.softmax(x, dim))
    g = torch.randn(4, 5, 6)
    (ours,) = torch.autograd.grad(softmax(x, dim), x, g)
    (theirs,) = torch.autograd.grad(torch.softmax(x, dim), x, g)
    torch.testing.assert_close(ours, theirs)


def test_softmax_is_stable_for_huge_logits_and_minus_inf():
    x = torch.tensor([[1e4, 1e4 - 1.0, -1e4], [0.0, float("-inf"), 1.0]])
    y = softmax(x, -1)
    assert torch.isfinite(y).all()
    torch.testing.assert_close(y, torch.softmax(x, -1))
    assert y[1, 1] == 0


def test_gradcheck_float64():
    kw = dict(dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, 4, 8, **kw)
    assert torch.autograd.gradcheck(lambda t: softmax(t, -1), (x,))
    assert torch.autograd.gradcheck(lambda t: softmax(t, 1), (x,))
    assert torch.autograd.gradcheck(silu, (x,))
    norm = RMSNorm(8, dtype=torch.float64)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(8, dtype=torch.float64))
    # gradcheck perturbs its inputs in place, so passing norm.weight checks the weight's gradient too
    assert torch.autograd.gradcheck(lambda t, w: norm(t), (x, norm.weight))
    rope = RotaryEmbedding(10000.0, 8, 16).double()
    pos = torch.tensor([0, 3, 7, 15])
    assert torch.autograd.gradcheck(lambda t: rope(t, pos), (x,))


def test_swiglu_and_silu_ffn_match_their_formulas():
    ffn = SwiGLU(16, 48)
    x = torch.randn(2, 5, 16)
    expected = F.linear(F.silu(F.linear(x, ffn.w1.weight)) * F.linear(x, ffn.w3.weight), ffn.w2.weight)
    torch.testing.assert_close(ffn(x), expected)
    plain = SiLUFeedForward(16, 64)
    torch.testing.assert_close(plain(x), F.linear(F.silu(F.linear(x, plain.w1.weight)), plain.w2.weight))
    assert {n for n, _ in ffn.named_parameters()} == {"w1.weight", "w2.weight", "w3.weight"}


def _rope_reference(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Independent RoPE from the paper's definition: a block-diagonal matrix of 2x2 rotations per position,
    built in float64 with Python's math, applied as a matrix product."""
    d = x.shape[-1]
    flat_positions = positions.reshape(-1).tolist()
    matrices = torch.zeros(len(flat_positions), d, d, dtype=torch.float64)
    for n, pos in enumerate(flat_positions):
        for i in range(d // 2):
            angle = pos * theta ** (-2 * i / d)
            c, s = math.cos(angle), math.sin(angle)
            matrices[n, 2 * i : 2 * i + 2, 2 * i : 2 * i + 2] = torch.tensor([[c, -s], [s, c]])
    rot = matrices.view(*positions.shape, d, d)  # (..., seq, d, d)
    return (rot @ x.double().unsqueeze(-1)).squeeze(-1).float()


def test_rope_matches_rotation_matrices_with_any_leading_dims():
    rope = RotaryEmbedding(10000.0, 16, 64)
    x = torch.randn(2, 3, 10, 16)
    positions = torch.randint(0, 64, (10,))
    torch.testing.assert_close(
        rope(x, positions), _rope_reference(x, positions, 10000.0), atol=1e-5, rtol=1e-5
    )
    batched = torch.randint(0, 64, (2, 1, 10))  # per-batch positions, broadcast over heads
    torch.testing.assert_close(rope(x, batched), _rope_reference(x, batched, 10000.0), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rope(x), rope(x, torch.arange(10)))  # None means 0..seq-1
    assert "rotation" not in rope.state_dict()  # derived, non-persistent


def test_rope_accepts_bf16_and_odd_strides():
    rope = RotaryEmbedding(10000.0, 16, 32)
    x = torch.randn(2, 10, 17)[..., :16]  # odd row stride: (real, imag) pairs not aligned for a complex view
    torch.testing.assert_close(rope(x), rope(x.contiguous()))
    low = rope(x.to(torch.bfloat16))
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), rope(x), atol=0.05, rtol=0.02)


def test_rope_dot_product_depends_only_on_position_offset():
    rope = RotaryEmbedding(10000.0, 32, 128)
    q, k = torch.randn(32), torch.randn(32)

    def score(m: int, n: int) -> float:
        qm = rope(q[None, :], torch.tensor([m]))
        kn = rope(k[None, :], torch.tensor([n]))
        return (qm * kn).sum().item()

    for offset in (0, 1, 5, 17):
        values = [score(m + offset, m) for m in (0, 3, 40, 100)]
        assert max(values) - min(values) < 1e-4, (offset, values)
    assert abs(score(5, 0) - score(0, 0)) > 1e-3  # and it does change with the offset


def test_rope_rejects_odd_dim():
    with pytest.raises(ValueError, match="d_k=7"):
        RotaryEmbedding(10000.0, 7, 8)


def test_silu_gate_matches_silu_times_gate_with_gradients():
    a = (torch.randn(64, 40) * 6).requires_grad_()
    b = torch.randn(64, 40, requires_grad=True)
    ours, ref = silu_gate(a, b), F.silu(a) * b
    torch.testing.assert_close(ours, ref)
    g = torch.randn(64, 40)
    grads = zip(torch.autograd.grad(ours, (a, b), g), torch.autograd.grad(ref, (a, b), g), strict=True)
    for mine, theirs in grads:
        torch.testing.assert_close(mine, theirs)
    kw = dict(dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(silu_gate, (torch.randn(3, 7, **kw), torch.randn(3, 7, **kw)))


def test_rope_of_a_bfloat16_model_keeps_float32_angles():
    """``.to(torch.bfloat16)`` casts every floating buffer; RoPE's table must still hold float32
    angles, or positions 100+ would be rotated to the wrong place."""
    rope = RotaryEmbedding(10000.0, 16, 512)
    x = torch.randn(3, 512, 16)
    expected = rope(x).to(torch.bfloat16).float()
    rope_bf16 = RotaryEmbedding(10000.0, 16, 512).to(torch.bfloat16)
    got = rope_bf16(x.to(torch.bfloat16)).float()
    # the input's own bf16 rounding and one bf16 rounding of the output: a few bf16 ulps
    torch.testing.assert_close(got, expected, atol=0.05, rtol=0.02)
