"""Parameter counts and training FLOPs per token, for model-FLOPs utilisation (MFU).

Formula (Kaplan et al. 2020, with the attention term of PaLM, Chowdhery et al. 2022, appendix B):

    training FLOPs per token = 6 * N_matmul + 12 * num_layers * d_model * seq_len

- ``N_matmul``: weights that take part in a matrix multiply, i.e. every parameter except RMSNorm gains
  and the input embedding table (a lookup, no arithmetic), but including ``lm_head`` (also when it is
  tied to the embedding). A weight used in a matmul costs 2 FLOPs per token forward (multiply + add)
  and 4 backward (gradients for the input and for the weight): 6 in all.
- Attention scores q k^T and the weighted sum of values add 2 * 2 * seq_len * d_model FLOPs per token
  per layer forward, times 3 for training. The full (not causal-halved) score matrix is counted, as
  PaLM does, so MFU figures stay comparable across implementations.

Elementwise work (norms, softmax, RoPE, SiLU, the optimizer) is ignored: it is memory-bound and small.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lit_llm.model.config import ModelConfig


def _config_counts(cfg: ModelConfig) -> dict[str, int]:
    """Analytic parameter counts by role for a config (same numbers as counting a built model)."""
    d, d_ff, v = cfg.d_model, cfg.resolved_d_ff, cfg.vocab_size
    ffn_matrices = 3 if cfg.ffn == "swiglu" else 2
    norms_per_layer = 0 if cfg.norm == "none" else 2
    return {
        "embedding": v * d,
        "attention": cfg.num_layers * 4 * d * d,
        "ffn": cfg.num_layers * ffn_matrices * d * d_ff,
        "norm": cfg.num_layers * norms_per_layer * d + (d if cfg.norm == "pre" else 0),
        "lm_head": 0 if cfg.tie_embeddings else v * d,
    }


def count_parameters(model_or_config: nn.Module | ModelConfig, exclude_embeddings: bool = False) -> int:
    """Number of distinct parameters of a model, or of the model a ``ModelConfig`` would build.

    ``exclude_embeddings`` leaves out the input token-embedding table (the convention of scaling laws);
    a table tied to ``lm_head`` is kept, since it then also does the output projection's matmul.
    """
    if isinstance(model_or_config, ModelConfig):
        counts = _config_counts(model_or_config)
        total = sum(counts.values())
        if exclude_embeddings and not model_or_config.tie_embeddings:
            total -= counts["embedding"]
        return total
    model = model_or_config
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    embeddings = getattr(model, "token_embeddings", None)
    lm_head = getattr(model, "lm_head", None)
    if exclude_embeddings and embeddings is not None:
        tied = lm_head is not None and lm_head.weight is embeddings.weight
        if not tied:
            total -= embeddings.weight.numel()
    return total


def matmul_parameters(config: ModelConfig) -> int:
    """``N_matmul`` of the module docstring: attention, FFN and lm_head weights (tied or not)."""
    counts = _config_counts(config)
    return counts["attention"] + counts["ffn"] + config.vocab_size * config.d_model


def estimate_flops_per_token(config: ModelConfig, seq_len: int | None = None) -> float:
    """Training (forward + backward) FLOPs per token; ``seq_len`` defaults to ``config.context_length``."""
    seq = config.context_length if seq_len is None else seq_len
    attention = 12 * config.num_layers * config.d_model * seq
    return float(6 * matmul_parameters(config) + attention)


def module_flops_per_token(module: nn.Module, seq_len: int) -> float:
    """Training FLOPs per token of any part of the model, by the same formula: 6 per weight of each
    ``Linear`` inside it (a weight shared by two, as a tied ``lm_head``, belongs to the ``Linear``) and
    the attention term for each attention layer inside it. For a whole ``TransformerLM`` this equals
    ``estimate_flops_per_token(config, seq_len)``; the model summary's FLOPs column shows it per row."""
    from lit_llm.model.attention import MultiHeadSelfAttention
    from lit_llm.model.layers import Linear

    parts = list(module.modules())
    matmul = sum(m.weight.numel() for m in parts if isinstance(m, Linear))
    attention = sum(12 * m.d_model * seq_len for m in parts if isinstance(m, MultiHeadSelfAttention))
    return float(6 * matmul + attention)


def steps_for_tokens_per_parameter(ratio: float, model: Any, batch_size: int) -> int:
    """Optimizer steps that train ``model`` (a ModelConfig, or the model node of a config) on ``ratio``
    tokens per parameter with batches of ``batch_size`` windows of its context (one device, no
    accumulation): the budget rule of a scaling study (Chinchilla's compute-optimal ratio is about 20).
    The ``lit_llm.steps_for_tokens_per_parameter`` resolver of ``experiment=scaling``."""
    if not isinstance(model, ModelConfig):
        from omegaconf import DictConfig, OmegaConf

        fields = OmegaConf.to_container(model, resolve=True) if isinstance(model, DictConfig) else dict(model)
        model = ModelConfig.from_dict(fields)
    return max(1, round(ratio * count_parameters(model) / (batch_size * model.context_length)))
