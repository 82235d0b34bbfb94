"""The small building blocks of the transformer, written from scratch on plain tensor ops.

Each one is tested against its PyTorch twin (``F.linear``, ``F.embedding``, ``F.rms_norm``, ``F.silu``,
``torch.softmax``). ``RMSNorm``, ``softmax``, ``silu`` and SwiGLU's ``silu_gate`` carry a hand-written
backward (a ``torch.autograd.Function``):
autograd through their elementwise pieces would keep several full-size intermediates alive and make
extra passes over memory, which on a CPU costs as much as the arithmetic. The formulas in ``backward``
are the ones a student derives on paper.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn


def _trunc_normal_(weight: Tensor, std: float) -> Tensor:
    """Fill with N(0, std^2) cut at +-3 std: no early outlier weight dominates a dot product."""
    return nn.init.trunc_normal_(weight, mean=0.0, std=std, a=-3.0 * std, b=3.0 * std)


def column_blocks(weights: Sequence[Tensor], parts: int) -> Tensor:
    """The transposes of ``weights`` (each (out_i, in), as ``Linear`` stores them) side by side, W^T of
    shape (in, out = sum of out_i), with its columns cut into ``parts`` blocks (at most ``out``):
    (parts, in, ceil(out / parts)), contiguous, zero-padded at the end. The layout
    ``matmul_column_blocks`` reads.

    Why: decoding multiplies one row vector by each weight matrix, which only reads memory. MKL runs
    that one-row GEMM on one thread (~25-35 GB/s here, whatever the thread count), while ``torch.bmm``
    hands the blocks of a batch to different threads, each streaming its own contiguous block: on 2
    cores 1.5-2.4x faster for the TinyStories base model's matrices. Weights that read the same input
    (attention's q, k, v) side by side make one GEMM of several. Each block is written once, straight
    from the weights (fresh memory is page faults: a second pass would cost as much again).
    """
    inp = weights[0].shape[1]
    out = sum(w.shape[0] for w in weights)
    parts = max(1, min(parts, out))  # at most one block per column
    cols = -(-out // parts)  # ceil
    blocks = weights[0].new_empty(parts, inp, cols)
    for part in range(out // cols, parts):  # the padding: W^T's columns out .. parts * cols - 1
        blocks[part, :, max(out - part * cols, 0) :] = 0
    start = 0  # the column of W^T where the current weight begins
    for w in weights:
        end = start + w.shape[0]
        for part in range(start // cols, (end - 1) // cols + 1):  # the blocks this weight spans
            a, b = max(start, part * cols), min(end, (part + 1) * cols)
            blocks[part, :, a - part * cols : b - part * cols] = w[a - start : b - start].t()
        start = end
    return blocks


# Up to this many rows (tokens x samples) a GEMM reads weights more than it computes, and the blocks win
# (2 cores, base model: 1 row 1.4-2.4x, 8 rows 1.1-1.5x, 64 rows 1.0-1.1x); a 256-token prompt is
# compute-bound, and MKL's own threading of one GEMM is faster there (1.3-1.4x over the blocks).
BLOCK_ROWS = 64


def use_column_blocks(x: Tensor, blocks: Tensor | None) -> bool:
    """Whether a projection of ``x`` (..., in) should read its decoding copy ``blocks``: there is one
    (``generate.decoding_layout`` holds), autograd is off (a training forward meanwhile must reach the
    Parameters), and ``x`` has few rows (see ``BLOCK_ROWS``)."""
    return blocks is not None and not torch.is_grad_enabled() and x.numel() <= BLOCK_ROWS * x.shape[-1]


def matmul_column_blocks(x: Tensor, blocks: Tensor, out_features: int) -> Tensor:
    """``x @ W^T`` for x (..., in), with W^T held as ``column_blocks(W^T, parts)``: (..., out_features).
    Each output column is the same dot product as in ``x @ W^T``; only the GEMM's split differs."""
    parts, inp, cols = blocks.shape
    rows = x.reshape(1, -1, inp).expand(parts, -1, -1)  # (parts, M, in): every block reads every row
    y = torch.bmm(rows, blocks)  # (parts, M, cols), one block per thread
    y = y.transpose(0, 1).reshape(-1, parts * cols)  # (M, parts * cols): a view when M == 1
    return y[:, :out_features].reshape(*x.shape[:-1], out_features)


class Linear(nn.Module):
    """``y = x W^T`` without a bias; ``weight`` is (out_features, in_features) like ``nn.Linear``.

    The init std sqrt(2 / (fan_in + fan_out)) keeps activation and gradient variance roughly
    constant from layer to layer (Glorot's compromise between the two directions).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.out_features = out_features
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        # A copy of W^T for decoding, (parts, in, ceil(out / parts)) (``column_blocks``), set only
        # while ``lit_llm.generate.decoding_layout`` holds; None otherwise (training uses ``weight``).
        self.column_blocks: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _trunc_normal_(self.weight, math.sqrt(2.0 / (self.in_features + self.out_features)))

    def forward(self, x: Tensor) -> Tensor:
        if use_column_blocks(x, self.column_blocks):  # decoding: the same values, read faster
            return matmul_column_blocks(x, self.column_blocks, self.out_features)
        # (..., in) @ (in, out) -> (..., out). matmul folds the leading dims into one GEMM, and its
        # backward writes W's gradient straight in W's (out, in) layout: no transposed copies.
        return torch.matmul(x, self.weight.t())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


class Embedding(nn.Module):
    """A lookup table: row ``i`` of ``weight`` (num_embeddings, embedding_dim) is token ``i``'s vector."""

    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        _trunc_normal_(self.weight, 1.0)

    def forward(self, token_ids: Tensor) -> Tensor:
        # (...) int -> (..., embedding_dim). index_select on the flat ids has a cheap backward
        # (index_add of the rows) compared with advanced indexing's general scatter.
        rows = torch.index_select(self.weight, 0, token_ids.reshape(-1))
        return rows.view(*token_ids.shape, self.embedding_dim)

    def extra_repr(self) -> str:
        return f"num_embeddings={self.num_embeddings}, embedding_dim={self.embedding_dim}"


def _normalise(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """(x / rms(x), 1 / rms(x)) over the last dim: x_hat (..., d) and r (..., 1)."""
    # ||x||^2 / d = mean(x^2), computed by one reduction kernel; the rest is on (..., 1).
    inv_rms = torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_().div_(x.shape[-1]).add_(eps).rsqrt_()
    return x * inv_rms, inv_rms


def _needs_grad(*tensors: Tensor) -> bool:
    """Will autograd need a backward through an op on these? (Not under no_grad / inference_mode, nor
    for constants.) Where it will not, the ops below skip their autograd Function: its bookkeeping costs
    more than the arithmetic on the small tensors of one decoding step."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


class _RMSNorm(torch.autograd.Function):
    """y = x_hat * w with x_hat = x * r, r = 1 / sqrt(mean(x^2) + eps) per row (d features).

    Backward, with g = dy * w:
        dw = sum over rows of dy * x_hat
        dx = r * (g - x_hat * mean(g * x_hat))      (the second term: r depends on x too)
    and mean(g * x_hat) = (dy * x_hat) @ w / d reuses the product dw needs, as one matrix-vector
    product. Six passes over (rows, d) in all, where autograd through the forward's square, mean, rsqrt
    and two multiplies makes about twice as many (and ``F.rms_norm`` on CPU is such a composite too).
    """

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, eps: float) -> Tensor:
        # x (..., d) float32/64, weight (d,) same dtype
        x_hat, inv_rms = _normalise(x, eps)
        ctx.save_for_backward(x_hat, inv_rms, weight)
        return x_hat * weight

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor, None]:
        x_hat, inv_rms, weight = ctx.saved_tensors
        d = x_hat.shape[-1]
        dy_x_hat = dy * x_hat  # (..., d)
        d_weight = dy_x_hat.reshape(-1, d).sum(0)  # (d,)
        projection = torch.matmul(dy_x_hat, weight).unsqueeze_(-1)  # (..., 1) = d * mean(g * x_hat)
        d_x = torch.addcmul(dy * weight, x_hat, projection, value=-1.0 / d).mul_(inv_rms)
        return d_x, d_weight, None


class RMSNorm(nn.Module):
    """``x / rms(x) * weight`` over the last dim, computed in float32 and returned in the input dtype.

    float32 (at least: float64 stays float64) inside because the mean of squares of bf16/fp16
    activations loses too many bits. ``.to`` returns the tensor itself when the dtype already fits, so
    float32 models pay no copy. The arithmetic is ``_RMSNorm`` above, with its hand-written backward.
    """

    def __init__(
        self,
        d_model: int,
        eps: float = 1e-5,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model, device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        nn.init.ones_(self.weight)

    def forward(self, x: Tensor) -> Tensor:
        # (..., d_model) -> (..., d_model)
        compute = torch.promote_types(x.dtype, torch.float32)
        xf = x if x.dtype == compute else x.to(compute)
        weight = self.weight if self.weight.dtype == compute else self.weight.to(compute)
        if _needs_grad(xf, weight):
            y = _RMSNorm.apply(xf, weight, self.eps)
        else:
            y = _normalise(xf, self.eps)[0].mul_(weight)
        return y if y.dtype == x.dtype else y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"


class _Softmax(torch.autograd.Function):
    """y = exp(x - max) / sum(exp(x - max));  dx = y * (dy - sum(dy * y))."""

    @staticmethod
    def forward(ctx, x: Tensor, dim: int) -> Tensor:
        # Subtracting the max changes nothing mathematically and keeps exp() from overflowing.
        y = x - x.amax(dim=dim, keepdim=True)
        y.exp_()
        y.div_(y.sum(dim=dim, keepdim=True))
        ctx.dim = dim
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, None]:
        (y,) = ctx.saved_tensors
        dx = dy * y
        dx.sub_(y * dx.sum(dim=ctx.dim, keepdim=True))
        return dx, None


def softmax(x: Tensor, dim: int = -1) -> Tensor:
    """Numerically stable softmax along ``dim`` (finite for logits of +-1e4; -inf entries give 0)."""
    return _Softmax.apply(x, dim)


def keep_mask(x: Tensor, p: float) -> Tensor:
    """A bool mask shaped like ``x``, each element True (kept) with probability 1 - p.

    Each element gets a uniform 32-bit integer and is kept when it is at least p * 2**32 (shifted to
    the signed range), so it is kept with probability 1 - p to within 2**-32. The integers come as the
    two halves of random 64-bit words: torch's CPU generator makes one draw per element whatever its
    width, so this is half the draws of ``rand_like`` and about 3x faster than ``bernoulli_`` (which
    draws a double per element), measured on 1M elements."""
    n = x.numel()
    words = torch.randint(-(2**63), 2**63 - 1, ((n + 1) // 2,), dtype=torch.int64, device=x.device)
    halves = words.view(torch.int32)[:n].view(x.shape)  # uniform over the int32 range
    return halves >= round(p * 2**32) - 2**31


class _Dropout(torch.autograd.Function):
    """y = x * keep / (1 - p) with the bool mask saved for backward (a byte per element, not the four
    of a float mask): dy/dx is the same mask, scaled the same way."""

    @staticmethod
    def forward(ctx, x: Tensor, keep: Tensor, scale: float) -> Tensor:
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return x * keep * scale

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return grad * keep * ctx.scale, None, None


def dropout(x: Tensor, p: float, training: bool = True) -> Tensor:
    """Inverted dropout: each element is zeroed with probability ``p`` and the survivors are scaled by
    1 / (1 - p), so every element keeps its expected value and evaluation needs no rescaling. The
    identity (the same tensor, no copy) when not training or p == 0."""
    if not training or p == 0.0:
        return x
    return _Dropout.apply(x, keep_mask(x, p), 1.0 / (1.0 - p))


class Dropout(nn.Module):
    """``dropout`` as a layer: active in ``train()`` mode only."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout p={p!r}: expected a probability in [0, 1)")
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class _SiLU(torch.autograd.Function):
    """y = x * s with s = sigmoid(x);  dy/dx = s + x * s * (1 - s) = s * (1 + x * (1 - s))."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        s = torch.sigmoid(x)
        ctx.save_for_backward(x, s)
        return x * s

    @staticmethod
    def backward(ctx, dy: Tensor) -> Tensor:
        x, s = ctx.saved_tensors
        # x * (1 - s) as one fused op, then the rest in place: one temporary instead of five.
        return torch.addcmul(x, x, s, value=-1.0).add_(1.0).mul_(s).mul_(dy)


def silu(x: Tensor) -> Tensor:
    """SiLU (swish): ``x * sigmoid(x)``."""
    return _SiLU.apply(x)


class _SiLUGate(torch.autograd.Function):
    """y = silu(a) * b = (a s) b with s = sigmoid(a): SwiGLU's gate in one node.

    Backward: db = dy * (a s);  da = dy * b * s (1 + a (1 - s)) = dy * b * (s + a s (1 - s)).
    Keeping s and a s from the forward, the two gradients take four elementwise passes: the factor
    s + a s (1 - s) is ``lerp(s, 1, a s)`` (start + weight * (end - start)), one pass where add and
    addcmul took two (forward + backward of a 12x64x344 gate, near ablation_base's 12x64x384: 325-336
    -> 293-304 us; the base shape's 8x256x1344: 7.0 -> 6.1 ms). ``silu`` then a separate multiply
    would recompute the product in the multiply's backward and keep one more tensor.
    """

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor) -> Tensor:
        s = torch.sigmoid(a)
        silu_a = a * s
        ctx.save_for_backward(s, silu_a, b)
        return silu_a * b

    @staticmethod
    def backward(ctx, dy: Tensor) -> tuple[Tensor, Tensor]:
        s, silu_a, b = ctx.saved_tensors
        d_b = dy * silu_a
        d_a = torch.lerp(s, s.new_ones(()), silu_a).mul_(b).mul_(dy)
        return d_a, d_b


def silu_gate(a: Tensor, b: Tensor) -> Tensor:
    """``silu(a) * b`` (same shapes), with one hand-written backward for both inputs."""
    if _needs_grad(a, b):
        return _SiLUGate.apply(a, b)
    return torch.sigmoid(a).mul_(a).mul_(b)  # the forward's a * s * b, in place


class SwiGLU(nn.Module):
    """The gated feed-forward network ``w2(silu(w1 x) * w3 x)`` (Shazeer, 2020)."""

    # w1 and w3 read the same input: while decoding, ``lit_llm.generate.decoding_layout`` may set
    # ``fused_w13`` to their weights side by side, ``column_blocks`` of (d_model, 2 d_ff), for one GEMM
    # instead of two.
    fusable_projections = {"fused_w13": ("w1", "w3")}

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)
        self.w3 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.fused_w13: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        # (..., d_model) -> (..., d_ff) -> (..., d_model)
        if use_column_blocks(x, self.fused_w13):  # decoding, as in Linear
            a, b = matmul_column_blocks(x, self.fused_w13, 2 * self.w1.out_features).chunk(2, dim=-1)
            return self.w2(silu_gate(a, b))
        return self.w2(silu_gate(self.w1(x), self.w3(x)))


class SiLUFeedForward(nn.Module):
    """The ungated ablation ``w2(silu(w1 x))``; with d_ff = 4 d_model it has SwiGLU's parameter count."""

    def __init__(
        self,
        d_model: int,
        d_ff: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.w1 = Linear(d_model, d_ff, device=device, dtype=dtype)
        self.w2 = Linear(d_ff, d_model, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(silu(self.w1(x)))


def _misaligned_pairs(pairs: Tensor) -> bool:
    """Can ``pairs`` (..., 2) not be viewed as complex numbers as it is laid out?"""
    odd_offset = pairs.storage_offset() % 2 != 0
    return pairs.stride(-1) != 1 or odd_offset or any(st % 2 for st in pairs.stride()[:-1])


def _rotate_real(pairs: Tensor, rotation: Tensor) -> Tensor:
    """(a, b) pairs (..., seq, d_k/2, 2) rotated by (cos, sin) pairs broadcastable against them:
    the complex product (a + ib)(cos + i sin) in real arithmetic, for torch.compile."""
    a, b = pairs.unbind(-1)
    cos, sin = rotation.unbind(-1)
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al., 2021): rotate each adjacent pair (x[2i], x[2i+1]) of a
    query/key vector by the angle ``position * theta^(-2i/d_k)``.

    After rotation, q_m . k_n depends on m and n only through m - n, which is what makes it a
    *relative* position signal. The rotations e^{i angle} are computed once for every position up to
    ``max_seq_len`` and kept as a non-persistent float32 buffer of (cos, sin) pairs (it follows
    ``.to(device)`` and stays out of the state dict; a bf16 model still rotates with float32 angles).
    """

    def __init__(
        self, theta: float, d_k: int, max_seq_len: int, device: torch.device | str | None = None
    ) -> None:
        super().__init__()
        if d_k % 2 != 0:
            raise ValueError(f"RotaryEmbedding: d_k={d_k} must be even (it rotates pairs of features)")
        self.theta = theta
        self.d_k = d_k
        self.max_seq_len = max_seq_len
        self.register_buffer("rotation", self._rotations(device), persistent=False)

    def _rotations(self, device: torch.device | str | None) -> Tensor:
        """(max_seq_len, d_k/2, 2) float32: (cos, sin) of every position's angles, i.e. e^{i angle} as
        (real, imaginary) pairs. Real, not complex, so ``.to(device)`` moves it like any buffer."""
        # float64 for the angles: position * frequency loses precision in float32 at long contexts.
        d_k = self.d_k
        inv_freq = self.theta ** (-torch.arange(0, d_k, 2, dtype=torch.float64, device=device) / d_k)
        positions = torch.arange(self.max_seq_len, dtype=torch.float64, device=device)
        angles = torch.outer(positions, inv_freq)  # (max_seq_len, d_k/2)
        return torch.stack([angles.cos(), angles.sin()], dim=-1).float()

    def _table(self) -> Tensor:
        """The (cos, sin) table, float32 (max_seq_len, d_k/2, 2). ``model.to(torch.bfloat16)`` casts
        the buffer too; bf16 angles would misplace every position, so it is then rebuilt in float32."""
        if self.rotation.dtype not in (torch.float32, torch.float64):
            self.rotation = self._rotations(self.rotation.device)
        return self.rotation.float()

    def forward(self, x: Tensor, token_positions: Tensor | None = None, start: int = 0) -> Tensor:
        """x: (..., seq, d_k); token_positions: (..., seq) int, broadcastable against x's leading dims
        (e.g. (seq,) or (batch, 1, seq) for x of (batch, heads, seq, d_k)); None means
        start..start+seq-1."""
        table = self._table()
        # (seq, d_k/2, 2), a view without a gather; or (..., seq, d_k/2, 2) at the given positions
        rotation = table[start : start + x.shape[-2]] if token_positions is None else table[token_positions]
        # Rotating the pair (a, b) by angle t is multiplying a + ib by e^{it} = cos t + i sin t:
        #   (a cos t - b sin t) + i (a sin t + b cos t).
        # One complex multiply does the four real multiplies and two adds in a single kernel, forward
        # and backward (about 4x faster on CPU than the same maths as separate real ops).
        compute = torch.promote_types(x.dtype, torch.float32)  # complex needs float32/64 (no bf16)
        pairs = x if x.dtype == compute else x.to(compute)
        pairs = pairs.unflatten(-1, (-1, 2))  # (..., seq, d_k/2, 2)
        if torch.compiler.is_compiling():
            # Inductor generates no code for complex ops (it falls back to eager kernels and warns);
            # written out in real arithmetic, it fuses the rotation into one loop with its neighbours.
            return _rotate_real(pairs, rotation).flatten(-2).to(x.dtype)
        # view_as_complex needs (real, imag) adjacent and aligned.
        if _misaligned_pairs(pairs):
            pairs = pairs.contiguous()
        rotated = torch.view_as_real(torch.view_as_complex(pairs) * torch.view_as_complex(rotation))
        rotated = rotated.flatten(-2)  # (..., seq, d_k)
        return rotated if rotated.dtype == x.dtype else rotated.to(x.dtype)

    def extra_repr(self) -> str:
        return f"theta={self.theta}, d_k={self.d_k}, max_seq_len={self.max_seq_len}"
