"""``ModelConfig``: every architectural choice of ``TransformerLM`` in one validated, JSON-able place.

It travels inside checkpoints and exported model folders, so a model can be rebuilt from its file
alone. Validation reports every bad field at once (one line each) instead of failing on the first.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

NORMS = ("pre", "post", "none")
POSITIONS = ("rope", "nope")
FFNS = ("swiglu", "silu")
ATTN_IMPLS = ("naive", "sdpa")


def default_d_ff(d_model: int, ffn: str) -> int:
    """SwiGLU: 8/3 d_model rounded up to a multiple of 64 (3 matrices ~ the 8 d^2 of a 4x MLP);
    the two-matrix SiLU ablation: 4 d_model, so both variants have about the same parameter count."""
    if ffn == "silu":
        return 4 * d_model
    return -(-8 * d_model // (3 * 64)) * 64


@dataclass(frozen=True)
class ModelConfig:
    """Shape and ablation switches of a ``TransformerLM``. Frozen: a model's config cannot drift from
    its weights after construction; use ``dataclasses.replace`` to derive a variant."""

    vocab_size: int
    """Number of token ids (the tokenizer's vocabulary, special tokens included)."""
    context_length: int
    """Longest sequence the model accepts (sizes the RoPE tables and the causal mask)."""
    d_model: int
    """Width of the residual stream."""
    num_layers: int
    """Number of transformer blocks."""
    num_heads: int
    """Attention heads per block; d_model must be divisible by it."""
    d_ff: int | None = None
    """Hidden width of the feed-forward network; None picks ``default_d_ff(d_model, ffn)``."""
    rope_theta: float = 10000.0
    """RoPE base: the wavelength of the slowest-rotating pair is about 2*pi*theta positions."""
    norm: str = "pre"
    """RMSNorm placement: "pre" (before each sublayer), "post" (after each residual add), "none"."""
    position: str = "rope"
    """"rope" rotary embeddings, or "nope": no position signal besides the causal mask."""
    ffn: str = "swiglu"
    """"swiglu" (gated, 3 matrices) or "silu" (ungated, 2 matrices, d_ff = 4 d_model)."""
    attn_impl: str = "sdpa"
    """"sdpa": torch's fused F.scaled_dot_product_attention, the default because it never
    materialises the (seq, seq) score matrix and so runs faster and leaner (see benchmarks/bench_model.py);
    "naive": our from-scratch attention, equal to 1e-5."""
    tie_embeddings: bool = False
    """Share the token embedding matrix with lm_head."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    dropout: float = 0.0
    """Dropout probability on each sublayer's output (the residual branches) and, unless
    ``attention_dropout`` says otherwise, on the attention weights, while training only (evaluation
    and generation never drop). 0: off, the default."""
    attention_dropout: float | None = None
    """Dropout probability on the attention weights; None: the same as ``dropout``. Set apart to ablate
    one against the other (on Tiny Shakespeare the attention dropout is most of the regularisation:
    experiments/README.md, study 6)."""
    embedding_dropout: float = 0.0
    """Dropout probability on the token embeddings (the residual stream's input), while training only,
    as nanoGPT applies its ``dropout`` there. 0: off, the default, also when ``dropout`` is set."""

    def __post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise ValueError("invalid ModelConfig:\n" + "\n".join(f"  {p}" for p in problems))

    def _problems(self) -> list[str]:
        problems: list[str] = []

        def positive_int(name: str, value: Any) -> bool:
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                problems.append(f"{name}={value!r}: expected a positive integer")
                return False
            return True

        for name in ("vocab_size", "context_length", "num_layers"):
            positive_int(name, getattr(self, name))
        shape_ok = positive_int("d_model", self.d_model) & positive_int("num_heads", self.num_heads)
        if self.d_ff is not None:
            positive_int("d_ff", self.d_ff)
        if shape_ok:
            if self.d_model % self.num_heads != 0:
                problems.append(f"d_model={self.d_model}: expected a multiple of num_heads={self.num_heads}")
            elif self.position == "rope" and (self.d_model // self.num_heads) % 2 != 0:
                problems.append(
                    f"num_heads={self.num_heads}: head dim d_model/num_heads="
                    f"{self.d_model // self.num_heads} must be even for position='rope'"
                )
        for name in ("rope_theta", "norm_eps"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                problems.append(f"{name}={value!r}: expected a positive finite number")
        for name, allowed in (
            ("norm", NORMS),
            ("position", POSITIONS),
            ("ffn", FFNS),
            ("attn_impl", ATTN_IMPLS),
        ):
            if getattr(self, name) not in allowed:
                problems.append(f"{name}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        for name in ("dropout", "attention_dropout", "embedding_dropout"):
            p = getattr(self, name)
            if name == "attention_dropout" and p is None:
                continue
            if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
                problems.append(f"{name}={p!r}: expected a probability in [0, 1)")
        if not isinstance(self.tie_embeddings, bool):
            problems.append(f"tie_embeddings={self.tie_embeddings!r}: expected true or false")
        return problems

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def resolved_d_ff(self) -> int:
        """The feed-forward width actually built: ``d_ff`` or its default for this ``ffn``."""
        return self.d_ff if self.d_ff is not None else default_d_ff(self.d_model, self.ffn)

    @property
    def resolved_attention_dropout(self) -> float:
        """The dropout applied to the attention weights: ``attention_dropout``, or ``dropout``."""
        return self.dropout if self.attention_dropout is None else self.attention_dropout

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (``d_ff`` kept as given, so None stays None)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of ``to_dict``; unknown keys are an error (a typo must not be silently ignored)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(
                f"ModelConfig: unknown key(s) {', '.join(unknown)}; "
                f"expected some of {', '.join(sorted(known))}"
            )
        required = {f.name for f in dataclasses.fields(cls) if f.default is dataclasses.MISSING}
        missing = sorted(required - set(data))
        if missing:
            raise ValueError(f"ModelConfig: missing required key(s) {', '.join(missing)}")
        return cls(**data)
