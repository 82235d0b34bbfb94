"""The from-scratch transformer: layers, attention, the language model and its config."""

from __future__ import annotations

from lit_llm.model.attention import MultiHeadSelfAttention, scaled_dot_product_attention
from lit_llm.model.config import ModelConfig, default_d_ff
from lit_llm.model.layers import (
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
from lit_llm.model.transformer import TransformerBlock, TransformerLM

__all__ = [
    "Embedding",
    "Linear",
    "ModelConfig",
    "MultiHeadSelfAttention",
    "RMSNorm",
    "RotaryEmbedding",
    "SiLUFeedForward",
    "SwiGLU",
    "TransformerBlock",
    "TransformerLM",
    "default_d_ff",
    "scaled_dot_product_attention",
    "silu",
    "silu_gate",
    "softmax",
]
