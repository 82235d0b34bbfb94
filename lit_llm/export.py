"""``python -m lit_llm.export ckpt=PATH out=DIR [format=hf]``: a trained model as a self-contained folder.

format=lit (default): ``model.safetensors`` (our parameter names), ``config.json`` (the ModelConfig, and
under ``"sha256"`` the hash of model.safetensors) and the tokenizer files (vocab.json, merges.txt,
tokenizer.json, meta.json); ``lit_llm.loading.load_model`` reads it back without unpickling anything and
refuses weights whose hash differs from the recorded one (a damaged file).

format=hf: a Hugging Face Llama folder that ``transformers`` loads offline
(``LlamaForCausalLM.from_pretrained(DIR)``, ``AutoTokenizer.from_pretrained(DIR)``). Llama is our
architecture with norm="pre", position="rope", ffn="swiglu"; the only real difference is RoPE's pairing.
We rotate adjacent features (x[2i], x[2i+1]); HF's ``rotate_half`` rotates (x[i], x[i + d/2]) with the
same frequency i. Reordering the rows of every head of q_proj and k_proj as [0, 2, 4, ..., 1, 3, 5, ...]
turns one into the other, and since q and k are permuted alike, every q.k score is unchanged.

The folder is assembled under a temporary name beside ``out`` and renamed into place: it is complete or
absent, never half-written.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import Tensor

from lit_llm import cli
from lit_llm.loading import CONFIG_FILE, MODEL_FILE, WEIGHTS_HASH_KEY
from lit_llm.model import TransformerLM
from tokenizer.files import EOT, building_dir, sha256_file, write_json
from tokenizer.tokenizer import Tokenizer

FORMATS = ("lit", "hf")


def export_model(
    model: TransformerLM,
    tokenizer: Tokenizer,
    out: str | os.PathLike,
    *,
    format: str = "lit",
    overwrite: bool = False,
) -> Path:
    """Write ``model`` and ``tokenizer`` to the folder ``out`` (see the module docstring); returns it."""
    if format not in FORMATS:
        raise ValueError(f"format={format!r}: expected one of {', '.join(FORMATS)}")
    out = Path(out)
    _check_out(out, overwrite)
    state = hf_state_dict(model) if format == "hf" else _lit_state_dict(model)
    with building_dir(out) as tmp:  # complete or absent; an existing out is replaced once this is whole
        _save_safetensors(state, tmp / MODEL_FILE)
        tokenizer.save(tmp)  # vocab.json, merges.txt, meta.json and HF's tokenizer.json
        if format == "hf":
            write_json(tmp / CONFIG_FILE, hf_config(model, tokenizer))
            write_json(tmp / "tokenizer_config.json", _hf_tokenizer_config(model, tokenizer))
            write_json(tmp / "generation_config.json", _hf_generation_config(tokenizer))
        else:
            hashes = {MODEL_FILE: sha256_file(tmp / MODEL_FILE)}
            write_json(tmp / CONFIG_FILE, {**model.config.to_dict(), WEIGHTS_HASH_KEY: hashes})
    return out


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not (out.is_dir() and overwrite) and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(
            f"out={out}: exists and is not an empty folder (pass overwrite=true to replace it)"
        )


def _lit_state_dict(model: TransformerLM) -> dict[str, Tensor]:
    state = dict(model.state_dict())
    if model.config.tie_embeddings:
        del state["lm_head.weight"]  # one tensor under two names: safetensors stores it once
    return state


def hf_state_dict(model: TransformerLM) -> dict[str, Tensor]:
    """Our parameters under HF Llama's names, q/k rows permuted to rotate-half RoPE."""
    cfg = model.config
    unsupported = [
        f"{name}={getattr(cfg, name)!r} (Llama needs {need!r})"
        for name, need in (("norm", "pre"), ("position", "rope"), ("ffn", "swiglu"))
        if getattr(cfg, name) != need
    ]
    if unsupported:
        raise ValueError("format=hf: this model is not a Llama: " + ", ".join(unsupported))
    ours = model.state_dict()
    state = {
        "model.embed_tokens.weight": ours["token_embeddings.weight"],
        "model.norm.weight": ours["ln_final.weight"],
    }
    if not cfg.tie_embeddings:
        state["lm_head.weight"] = ours["lm_head.weight"]
    names = {
        "ln1.weight": "input_layernorm.weight",
        "ln2.weight": "post_attention_layernorm.weight",
        "attn.q_proj.weight": "self_attn.q_proj.weight",
        "attn.k_proj.weight": "self_attn.k_proj.weight",
        "attn.v_proj.weight": "self_attn.v_proj.weight",
        "attn.output_proj.weight": "self_attn.o_proj.weight",
        "ffn.w1.weight": "mlp.gate_proj.weight",
        "ffn.w3.weight": "mlp.up_proj.weight",
        "ffn.w2.weight": "mlp.down_proj.weight",
    }
    for i in range(cfg.num_layers):
        for ours_name, hf_name in names.items():
            tensor = ours[f"layers.{i}.{ours_name}"]
            if ours_name in ("attn.q_proj.weight", "attn.k_proj.weight"):
                tensor = interleaved_to_half_rows(tensor, cfg.num_heads)
            state[f"model.layers.{i}.{hf_name}"] = tensor
    return state


def interleaved_to_half_rows(weight: Tensor, num_heads: int) -> Tensor:
    """(heads * head_dim, in) rows of each head reordered [0, 2, ..., head_dim-2, 1, 3, ..., head_dim-1]:
    HF row h*hd + r*hd/2 + i is our row h*hd + 2i + r."""
    out_features, in_features = weight.shape
    head_dim = out_features // num_heads
    return (
        weight.view(num_heads, head_dim // 2, 2, in_features)
        .transpose(1, 2)
        .reshape(out_features, in_features)
    )


def hf_config(model: TransformerLM, tokenizer: Tokenizer) -> dict[str, Any]:
    cfg = model.config
    eot = tokenizer.eot_id
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.resolved_d_ff,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.context_length,
        "rms_norm_eps": cfg.norm_eps,
        # transformers 4.x reads rope_theta, 5.x rope_parameters: both are written.
        "rope_theta": cfg.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "tie_word_embeddings": cfg.tie_embeddings,
        "attention_bias": False,
        "mlp_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "torch_dtype": "float32",
    }


def _hf_tokenizer_config(model: TransformerLM, tokenizer: Tokenizer) -> dict[str, Any]:
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model.config.context_length,
        "clean_up_tokenization_spaces": False,
    }
    if tokenizer.eot_id is not None:
        config |= {"bos_token": EOT, "eos_token": EOT}
    return config


def _hf_generation_config(tokenizer: Tokenizer) -> dict[str, Any]:
    return {"bos_token_id": tokenizer.eot_id, "eos_token_id": tokenizer.eot_id}


def _save_safetensors(state: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    # "format": "pt" is what transformers checks before reading a safetensors file.
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in state.items()}, str(path), metadata={"format": "pt"}
    )


# -- command line -------------------------------------------------------------------------------------


def run(cfg: dict[str, Any]) -> Path:
    from lit_llm.loading import check_writable, load_model

    problems = [f"{key}=PATH is required" for key in ("ckpt", "out") if not cfg.get(key)]
    if problems:
        raise ValueError("; ".join(problems))
    if cfg["format"] not in FORMATS:
        raise ValueError(f"format={cfg['format']!r}: expected one of {', '.join(FORMATS)}")
    out = Path(cfg["out"])
    _check_out(out, bool(cfg.get("overwrite")))
    check_writable(out)  # the folder is built beside out: before the model is loaded
    model, tokenizer = load_model(cfg["ckpt"], tokenizer=cfg.get("tokenizer"))
    return export_model(model, tokenizer, out, format=cfg["format"], overwrite=bool(cfg.get("overwrite")))


@cli.main("export")
def main(cfg: DictConfig) -> None:
    print(f"exported to {run(OmegaConf.to_container(cfg, resolve=True))}")


if __name__ == "__main__":
    main()
