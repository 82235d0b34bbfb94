"""ModelConfig validation and round trips; TransformerLM names, causality, ablations, and overfitting."""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch

from lit_llm.flops import count_parameters, estimate_flops_per_token, module_flops_per_token
from lit_llm.losses import cross_entropy
from lit_llm.model import ModelConfig, TransformerBlock, TransformerLM, default_d_ff
from lit_llm.optim import AdamW

TINY = dict(vocab_size=64, context_length=16, d_model=32, num_layers=2, num_heads=4)


pytestmark = pytest.mark.usefixtures("seeded_single_thread")


# --- ModelConfig ---------------------------------------------------------------------------------


def test_config_reports_every_bad_field_at_once():
    with pytest.raises(ValueError) as info:
        ModelConfig(
            vocab_size=0,
            context_length=16,
            d_model=30,
            num_layers=2,
            num_heads=4,
            norm="layer",
            attn_impl="flash",
            rope_theta=-1.0,
        )
    lines = str(info.value).splitlines()[1:]
    assert len(lines) == 5, lines
    message = str(info.value)
    for fragment in (
        "vocab_size=0",
        "d_model=30: expected a multiple of num_heads=4",
        "norm='layer'",
        "attn_impl='flash'",
        "rope_theta=-1.0",
    ):
        assert fragment in message


def test_config_requires_even_head_dim_for_rope_only():
    with pytest.raises(ValueError, match="head dim d_model/num_heads=3 must be even"):
        ModelConfig(**{**TINY, "d_model": 12})
    ModelConfig(**{**TINY, "d_model": 12, "position": "nope"})  # fine without RoPE


def test_config_json_round_trip_and_unknown_keys():
    cfg = ModelConfig(**TINY, norm="post", ffn="silu", tie_embeddings=True)
    again = ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    with pytest.raises(ValueError, match="unknown key.*droput"):
        ModelConfig.from_dict({**cfg.to_dict(), "droput": 0.1})
    with pytest.raises(ValueError, match="missing required key.*vocab_size"):
        ModelConfig.from_dict({k: v for k, v in cfg.to_dict().items() if k != "vocab_size"})


def test_default_d_ff():
    assert default_d_ff(512, "swiglu") == 1408  # 8/3 * 512 = 1365.3 -> next multiple of 64
    assert default_d_ff(768, "swiglu") == 2048
    assert default_d_ff(512, "silu") == 2048
    assert ModelConfig(**TINY).resolved_d_ff == 128
    assert ModelConfig(**TINY, ffn="silu").resolved_d_ff == 128
    assert ModelConfig(**TINY, d_ff=40).resolved_d_ff == 40


# --- TransformerLM -------------------------------------------------------------------------------


def test_parameter_names_follow_the_contract():
    model = TransformerLM(**TINY, d_ff=48)
    names = set(model.state_dict())
    expected = {"token_embeddings.weight", "ln_final.weight", "lm_head.weight"}
    for i in range(2):
        expected |= {f"layers.{i}.ln1.weight", f"layers.{i}.ln2.weight"}
        expected |= {f"layers.{i}.attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "output_proj")}
        expected |= {f"layers.{i}.ffn.{p}.weight" for p in ("w1", "w2", "w3")}
    assert names == expected
    assert model.layers[0].ffn.w1.weight.shape == (48, 32)
    assert isinstance(model.config, ModelConfig) and model.config.d_ff == 48


def test_from_config_rebuilds_the_same_model():
    cfg = ModelConfig(**TINY, ffn="silu", norm="post")
    model = TransformerLM.from_config(cfg)
    assert model.config == cfg
    twin = TransformerLM.from_config(ModelConfig.from_dict(cfg.to_dict()))
    twin.load_state_dict(model.state_dict())
    ids = torch.randint(0, 64, (2, 16))
    torch.testing.assert_close(twin(ids), model(ids))


def _state(build) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return build().state_dict()


def test_config_and_field_signatures_build_the_same_model():
    # The model is built from its config; the field-by-field signatures are thin front doors to it.
    cfg = ModelConfig(**TINY, d_ff=48, rope_theta=500.0, norm="post", ffn="silu")
    builds = [
        lambda: TransformerLM(cfg),
        lambda: TransformerLM(64, 16, 32, 2, 4, 48, 500.0, norm="post", ffn="silu"),
        lambda: TransformerLM(**cfg.to_dict()),
    ]
    reference = _state(builds[0])
    for build in builds[1:]:
        state = _state(build)
        assert list(state) == list(reference)
        assert all(torch.equal(state[k], reference[k]) for k in reference)  # same seed: same init
    with pytest.raises(TypeError, match="only device= and dtype="):
        TransformerLM(cfg, 16)


def test_block_from_config_equals_the_standalone_signature():
    cfg = ModelConfig(**TINY, d_ff=48, rope_theta=500.0, norm="post")
    block = _state(lambda: TransformerBlock(cfg, 1))
    standalone = _state(lambda: TransformerBlock(32, 4, 48, 16, 500.0, norm="post"))
    assert list(block) == list(standalone)
    assert all(torch.equal(block[k], standalone[k]) for k in block)
    assert TransformerBlock(cfg, 1).index == 1
    assert TransformerBlock(32, 4, 48, 16, None).attn.rope is None  # theta None: no RoPE
    model = TransformerLM(cfg)
    assert [layer.index for layer in model.layers] == [0, 1]


@pytest.mark.slow
def test_training_forward_compiles_to_one_graph():
    """torch.compile speeds training up only where Dynamo sees the whole forward: a graph break (a
    Python-level read of a tensor's layout, say) cuts it into pieces compiled apart. Our autograd
    Functions, RoPE and attention must trace as one graph."""
    import torch._dynamo as dynamo

    model = TransformerLM(**{**TINY, "num_layers": 2})
    ids = torch.randint(0, 64, (2, 16))
    explanation = dynamo.explain(lambda t: cross_entropy(model(t), t))(ids)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]


def test_compile_in_place_keeps_names_and_logits():
    # nn.Module.compile compiles in place: the same module, the same state-dict keys, the same logits
    # (to float32 rounding: the compiled kernels may fuse and reorder the arithmetic).
    torch.manual_seed(0)
    eager = TransformerLM(**{**TINY, "num_layers": 1}).eval()
    compiled = TransformerLM(eager.config).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile()
    assert list(compiled.state_dict()) == list(eager.state_dict())
    ids = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(compiled(ids), eager(ids), atol=1e-5, rtol=1e-5)
    assert list(compiled.state_dict()) == list(eager.state_dict())  # still, after compiling


def test_logits_shape_and_context_limit():
    model = TransformerLM(**TINY)
    assert model(torch.randint(0, 64, (3, 10))).shape == (3, 10, 64)
    with pytest.raises(ValueError, match="sequence length 17 exceeds.*context_length=16"):
        model(torch.randint(0, 64, (1, 17)))


def test_explicit_positions_equal_default_positions():
    model = TransformerLM(**TINY)
    ids = torch.randint(0, 64, (2, 12))
    ref = model(ids)
    torch.testing.assert_close(model(ids, torch.arange(12)), ref)
    torch.testing.assert_close(model(ids, torch.arange(12).expand(2, 12)), ref)


ABLATIONS = list(
    itertools.product(
        ("pre", "post", "none"), ("rope", "nope"), ("swiglu", "silu"), ("naive", "sdpa"), (False, True)
    )
)


@pytest.mark.parametrize(("norm", "position", "ffn", "attn_impl", "tie"), ABLATIONS)
def test_every_ablation_runs_forward_backward_and_is_causal(norm, position, ffn, attn_impl, tie):
    cfg = ModelConfig(**TINY, norm=norm, position=position, ffn=ffn, attn_impl=attn_impl, tie_embeddings=tie)
    model = TransformerLM.from_config(cfg)
    ids = torch.randint(0, 64, (2, 16))
    logits = model(ids)
    loss = cross_entropy(logits[:, :-1], ids[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert count_parameters(model) == count_parameters(cfg)
    assert count_parameters(model, exclude_embeddings=True) == count_parameters(cfg, exclude_embeddings=True)
    # Causality: changing token t+1 never changes the logits at positions <= t. A tight tolerance, not
    # bit equality: the rows <= t are the same arithmetic, but nothing obliges every kernel to keep them
    # bit-identical when other rows change; a leak moves a logit by ~0.1 (the change at later positions).
    with torch.no_grad():
        t = 6
        changed = ids.clone()
        changed[:, t + 1] = (changed[:, t + 1] + 1) % 64
        torch.testing.assert_close(model(changed)[:, : t + 1], model(ids)[:, : t + 1], atol=1e-6, rtol=1e-6)


def test_ablation_structure():
    post = TransformerLM(**TINY, norm="post")
    assert "ln_final.weight" not in post.state_dict() and "layers.0.ln1.weight" in post.state_dict()
    bare = TransformerLM(**TINY, norm="none")
    assert not any(".ln" in n or n.startswith("ln") for n in bare.state_dict())
    silu = TransformerLM(**TINY, ffn="silu")
    assert "layers.0.ffn.w3.weight" not in silu.state_dict()
    # the SiLU FFN with d_ff = 4 d is parameter-matched with SwiGLU's 8/3 d (up to the rounding to 64)
    for d in (256, 768):
        cfgs = [
            ModelConfig(vocab_size=10, context_length=8, d_model=d, num_layers=1, num_heads=4, ffn=f)
            for f in ("swiglu", "silu")
        ]
        swiglu_ffn, silu_ffn = ((3 if c.ffn == "swiglu" else 2) * c.resolved_d_ff * d for c in cfgs)
        assert abs(swiglu_ffn - silu_ffn) / silu_ffn < 0.05
    nope = TransformerLM(**TINY, position="nope")
    assert nope.layers[0].attn.rope is None


def test_tied_embeddings_share_one_tensor_and_reload():
    model = TransformerLM(**TINY, tie_embeddings=True)
    assert model.lm_head.weight is model.token_embeddings.weight
    assert len(list(model.parameters())) == len(list(TransformerLM(**TINY).parameters())) - 1
    fresh = TransformerLM(**TINY, tie_embeddings=True)
    fresh.load_state_dict(model.state_dict())  # strict: both names present, one tensor
    assert fresh.lm_head.weight is fresh.token_embeddings.weight
    torch.testing.assert_close(fresh.lm_head.weight, model.token_embeddings.weight)


def test_naive_and_sdpa_models_agree_to_1e5():
    naive = TransformerLM(**TINY, attn_impl="naive")
    fused = TransformerLM(**TINY, attn_impl="sdpa")
    fused.load_state_dict(naive.state_dict())
    ids = torch.randint(0, 64, (3, 16))
    torch.testing.assert_close(naive(ids), fused(ids), atol=1e-5, rtol=1e-5)


def test_two_layer_model_overfits_one_batch():
    model = TransformerLM(vocab_size=64, context_length=32, d_model=64, num_layers=2, num_heads=4)
    optimizer = AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    ids = torch.randint(0, 64, (4, 33))
    x, y = ids[:, :-1], ids[:, 1:]
    for _ in range(150):  # reaches ~0.01 by step 50; 150 leaves a wide margin
        optimizer.zero_grad(set_to_none=True)
        loss = cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.1


def test_flops_formula_for_the_tinystories_base_model():
    cfg = ModelConfig(
        vocab_size=10000, context_length=256, d_model=512, num_layers=4, num_heads=16, d_ff=1344
    )
    n_matmul = 4 * (4 * 512 * 512 + 3 * 512 * 1344) + 10000 * 512  # blocks + lm_head
    assert estimate_flops_per_token(cfg) == 6 * n_matmul + 12 * 4 * 512 * 256
    tied = dataclasses.replace(cfg, tie_embeddings=True)
    assert estimate_flops_per_token(tied) == estimate_flops_per_token(cfg)  # lm_head still multiplies
    assert count_parameters(tied) == count_parameters(cfg) - 10000 * 512
    assert count_parameters(cfg, exclude_embeddings=True) == count_parameters(cfg) - 10000 * 512


@pytest.mark.parametrize("changes", [{}, {"tie_embeddings": True}, {"ffn": "silu"}, {"d_ff": 40}])
def test_module_flops_add_up_to_the_model_estimate(changes):
    # The model summary's FLOPs column: per module, by the same formula as the MFU estimate.
    cfg = ModelConfig(**TINY, **changes)
    model = TransformerLM(cfg)
    assert module_flops_per_token(model, cfg.context_length) == estimate_flops_per_token(cfg)
    parts = [model.token_embeddings, model.layers, model.ln_final, model.lm_head]
    assert sum(module_flops_per_token(m, cfg.context_length) for m in parts) == estimate_flops_per_token(cfg)
    assert module_flops_per_token(model.token_embeddings, cfg.context_length) == 0  # a lookup
