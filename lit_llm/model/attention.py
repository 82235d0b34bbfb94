"""Scaled dot-product attention and causal multi-head self-attention."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_llm.model.layers import (
    Linear,
    RotaryEmbedding,
    keep_mask,
    matmul_column_blocks,
    softmax,
    use_column_blocks,
)

# Scores are materialised this many (query, key) entries at a time (8 MB in float32): a block stays in
# cache, and the allocator recycles it, where one (batch, heads, seq, seq) tensor would be fresh pages
# from the OS on every call (on CPU, page faults cost more than the arithmetic on them).
_BLOCK_ELEMENTS = 2**21


# exp() is ~50x slower on CPU for inputs far below -87 (results that underflow, -inf included) than for
# ordinary ones. Exponents are clamped here first: e^-80 ~ 2e-35 is already nothing next to the row
# maximum's e^0 = 1 in float32, and forbidden entries are then zeroed exactly by the mask.
_MIN_EXPONENT = -80.0

# Query rows per block in causal self-attention (see MultiHeadSelfAttention._causal_attention).
_CAUSAL_QUERY_BLOCK = 128


class _Attention(torch.autograd.Function):
    """Attention over 3-D blocks with a hand-written backward.

    Forward: S = c Q K^T + bias (c = 1/sqrt(d_k); bias -inf where forbidden),
    E = exp(S - rowmax(S)) (zero where forbidden), l = rowsum(E), O = (E V) / l. Dividing the thin
    (queries, d_v) output by l rather than E spares a pass over the (queries, keys) matrix; the same
    trick carries into backward, with P = E / l the probabilities:
        dV = P^T dO = E^T (dO / l)
        dP = dO V^T,  dS = P * (dP - D)  where D = rowsum(dP * P) = rowsum(dO * O)  (cheap: (queries, 1))
        dQ = c dS K,  dK = c dS^T Q
    with every c / l moved onto the thin (queries, d) operands. The first GEMM does the scaling and
    adds the bias itself (``baddbmm``: S = bias + c Q K^T in one call, not a scaled copy of Q and a
    pass over the scores to add the bias). With that, and a single block taking no split, slice or
    concatenation (each a copy in forward or backward), causal attention at the ablation_base size
    (batch 12, context 64, 4 heads of 32; forward and backward, 2 threads) went from 3.6-4.0 ms to
    2.7-3.1 ms; ``F.scaled_dot_product_attention``'s fused kernel took 2.6-3.5 ms in the same runs.
    """

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, v: Tensor, bias: Tensor | None, keep: Tensor | None) -> Tensor:
        # q (n, queries, d_k), k (n, keys, d_k), v (n, keys, d_v); bias (-inf / 0) and keep (0 / 1)
        # broadcastable to (n, queries, keys)
        scale = 1.0 / math.sqrt(q.shape[-1])
        k_t = k.transpose(-2, -1)
        if bias is None:  # beta=0: the input is ignored, only its shape counts (out of place, as
            # under autocast it must be: an in-place GEMM would not be cast to bfloat16)
            bias, beta = q.new_empty(()).expand(q.shape[0], q.shape[1], k.shape[1]), 0.0
        else:  # the row max below must come from allowed entries only
            beta = 1.0
        e = torch.baddbmm(bias, q, k_t, beta=beta, alpha=scale)  # (n, queries, keys) scores
        e.sub_(e.amax(dim=-1, keepdim=True)).clamp_(min=_MIN_EXPONENT).exp_()  # <= 1: no overflow
        if keep is not None:
            e.mul_(keep)
        row_sum = e.sum(dim=-1, keepdim=True)  # (n, queries, 1)
        out = torch.bmm(e, v).div_(row_sum)  # (n, queries, d_v)
        ctx.save_for_backward(q, k, v, e, row_sum, out)
        return out

    @staticmethod
    def backward(ctx, d_out: Tensor) -> tuple[Tensor, Tensor, Tensor, None, None]:
        q, k, v, e, row_sum, out = ctx.saved_tensors
        d_v = torch.bmm(e.transpose(-2, -1), d_out / row_sum)
        d_p = torch.bmm(d_out, v.transpose(-2, -1))  # (n, queries, keys)
        d_s = d_p.sub_((d_out * out).sum(dim=-1, keepdim=True)).mul_(e)  # = l * dS
        scale_over_sum = row_sum.reciprocal().mul_(1.0 / math.sqrt(q.shape[-1]))  # c / l: (n, queries, 1)
        d_q = torch.bmm(d_s, k).mul_(scale_over_sum)
        d_k = torch.bmm(d_s.transpose(-2, -1), q * scale_over_sum)
        return d_q, d_k, d_v, None, None


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """softmax(q k^T / sqrt(d_k)) v, from scratch.

    q: (..., queries, d_k), k: (..., keys, d_k), v: (..., keys, d_v); leading dims broadcast.
    mask: bool, broadcastable to (..., queries, keys); True = may attend. Returns (..., queries, d_v).
    A query row with no True entry has no defined output (NaN), as in ``F.scaled_dot_product_attention``.
    The leading dims are processed in blocks of about ``_BLOCK_ELEMENTS`` scores (see above).
    """
    queries, keys, d_v = q.shape[-2], k.shape[-2], v.shape[-1]
    lead = torch.broadcast_shapes(q.shape[:-2], k.shape[:-2], v.shape[:-2])
    q3 = q.expand(*lead, *q.shape[-2:]).reshape(-1, queries, q.shape[-1])  # (n, queries, d_k)
    k3 = k.expand(*lead, *k.shape[-2:]).reshape(-1, keys, k.shape[-1])
    v3 = v.expand(*lead, *v.shape[-2:]).reshape(-1, keys, d_v)
    n = q3.shape[0]
    bias = keep = None
    if mask is not None:
        full = (*lead, queries, keys)  # stride-0 views where the mask broadcasts
        keep = mask.to(q3.dtype).expand(full).reshape(n, queries, keys)
        bias = torch.zeros_like(mask, dtype=q3.dtype).masked_fill_(~mask, float("-inf"))
        bias = bias.expand(full).reshape(n, queries, keys)
    rows = max(1, _BLOCK_ELEMENTS // max(1, queries * keys))  # leading-dim slices per block
    if n <= rows:  # one block (small batches, short contexts): no split, whose backward would copy
        return _Attention.apply(q3, k3, v3, bias, keep).view(*lead, queries, d_v)
    # split (not slicing): its backward concatenates the blocks' gradients instead of zero-filling a
    # full-size gradient per block.
    q_blocks, k_blocks, v_blocks = (t.split(rows) for t in (q3, k3, v3))
    bias_blocks = bias.split(rows) if bias is not None else [None] * len(q_blocks)
    keep_blocks = keep.split(rows) if keep is not None else [None] * len(q_blocks)
    blocks = [
        _Attention.apply(*args)
        for args in zip(q_blocks, k_blocks, v_blocks, bias_blocks, keep_blocks, strict=True)
    ]
    return torch.cat(blocks).view(*lead, queries, d_v)


class KVCache:
    """One attention layer's keys and values for the tokens seen so far, for generation.

    Buffers of (batch, heads, max_len, head_dim) are allocated once and written in place, so a decoding
    step allocates nothing for the cache. Keys are stored already rotated by RoPE at their absolute
    positions: a key never moves, so it is rotated once, when it is made.
    """

    def __init__(
        self,
        batch_size: int,
        num_heads: int,
        max_len: int,
        head_dim: int,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        # Uninitialised: only the first ``length`` positions are ever read, and zeroing fresh memory
        # would fault in every page before the first step instead of as the cache fills.
        self.k = torch.empty(batch_size, num_heads, max_len, head_dim, device=device, dtype=dtype)
        self.v = torch.empty_like(self.k)
        self.length = 0  # tokens stored; the next token's position

    @property
    def batch_size(self) -> int:
        return self.k.shape[0]

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def append(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store k, v (batch or 1, heads, seq, head_dim) after the tokens already held; return views of
        every stored key and value (batch, heads, length, head_dim). A batch of 1 (a prompt shared by
        every sample) is written into every row."""
        start, end = self.length, self.length + k.shape[-2]
        if end > self.max_len:
            raise ValueError(
                f"KV cache full: {start} tokens held, {k.shape[-2]} more exceed max_len={self.max_len}"
            )
        self.k[:, :, start:end].copy_(k)
        self.v[:, :, start:end].copy_(v)
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def reset(self) -> None:
        """Forget the stored tokens (the buffers are reused)."""
        self.length = 0


def _masked_softmax(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """softmax(q k^T) over the keys ``mask`` allows (False: -inf), with our softmax, in float32 whatever
    q's dtype (under bf16 autocast the scores come out bfloat16; fused kernels also keep them float32).
    q (..., queries, head_dim), already scaled by 1/sqrt(d); k (..., keys, head_dim); mask (queries, keys)
    -> (..., queries, keys). Differentiable: the in-place fill is on the scores, which matmul's backward
    does not need."""
    scores = torch.matmul(q, k.transpose(-2, -1)).float()
    return softmax(scores.masked_fill_(~mask, float("-inf")), dim=-1)


class MultiHeadSelfAttention(nn.Module):
    """Causal multi-head self-attention with optional RoPE on queries and keys.

    ``attn_impl="naive"`` runs our ``scaled_dot_product_attention`` above, one block of queries at a
    time, with causal masks sliced from a buffer built once; ``"sdpa"`` calls
    ``F.scaled_dot_product_attention(is_causal=True)``, whose fused kernel never materialises the score
    matrix. Both give the same result to float32 rounding.

    Positions are explicit (``token_positions``) and RoPE is applied to q and k separately, so a key/value
    cache for generation can rotate new queries at their true positions and attend over stored keys.
    """

    # Linears that read the same input, and the attribute that may hold their weights side by side,
    # ``column_blocks`` of (d_model, 3 d_model), for one GEMM instead of three: set only while decoding, by
    # ``lit_llm.generate.decoding_layout`` (None otherwise: training always uses the Parameters).
    fusable_projections = {"fused_qkv": ("q_proj", "k_proj", "v_proj")}

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        max_seq_len: int | None = None,
        theta: float | None = None,
        *,
        attn_impl: str = "sdpa",
        dropout: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout={dropout!r}: expected a probability in [0, 1)")
        if d_model % num_heads != 0:
            raise ValueError(f"d_model={d_model} must be a multiple of num_heads={num_heads}")
        if attn_impl not in ("naive", "sdpa"):
            raise ValueError(f"attn_impl={attn_impl!r}: expected 'naive' or 'sdpa'")
        if theta is not None and max_seq_len is None:
            raise ValueError("RoPE (theta given) needs max_seq_len to size its cos/sin tables")
        self.d_model = d_model
        self.num_heads = num_heads
        self.head_dim = d_model // num_heads
        self.attn_impl = attn_impl
        self.dropout = float(dropout)  # on the attention weights, in training only
        self.q_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.k_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.v_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.output_proj = Linear(d_model, d_model, device=device, dtype=dtype)
        self.fused_qkv: Tensor | None = None  # see `fusable_projections`
        self.rope = (
            RotaryEmbedding(theta, self.head_dim, max_seq_len, device=device) if theta is not None else None
        )
        # Lower-triangular "may attend" mask, built once and sliced per call. Non-persistent: derived data.
        self.register_buffer("causal_mask", self._build_mask(max_seq_len or 0, device), persistent=False)

    @staticmethod
    def _build_mask(size: int, device: torch.device | str | None) -> Tensor:
        return torch.ones(size, size, dtype=torch.bool, device=device).tril()

    def _mask(self, seq: int) -> Tensor:
        """(seq, seq) causal mask: a slice of the buffer, which grows (once) only when max_seq_len was not
        given or is exceeded."""
        if seq > self.causal_mask.shape[0]:
            self.causal_mask = self._build_mask(seq, self.causal_mask.device)
        return self.causal_mask[:seq, :seq]

    def _split_heads(self, x: Tensor) -> Tensor:
        # (..., seq, d_model) -> (..., heads, seq, head_dim)
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(-3, -2)

    def forward(
        self, x: Tensor, token_positions: Tensor | None = None, kv_cache: KVCache | None = None
    ) -> Tensor:
        """x: (..., seq, d_model); token_positions: (..., seq) ints or None for 0..seq-1.

        With ``kv_cache`` (generation), x (batch, seq, d_model) holds the tokens that follow the
        ``kv_cache.length`` tokens already cached; their positions default to length..length+seq-1.
        """
        if kv_cache is not None:
            return self._forward_cached(x, token_positions, kv_cache)
        q, k, v = self._queries_keys_values(x, token_positions)  # (..., heads, seq, head_dim) each
        p_drop = self.dropout if self.training else 0.0
        if p_drop > 0.0 and (self.attn_impl == "naive" or q.device.type == "cpu"):
            # On a CPU, F.scaled_dot_product_attention has no fused kernel with dropout: it falls back
            # to its unfused reference path. With ours (and the cheaper masks), dropout 0.15 at context
            # 256, 4 x 256, batch 16, bf16 autocast costs +0.13 s on a 0.42 s step instead of +0.35 s on
            # 0.34 s (experiments/README.md, study 5). On a GPU its fused kernels do dropout themselves.
            out = self._dropout_attention(q, k, v, p_drop)
        elif self.attn_impl == "sdpa":
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p_drop)
        else:
            out = self._causal_attention(q, k, v)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))  # (..., seq, d_model)

    def _dropout_attention(self, q: Tensor, k: Tensor, v: Tensor, p_drop: float) -> Tensor:
        """Our attention with dropout on its weights: softmax(q k^T / sqrt(d)) under the causal mask,
        then dropout, then times v. Composed from our softmax Function and autograd rather than
        ``_Attention``, whose hand-written backward assumes the undropped weights; used only while
        training with ``dropout`` > 0. q, k, v: (..., heads, seq, head_dim) -> (..., heads, seq, head_dim).

        The (seq, seq) weights are the big tensors here, so every pass over them counts. As in
        ``_causal_attention``, query blocks skip the all-masked scores (a quarter of them at seq 256);
        1/sqrt(d) is applied to q, and dropout's 1/(1 - p) to the output (both head_dim wide, not seq);
        the weights are ``_masked_softmax``'s, shared with ``attention_probabilities``."""
        seq = q.shape[-2]
        q = q * (1.0 / math.sqrt(self.head_dim))
        mask = self._mask(seq)
        outs = []
        for a in range(0, seq, _CAUSAL_QUERY_BLOCK):
            b = min(a + _CAUSAL_QUERY_BLOCK, seq)
            probabilities = _masked_softmax(q[..., a:b, :], k[..., :b, :], mask[a:b, :b])  # (..., b - a, b)
            kept = probabilities * keep_mask(probabilities, p_drop)
            outs.append(torch.matmul(kept.to(v.dtype), v[..., :b, :]))
        return torch.cat(outs, dim=-2) * (1.0 / (1.0 - p_drop))  # (..., heads, seq, head_dim)

    def _queries_keys_values(
        self, x: Tensor, token_positions: Tensor | None, start: int = 0
    ) -> tuple[Tensor, Tensor, Tensor]:
        """q, k and v of ``x`` (..., seq, d_model), split into heads, q and k rotated at their positions
        (None: start..start+seq-1, a slice of the rotation table, no gather): (..., heads, seq,
        head_dim) each. While decoding, ``fused_qkv`` (set by ``generate.decoding_layout``) makes the
        three projections one GEMM: one read of the three weights instead of three calls."""
        if use_column_blocks(x, self.fused_qkv):  # decoding, as in Linear.forward
            q, k, v = matmul_column_blocks(x, self.fused_qkv, 3 * self.d_model).split(self.d_model, dim=-1)
        else:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        q, k, v = self._split_heads(q), self._split_heads(k), self._split_heads(v)
        if self.rope is not None:
            pos = None if token_positions is None else token_positions.unsqueeze(-2)  # (..., 1, seq)
            q = self.rope(q, pos, start)
            k = self.rope(k, pos, start)
        return q, k, v

    @torch.no_grad()
    def attention_probabilities(self, x: Tensor, token_positions: Tensor | None = None) -> Tensor:
        """The attention weights this layer gives ``x`` (..., seq, d_model): softmax(q k^T / sqrt(d))
        under the causal mask, (..., heads, seq, seq), rows = query positions, each row summing to 1
        over the keys it may see and 0 beyond them.

        For looking inside the model (attention entropy, attention maps): neither the fused kernel nor
        our blocked training path keeps the whole matrix, so it is made here, in float32, with the same
        projections, rotation and mask as ``forward``."""
        q, k, _ = self._queries_keys_values(x, token_positions)  # (..., heads, seq, head_dim) each
        q = q.float() * (1.0 / math.sqrt(self.head_dim))
        return _masked_softmax(q, k.float(), self._mask(q.shape[-2]))

    def _forward_cached(self, x: Tensor, token_positions: Tensor | None, kv_cache: KVCache) -> Tensor:
        start, seq = kv_cache.length, x.shape[-2]
        if start > 0 and x.shape[0] != kv_cache.batch_size:
            raise ValueError(
                f"batch of {x.shape[0]} but the KV cache holds {kv_cache.batch_size} sequences "
                "(only the first chunk, before anything is cached, may be a shared batch of 1)"
            )
        q, k, v = self._queries_keys_values(x, token_positions, start)  # (batch, heads, seq, head_dim)
        keys, values = kv_cache.append(k, v)  # (batch, heads, start + seq, head_dim)
        if start == 0:
            # Nothing cached before: plain causal attention over this chunk (keeps a shared batch of 1).
            out = self._attend(q, k, v, None, causal=True)
        else:
            # Query i (position start + i) may see keys 0..start+i: rows of the causal buffer. A single
            # new token sees every key, so it needs no mask at all.
            mask = None if seq == 1 else self._mask(start + seq)[start:]
            out = self._attend(q, keys, values, mask, causal=False)
        return self.output_proj(out.transpose(-3, -2).flatten(-2))  # (batch, seq, d_model)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, *, causal: bool) -> Tensor:
        if self.attn_impl == "sdpa":
            return F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal and q.shape[-2] > 1
            )
        if causal:
            return self._causal_attention(q, k, v)
        return scaled_dot_product_attention(q, k, v, mask)

    def _causal_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Our attention under the causal mask, skipping the scores it would throw away.

        Queries [a, b) may only see keys [0, b): cutting the query axis into blocks of
        ``_CAUSAL_QUERY_BLOCK`` leaves the all-masked upper-right score blocks uncomputed: at seq 256,
        3/4 of the score matrix is computed, at seq 1024, 9/16 (smaller blocks save more work but cost
        more calls; 128 measured best on CPU).
        """
        seq = q.shape[-2]
        mask = self._mask(seq)
        if seq <= _CAUSAL_QUERY_BLOCK:  # one block: no slices (a slice's backward zero-fills a copy)
            return scaled_dot_product_attention(q, k, v, mask)
        outs = []
        for a in range(0, seq, _CAUSAL_QUERY_BLOCK):
            b = min(a + _CAUSAL_QUERY_BLOCK, seq)
            outs.append(
                scaled_dot_product_attention(q[..., a:b, :], k[..., :b, :], v[..., :b, :], mask[a:b, :b])
            )
        return torch.cat(outs, dim=-2)  # (..., heads, seq, head_dim)
