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


def test_training_with_dropout_gives_finite_gradients_on_both_attention_paths() -> None:
    for attn_impl in ("sdpa", "naive"):
        model = tiny_model(attn_impl=attn_impl, dropout=0.2).train()
        x = torch.randint(0, model.config.vocab_size, (2, 12))
        model(x).logsumexp(-1).mean().backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters()), attn_impl


def test_a_bad_dropout_is_one_clear_error() -> None:
    fields = dict(vocab_size=10, context_length=8, d_model=8, num_layers=1, num_heads=2)
    with pytest.raises(ValueError, match=r"dropout=1.0: expected a probability in \[0, 1\)"):
        ModelConfig(**fields, dropout=1.0)
    with pytest.raises(ValueError, match=r"dropout=-0.1: expected a probability in \[0, 1\)"):
        ModelConfig(**fields, dropout=-0.1)
