"""The network-health callback (lit_llm/health.py) and the forward trace it is made from
(lit_llm/model/trace.py): each logged quantity against an independent computation, and training left
exactly as it is without the callback."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import Logger
from test_module import MODEL, TinyData, make_module, make_trainer
from tiny_lm import one_thread, tiny_model  # noqa: F401  (one_thread: an autouse fixture)

from lit_llm.health import NetworkHealth
from lit_llm.model.trace import attention_entropy, trace_forward


class MemoryLogger(Logger):
    """Every ``log_metrics`` call kept in memory: {step: {tag: value}}."""

    def __init__(self) -> None:
        super().__init__()
        self.metrics: dict[int, dict[str, float]] = {}

    @property
    def name(self) -> str:
        return "memory"

    @property
    def version(self) -> int:
        return 0

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_metrics(self, metrics, step=None) -> None:
        self.metrics.setdefault(step, {}).update({k: float(v) for k, v in metrics.items()})


class WeightsAroundFirstStep(Callback):
    """The weights before and after optimizer step 0, kept independently of the health callback."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step == 0:
            self.before = {n: p.detach().clone().double() for n, p in pl_module.model.named_parameters()}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == 0:  # before clipping (Lightning clips after this hook)
            self.grad_norms = {
                n: torch.linalg.vector_norm(p.grad.double()) for n, p in pl_module.model.named_parameters()
            }

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == 1 and not hasattr(self, "after"):
            self.after = {n: p.detach().clone().double() for n, p in pl_module.model.named_parameters()}
            self.batch = batch


def fit_with_health(every: int, steps: int, **trainer_kwargs) -> tuple:
    module, data = make_module(), TinyData(batch_size=4)
    logger, weights = MemoryLogger(), WeightsAroundFirstStep()
    health = NetworkHealth(every_n_steps=every, windows=2)
    trainer = make_trainer(max_steps=steps, logger=logger, callbacks=[weights, health], **trainer_kwargs)
    trainer.fit(module, datamodule=data)
    return module, logger.metrics, weights


def test_update_to_weight_ratio_and_gradient_norm_match_an_independent_computation() -> None:
    module, metrics, weights = fit_with_health(every=3, steps=4, gradient_clip_val=1e-3)
    assert set(metrics) >= {0, 3}  # steps 0 and 3, at the index Lightning logs train/loss at
    logged = metrics[0]
    matrices = [n for n, p in module.model.named_parameters() if p.ndim >= 2]
    assert len(matrices) == 2 + 7 * MODEL["num_layers"]  # embeddings, lm_head, 4 attention + 3 ffn / block
    for name in matrices:
        before, after = weights.before[name], weights.after[name]
        expected = math.log10(torch.linalg.vector_norm(after - before) / torch.linalg.vector_norm(before))
        tag = name.removesuffix(".weight")
        assert logged[f"health/update_ratio_log10/{tag}"] == pytest.approx(expected, abs=1e-4)
        assert logged[f"health/grad_norm/{tag}"] == pytest.approx(float(weights.grad_norms[name]), rel=1e-5)
    # The clipping bound is far below any gradient norm here: every step was clipped.
    assert logged["health/clip_fraction"] == 1.0
    assert metrics[3]["health/clip_fraction"] == 1.0
    assert not any(tag.startswith("health/") for step in set(metrics) - {0, 3} for tag in metrics[step])


def test_no_clip_fraction_without_clipping() -> None:
    _, metrics, _ = fit_with_health(every=1, steps=2)
    assert "health/max_logit" in metrics[0] and "health/max_logit" in metrics[1]
    assert "health/clip_fraction" not in metrics[0]  # no clipping: no constant 0 curve


def test_residual_entropy_and_logit_health_come_from_the_step_batch() -> None:
    module, metrics, weights = fit_with_health(every=50, steps=1)
    x = weights.batch[0][:2]  # the health callback traces the first `windows` windows
    model = module.model.eval()
    with torch.no_grad():
        logits = model(x)
        hidden = model.token_embeddings(x)
        for i, layer in enumerate(model.layers):
            normed = layer.ln1(hidden)
            q, k, _ = layer.attn._queries_keys_values(normed, None)
            scores = q @ k.transpose(-2, -1) / math.sqrt(layer.attn.head_dim)
            causal = torch.ones(x.shape[1], x.shape[1], dtype=torch.bool).tril()
            probs = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1)
            entropy = -(probs * probs.clamp(min=1e-30).log()).sum(-1).mean(dim=(0, 2))  # (heads,)
            hidden = layer(hidden)
            assert metrics[0][f"health/attn_entropy/layers.{i}/mean"] == pytest.approx(
                float(entropy.mean()), abs=1e-5
            )
            assert metrics[0][f"health/attn_entropy/layers.{i}/min"] == pytest.approx(
                float(entropy.min()), abs=1e-5
            )
            rms = hidden.pow(2).mean().sqrt()
            assert metrics[0][f"health/residual_rms/layers.{i}"] == pytest.approx(float(rms), rel=1e-5)
    assert metrics[0]["health/max_logit"] == pytest.approx(float(logits.abs().max()), rel=1e-5)


def test_health_changes_no_training_result() -> None:
    """Same seed, same batches, same process: the weights after training are those of a run without it
    (nothing of it touches a gradient, a weight or a random number generator). Compared to float32
    rounding rather than bit for bit: its extra allocations may move buffers, and a BLAS kernel's result
    can depend on their alignment; any real interference would be orders of magnitude larger."""
    with_health, _, _ = fit_with_health(every=1, steps=4, gradient_clip_val=1.0)
    module, data = make_module(), TinyData(batch_size=4)
    make_trainer(max_steps=4, gradient_clip_val=1.0).fit(module, datamodule=data)
    for (name, a), (_, b) in zip(
        with_health.model.state_dict().items(), module.model.state_dict().items(), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


@pytest.mark.parametrize("attn_impl", ["sdpa", "naive"])
@pytest.mark.parametrize("position", ["rope", "nope"])
def test_trace_attention_weights_are_those_the_layer_applies(attn_impl: str, position: str) -> None:
    """probabilities @ values equals the attention of the layer (F.scaled_dot_product_attention on the
    same q, k, v), each row sums to 1 and nothing above the diagonal is attended to."""
    model = tiny_model(attn_impl=attn_impl, position=position)
    x = torch.randint(0, model.config.vocab_size, (3, 12))
    trace = trace_forward(model, x)
    torch.testing.assert_close(trace.logits, model(x), rtol=1e-6, atol=1e-6)  # same forward, float rounding
    assert len(trace.attention) == len(trace.residuals) == model.config.num_layers
    hidden = model.token_embeddings(x)
    for layer, weights, residual in zip(model.layers, trace.attention, trace.residuals, strict=True):
        attn = layer.attn
        normed = layer.ln1(hidden)
        q, k, _ = attn._queries_keys_values(normed, None)
        v = attn._split_heads(attn.v_proj(normed))
        expected = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        torch.testing.assert_close(weights @ v, expected, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:-1]))
        assert (weights.triu(diagonal=1) == 0).all()
        hidden = layer(hidden)
        torch.testing.assert_close(residual, hidden, rtol=1e-6, atol=1e-6)


def test_attention_entropy_of_uniform_causal_attention_is_the_mean_log_of_the_visible_keys() -> None:
    seq = 8
    uniform = torch.ones(seq, seq).tril()
    uniform = (uniform / uniform.sum(-1, keepdim=True)).expand(2, 3, seq, seq)  # (batch, heads, seq, seq)
    expected = sum(math.log(i + 1) for i in range(seq)) / seq
    torch.testing.assert_close(attention_entropy(uniform), torch.full((3,), expected))
    one_key = torch.eye(seq).expand(2, 3, seq, seq)  # every query on itself: a collapsed head
    torch.testing.assert_close(attention_entropy(one_key), torch.zeros(3))


def test_bad_health_settings_are_one_clear_error() -> None:
    with pytest.raises(ValueError, match="every_n_steps=0: expected a positive integer"):
        NetworkHealth(every_n_steps=0)
    with pytest.raises(ValueError, match="windows=-1: expected a positive integer"):
        NetworkHealth(windows=-1)
