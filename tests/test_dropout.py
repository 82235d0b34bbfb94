"""``model.dropout``: our inverted dropout (lit_llm/model/layers.py) on the residual branches and the
attention weights: its statistics and gradient, inactive outside training, and the expected value of
the dropped attention equal to the undropped one."""

from __future__ import annotations

import pytest
import torch
from tiny_lm import one_thread, tiny_model  # noqa: F401  (one_thread: an autouse fixture)

from lit_llm.model import ModelConfig
from lit_llm.model.attention import MultiHeadSelfAttention
from lit_llm.model.layers import Dropout, dropout


def test_dropout_is_the_identity_outside_training_or_at_zero() -> None:
    x = torch.randn(4, 5)
    assert dropout(x, 0.3, training=False) is x
    assert dropout(x, 0.0, training=True) is x
    layer = Dropout(0.3).eval()
    assert layer(x) is x


def test_dropout_zeroes_a_fraction_p_and_scales_the_rest_by_one_over_keep() -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000, requires_grad=True)
    y = dropout(x, 0.2)
    zeroed = (y == 0).float().mean().item()
    assert zeroed == pytest.approx(0.2, abs=0.01)  # ~8 standard deviations of a binomial at this size
    survivors = y[y != 0]
    torch.testing.assert_close(survivors, torch.full_like(survivors, 1 / 0.8), rtol=1e-6, atol=0)
    y.sum().backward()
    assert torch.equal(x.grad, y.detach())  # both are 1 x (mask / keep): a product with 1 is exact


def test_a_model_with_dropout_in_eval_mode_is_the_model_without_it() -> None:
    for attn_impl in ("sdpa", "naive"):
        plain = tiny_model(attn_impl=attn_impl)
        dropped = tiny_model(attn_impl=attn_impl, dropout=0.5)
        dropped.load_state_dict(plain.state_dict())
        x = torch.randint(0, plain.config.vocab_size, (2, 12))
        assert torch.equal(dropped.eval()(x), plain.eval()(x)), attn_impl


@pytest.mark.parametrize("attn_impl", ["sdpa", "naive"])
def test_dropped_attention_averages_to_the_undropped_attention(attn_impl: str) -> None:
    """E[dropout(P)] = P, so the mean output over many draws approaches the undropped output."""
    torch.manual_seed(0)
    attn = MultiHeadSelfAttention(16, 2, max_seq_len=6, theta=10000.0, attn_impl=attn_impl, dropout=0.5)
    x = torch.randn(1, 6, 16)
    with torch.no_grad():
        expected = attn.eval()(x)
        attn.train()
        mean = torch.stack([attn(x.expand(512, 6, 16)) for _ in range(8)]).mean(dim=(0, 1))  # 4096 draws
    torch.testing.assert_close(mean, expected[0], atol=0.06, rtol=0)


@pytest.mark.parametrize("precision", ["float32", "bf16 autocast", "bfloat16 weights"])
def test_training_with_dropout_gives_finite_gradients_on_both_attention_paths(precision: str) -> None:
    for attn_impl in ("sdpa", "naive"):
        model = tiny_model(attn_impl=attn_impl, dropout=0.2).train()
        if precision == "bfloat16 weights":
            model = model.to(torch.bfloat16)
        x = torch.randint(0, model.config.vocab_size, (2, 12))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16 autocast"):
            logits = model(x)
        assert logits.dtype == (torch.float32 if precision == "float32" else torch.bfloat16)
        logits.float().logsumexp(-1).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), attn_impl


def test_a_bad_dropout_is_one_clear_error() -> None:
    fields = dict(vocab_size=10, context_length=8, d_model=8, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=r"dropout=1.0: expected a probability in \[0, 1\)"):
        ModelConfig(**fields, dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout=-0.1: expected a probability in \[0, 1\)"):
        ModelConfig(**fields, dropout=-0.1)


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_the_keep_mask_keeps_one_minus_p_of_any_tensor(p: float) -> None:
    """The mask is drawn as the halves of 64-bit random words: an odd element count, another dtype and
    any p still give a mask of x's shape, kept with probability 1 - p (to ~8 binomial deviations)."""
    torch.manual_seed(0)
    x = torch.ones(3, 66_667, dtype=torch.bfloat16, requires_grad=True)  # 200,001 elements: odd
    y = dropout(x, p)
    assert y.shape == x.shape and y.dtype == torch.bfloat16
    kept = (y != 0).double().mean().item()
    assert kept == pytest.approx(1 - p, abs=8 * (p * (1 - p) / x.numel()) ** 0.5)
    y.float().sum().backward()
    assert torch.equal(x.grad, y.detach())  # the same mask and scale, both times 1


def test_attention_dropout_defaults_to_dropout_and_can_be_set_apart() -> None:
    same = tiny_model(dropout=0.3)
    apart = tiny_model(dropout=0.3, attention_dropout=0.0)
    for model, attention in ((same, 0.3), (apart, 0.0)):
        assert [layer.attn.dropout for layer in model.layers] == [attention] * len(model.layers)
        assert [layer.drop.p for layer in model.layers] == [0.3] * len(model.layers)
    assert apart.config.resolved_attention_dropout == 0.0 and same.config.resolved_attention_dropout == 0.3
    fields = dict(vocab_size=10, context_length=8, d_model=8, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=r"attention_dropout=1.5: expected a probability in \[0, 1\)"):
        ModelConfig(**fields, attention_dropout=1.5)


def test_on_a_cpu_both_attention_paths_drop_with_our_composition() -> None:
    """F.scaled_dot_product_attention has no fused CPU kernel with dropout (it falls back to an unfused
    path, slower than ours), so a training "sdpa" layer with dropout runs our composition on a CPU:
    from the same weights and generator state, the two paths make the same draws and the same ops."""
    layers = {}
    for attn_impl in ("sdpa", "naive"):
        torch.manual_seed(0)
        layers[attn_impl] = MultiHeadSelfAttention(
            16, 2, max_seq_len=6, theta=10000.0, attn_impl=attn_impl, dropout=0.3
        ).train()
    x = torch.randn(3, 6, 16)
    outputs = []
    for layer in layers.values():
        torch.manual_seed(1)
        outputs.append(layer(x))
    assert torch.equal(*outputs)


def test_embedding_dropout_is_off_by_default_and_drops_the_residual_streams_input() -> None:
    """``embedding_dropout`` stays 0 when ``dropout`` is set; when set, a training forward pass is the
    undropped model run on ``dropout(embeddings)`` drawn from the same generator state."""
    assert tiny_model(dropout=0.3).embedding_drop.p == 0.0
    plain = tiny_model()
    dropped = tiny_model(embedding_dropout=0.4)
    dropped.load_state_dict(plain.state_dict())
    x = torch.randint(0, plain.config.vocab_size, (2, 12))
    torch.manual_seed(3)
    out = dropped.train()(x)
    torch.manual_seed(3)
    h = dropout(plain.token_embeddings(x), 0.4)
    for layer in plain.layers:
        h = layer(h)
    assert torch.equal(out, plain.lm_head(plain.ln_final(h)))  # the same ops on the same values
    assert torch.equal(dropped.eval()(x), plain.eval()(x))
    fields = dict(vocab_size=10, context_length=8, d_model=8, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=r"embedding_dropout=-0.1: expected a probability in \[0, 1\)"):
        ModelConfig(**fields, embedding_dropout=-0.1)
