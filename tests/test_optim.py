"""AdamW equals torch.optim.AdamW; clip_grad_norm equals clip_grad_norm_; the warm-up + cosine schedule."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
from torch import nn

from lit_llm.optim import AdamW, clip_grad_norm, warmup_cosine

pytestmark = pytest.mark.usefixtures("seeded_single_thread")


def _model() -> nn.Module:
    return nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 4))


def _groups(model: nn.Module) -> list[dict]:
    # Two groups with their own lr and weight decay, as a no-decay-on-biases setup would have.
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if n.endswith("bias")]
    return [{"params": weights, "weight_decay": 0.1}, {"params": biases, "weight_decay": 0.0, "lr": 3e-3}]


def _train(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(32, 8, generator=gen)
        y = torch.randn(32, 4, generator=gen)
        optimizer.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        optimizer.step()


def test_adamw_matches_torch_for_100_steps_with_two_groups():
    ours_model = _model()
    ref_model = copy.deepcopy(ours_model)
    initial = copy.deepcopy(ours_model)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    _train(ours_model, AdamW(_groups(ours_model), **kw), 100)
    _train(ref_model, torch.optim.AdamW(_groups(ref_model), **kw), 100)
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    moved = [
        (a - p).abs().max().item() for a, p in zip(ours_model.parameters(), initial.parameters(), strict=True)
    ]
    assert min(moved) > 1e-3  # every tensor was trained, so the comparison above is not vacuous


def test_adamw_decay_is_decoupled_from_the_gradient():
    p = nn.Parameter(torch.full((3,), 2.0))
    opt = AdamW([p], lr=0.1, weight_decay=0.5)
    p.grad = torch.zeros(3)
    opt.step()
    # zero gradient: Adam's part is 0 / (0 + eps) = 0, so only the decay p *= 1 - lr * wd acts
    torch.testing.assert_close(p.detach(), torch.full((3,), 2.0 * (1 - 0.1 * 0.5)))


def test_step_with_closure_enables_grad_and_returns_loss():
    model = _model()
    opt = AdamW(model.parameters(), lr=1e-2)
    x, y = torch.randn(4, 8), torch.randn(4, 4)

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()  # needs grad mode although step() itself runs under no_grad
        return loss

    with torch.no_grad():
        loss = opt.step(closure=closure)
    assert isinstance(loss, torch.Tensor) and loss.ndim == 0


def test_params_without_grad_are_skipped():
    a, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = AdamW([a, b], lr=0.1)
    a.grad = torch.ones(2)
    opt.step()
    assert torch.equal(b.detach(), torch.ones(2)) and b not in opt.state
    assert opt.state[a]["step"] == 1


def test_a_step_without_one_gradient_mid_training_matches_torch():
    """One parameter without a gradient for a step (the flat path's layout already built): it is
    skipped and its step count falls behind the others', and later steps still equal torch's."""
    ours_model = _model()
    ref_model = copy.deepcopy(ours_model)
    ours, ref = AdamW(_groups(ours_model), lr=1e-2), torch.optim.AdamW(_groups(ref_model), lr=1e-2)
    for step in range(6):
        for model, opt in ((ours_model, ours), (ref_model, ref)):
            torch.manual_seed(step)
            model(torch.randn(4, 8)).square().mean().backward()
            if step == 2:
                next(model.parameters()).grad = None
            opt.step()
            opt.zero_grad(set_to_none=True)
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    params = list(ours_model.parameters())
    assert [ours.state[p]["step"] for p in params] == [5, 6, 6, 6]


def test_state_dict_round_trip_continues_identically():
    model = _model()
    opt = AdamW(_groups(model), lr=1e-2)
    _train(model, opt, 5)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored_model = _model()
    restored_model.load_state_dict(saved["model"])
    restored_opt = AdamW(_groups(restored_model), lr=1e-2)
    restored_opt.load_state_dict(saved["opt"])
    _train(model, opt, 5, seed=2)
    _train(restored_model, restored_opt, 5, seed=2)
    # Bit-identical weights and state, the same batches, shapes and ops: deterministic on every CPU.
    for a, b in zip(model.parameters(), restored_model.parameters(), strict=True):
        assert torch.equal(a, b)


def test_adamw_rejects_bad_hyperparameters():
    with pytest.raises(ValueError, match=r"lr=-1.*betas\[1\]=1.0"):
        AdamW([nn.Parameter(torch.ones(1))], lr=-1, betas=(0.9, 1.0))


def _with_grads(seed: int) -> list[nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    params = [nn.Parameter(torch.randn(s, generator=gen)) for s in ((5, 3), (7,), (2, 2, 2))]
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 3
    return params


@pytest.mark.parametrize("max_norm", [0.5, 1e3])
def test_clip_grad_norm_matches_torch_and_accepts_a_generator(max_norm):
    ours, ref = _with_grads(0), _with_grads(0)
    ours[1].grad = None  # params without grad are ignored
    ref[1].grad = None
    norm = clip_grad_norm((p for p in ours), max_norm)  # a generator: read once
    ref_norm = torch.nn.utils.clip_grad_norm_(ref, max_norm)
    torch.testing.assert_close(norm, ref_norm)
    for a, b in zip(ours, ref, strict=True):
        if b.grad is not None:
            torch.testing.assert_close(a.grad, b.grad)
    if max_norm < norm:
        total = math.sqrt(sum(p.grad.pow(2).sum().item() for p in ours if p.grad is not None))
        assert total == pytest.approx(max_norm, rel=1e-5)


def test_clip_grad_norm_single_tensor():
    p = nn.Parameter(torch.zeros(4))
    p.grad = torch.tensor([3.0, 4.0, 0.0, 0.0])
    assert clip_grad_norm(p, 1.0).item() == pytest.approx(5.0)
    torch.testing.assert_close(p.grad, torch.tensor([0.6, 0.8, 0.0, 0.0]), atol=1e-6, rtol=1e-5)


def _cosine_reference(it, max_lr, min_lr, warmup, cycle):
    if it < warmup:
        return max_lr * it / warmup
    if it > cycle:
        return min_lr
    return min_lr + (max_lr - min_lr) * (1 + math.cos(math.pi * (it - warmup) / (cycle - warmup))) / 2


def test_warmup_cosine_schedule():
    args = dict(max_lr=1.0, min_lr=0.1, warmup_iters=7, cosine_cycle_iters=21)
    values = [warmup_cosine(it, **args) for it in range(25)]
    assert values[0] == 0.0 and values[7] == 1.0 and values[21] == pytest.approx(0.1) and values[24] == 0.1
    assert values[14] == pytest.approx(0.55)  # halfway down the cosine
    for it, v in enumerate(values):
        assert v == pytest.approx(_cosine_reference(it, 1.0, 0.1, 7, 21))
    assert all(a <= b for a, b in zip(values[:7], values[1:8], strict=True))  # rises during warm-up
    assert all(a >= b for a, b in zip(values[7:21], values[8:22], strict=True))  # then falls
    with pytest.raises(ValueError, match="warmup_iters=10, cosine_cycle_iters=5"):
        warmup_cosine(0, 1.0, 0.1, 10, 5)


def test_clip_grad_norm_with_an_infinite_bound_only_measures() -> None:
    params = [torch.nn.Parameter(torch.randn(3, 4)) for _ in range(3)]
    for p in params:
        p.grad = torch.randn_like(p) * 10
    before = [p.grad.clone() for p in params]
    expected = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in params]))
    norm = clip_grad_norm(params, math.inf)
    torch.testing.assert_close(norm, expected)
    for p, g in zip(params, before, strict=True):
        assert torch.equal(p.grad, g)  # untouched: no op ran on the gradients


def test_cpu_groups_live_in_one_flat_buffer_rebuilt_when_a_tensor_is_replaced():
    """On the CPU each group's parameters become views of one buffer (the fast path). Replacing a
    parameter's tensor, as ``.to()`` does, is noticed and the layout rebuilt: still torch's AdamW."""
    ours_model = _model()
    ref_model = copy.deepcopy(ours_model)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    ours, ref = AdamW(_groups(ours_model), **kw), torch.optim.AdamW(_groups(ref_model), **kw)

    def storages(of=lambda p: p) -> set[int]:
        weights = [p for n, p in ours_model.named_parameters() if n.endswith("weight")]
        return {of(p).untyped_storage().data_ptr() for p in weights}

    _train(ours_model, ours, 3)
    _train(ref_model, ref, 3)
    assert len(storages()) == 1
    for p in ours_model.parameters():
        p.data = p.data.clone()  # new memory, same values: the layout no longer holds
    assert len(storages()) == 2
    _train(ours_model, ours, 3, seed=2)
    _train(ref_model, ref, 3, seed=2)
    assert len(storages()) == 1
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert len(storages(lambda p: ours.state[p]["exp_avg"])) == 1  # the moments live in one buffer too


@pytest.mark.slow
def test_compiled_update_matches_torch_and_compiles_once():
    """``compiled_update=True`` (compile=true training) runs the flat update as one compiled kernel: the
    same parameters as torch's AdamW to float rounding, and the values that change every step (the
    learning rate of a schedule, the bias corrections) do not cause a compilation per step."""
    from torch._dynamo.utils import counters

    ours_model = _model()
    ref_model = copy.deepcopy(ours_model)
    kw = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    ours = AdamW(_groups(ours_model), **kw, compiled_update=True)
    ref = torch.optim.AdamW(_groups(ref_model), **kw)
    _train(ours_model, ours, 5)
    _train(ref_model, ref, 5)
    graphs = counters["stats"]["unique_graphs"]
    for optimizer in (ours, ref):  # a schedule's new learning rates for the remaining steps
        for group in optimizer.param_groups:
            group["lr"] *= 0.5
    _train(ours_model, ours, 95, seed=2)
    _train(ref_model, ref, 95, seed=2)
    assert counters["stats"]["unique_graphs"] == graphs  # 95 more steps, new lr: nothing recompiled
    assert len({p.untyped_storage().data_ptr() for p in ours.param_groups[0]["params"]}) == 1  # flat path
    for a, b in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    state = ours.state_dict()["state"]
    assert [s["step"] for s in state.values()] == [100] * len(state)
