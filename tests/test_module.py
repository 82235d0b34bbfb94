"""LanguageModelModule against PyTorch's own pieces: the optimisation path (parameter groups, schedule,
clipping, accumulation) equals torch.optim.AdamW + clip_grad_norm_ + F.cross_entropy, validation metrics
equal an independent computation, checkpoints refuse another shape, and compile leaves the state dict clean.
"""

from __future__ import annotations

import copy
import math
import random
import warnings

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from lit_llm.losses import cross_entropy
from lit_llm.model import Embedding, RMSNorm
from lit_llm.module import LanguageModelModule, compiled_cross_entropy, parameter_groups, schedule_factor
from lit_llm.optim import warmup_cosine

warnings.filterwarnings("ignore", ".*does not have many workers.*")

VOCAB, CONTEXT = 64, 16
MODEL = dict(vocab_size=VOCAB, context_length=CONTEXT, d_model=32, num_layers=2, num_heads=4)
OPTIMIZER = dict(
    lr=3e-3, betas=[0.9, 0.95], eps=1e-8, weight_decay=0.1, decay_norms=False, decay_embeddings=False
)
SCHEDULER = dict(warmup_iters=2, cosine_cycle_iters=6, min_lr=3e-4)


class ByteTokenizer:
    """Ids are byte values modulo the vocabulary: enough for the text-sample callback."""

    def encode(self, text: str) -> list[int]:
        return [b % VOCAB for b in text.encode()]

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(97 + i % 26) for i in ids)


class _Batches(IterableDataset):
    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], start: int) -> None:
        self.batches, self.start = batches, start

    def __iter__(self):
        yield from self.batches[self.start :]


class TinyData(pl.LightningDataModule):
    """Fixed random micro-batches, starting where the trainer's step says (like TokenWindowDataModule),
    and fixed validation windows of uneven batch sizes."""

    def __init__(
        self, batch_size: int = 4, n_batches: int = 64, val_windows: int = 10, seed: int = 0
    ) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, VOCAB, (n_batches, batch_size, CONTEXT + 1), generator=g)
        self.batches = [(t[:, :-1], t[:, 1:]) for t in tokens]
        val = torch.randint(0, VOCAB, (val_windows, CONTEXT + 1), generator=g)
        self.val_x, self.val_y = val[:, :-1], val[:, 1:]
        self.val_bytes_per_token = 3.5
        self.tokenizer = ByteTokenizer()
        self.eot_id = None

    def train_dataloader(self) -> DataLoader:
        trainer = self.trainer
        start = trainer.global_step * trainer.accumulate_grad_batches if trainer else 0
        return DataLoader(_Batches(self.batches, start), batch_size=None)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(self.val_x, self.val_y), batch_size=4)  # 4 + 4 + 2 windows


def make_module(**overrides) -> LanguageModelModule:
    torch.manual_seed(0)
    model = dict(MODEL, **overrides.pop("model", {}))
    return LanguageModelModule(
        model=model,
        optimizer=dict(OPTIMIZER, **overrides.pop("optimizer", {})),
        scheduler=dict(SCHEDULER, **overrides.pop("scheduler", {})),
        **overrides,
    )


def make_trainer(**kwargs) -> pl.Trainer:
    defaults = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
    )
    defaults.update(kwargs)
    return pl.Trainer(**defaults)


def fit_to_tensorboard(tmp_path, callback: Callback, *, max_steps: int, val_check_interval: int, module=None):
    """Fit ``module`` (default: ``make_module()``) on ``TinyData`` with ``callback`` and a TensorBoard
    logger writing into ``tmp_path``, one validation batch every ``val_check_interval`` steps; returns
    the run's events, read back whole (tensorboard's ``EventAccumulator``)."""
    from lightning.pytorch.loggers import TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    logger = TensorBoardLogger(tmp_path, name="", version="")
    trainer = make_trainer(
        max_steps=max_steps,
        val_check_interval=val_check_interval,
        check_val_every_n_epoch=None,
        limit_val_batches=1,
        logger=logger,
        callbacks=[callback],
    )
    trainer.fit(module if module is not None else make_module(), datamodule=TinyData())
    logger.experiment.flush()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0, "histograms": 0})
    events.Reload()
    return events


class Record(Callback):
    """Keeps the logged scalars of every optimizer step."""

    def __init__(self) -> None:
        self.steps: list[dict[str, float]] = []
        self._last = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step != self._last:
            self._last = trainer.global_step
            self.steps.append({k: float(v) for k, v in trainer.callback_metrics.items()})


def reference_training(
    module: LanguageModelModule,
    batches,
    *,
    clip: float | None,
    accumulate: int,
    steps: int,
    bf16_autocast: bool = False,
):
    """The same training with PyTorch's own optimizer, clipping and loss, on a copy of the initial model
    (with ``bf16_autocast``, its forward under ``torch.autocast("cpu", torch.bfloat16)``, as Lightning's
    ``bf16-mixed`` runs it on a CPU; the loss in float32)."""
    model = copy.deepcopy(module.model)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "token_embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2 or "token_embeddings" in n]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": OPTIMIZER["weight_decay"]},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=OPTIMIZER["lr"],
        betas=tuple(OPTIMIZER["betas"]),
        eps=OPTIMIZER["eps"],
    )
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: warmup_cosine(k + 1, 1.0, SCHEDULER["min_lr"] / OPTIMIZER["lr"], 2, 6)
    )
    norms, losses, lrs = [], [], []
    for step in range(steps):
        micro = []
        for x, y in batches[step * accumulate : (step + 1) * accumulate]:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_autocast):
                logits = model(x)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            (loss / accumulate).backward()
            micro.append(loss.item())
        losses.append(sum(micro) / len(micro))
        params = [p for p in model.parameters() if p.grad is not None]
        norms.append(float(torch.nn.utils.clip_grad_norm_(params, clip if clip else math.inf)))
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
        opt.zero_grad()
    return model, norms, losses, lrs


@pytest.mark.parametrize(("clip", "accumulate"), [(0.5, 1), (None, 1), (0.5, 2)])
def test_training_matches_pytorch_reference(clip: float | None, accumulate: int) -> None:
    steps = 4
    module, data = make_module(), TinyData()
    record = Record()
    trainer = make_trainer(
        max_steps=steps, gradient_clip_val=clip, accumulate_grad_batches=accumulate, callbacks=[record]
    )
    ref_model, ref_norms, ref_losses, ref_lrs = reference_training(
        module, data.batches, clip=clip, accumulate=accumulate, steps=steps
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == steps
    # Float rounding of two different cross-entropy kernels, which Adam's normalised first steps
    # amplify where a gradient is near zero, stays ~1e-5; a wrong group, rate, clip or batch is ~1e-3.
    for (name, ours), theirs in zip(module.model.named_parameters(), ref_model.parameters(), strict=True):
        assert (ours - theirs).abs().max().item() < 3e-5, name
    # grad_norm is pre-clip and scale-sensitive: it proves the 1/accumulate loss scaling too.
    assert [s["grad_norm"] for s in record.steps] == pytest.approx(ref_norms, rel=1e-5)
    assert [s["train/loss"] for s in record.steps] == pytest.approx(ref_losses, rel=1e-5)
    assert [s["lr"] for s in record.steps] == pytest.approx(ref_lrs, rel=1e-6)
    if clip:
        assert max(ref_norms) > clip  # clipping really happened


def test_bf16_mixed_on_a_cpu_trains_like_the_autocast_reference() -> None:
    """``trainer.precision=bf16-mixed`` on a CPU (the laptop recipe's setting: bfloat16 matmuls run several
    times faster on CPUs with bf16 instructions): Lightning's autocast runs the matmuls of our layers in
    bfloat16 while weights, optimizer state and loss stay float32. The losses follow PyTorch's own pieces
    under the same autocast to within bfloat16 rounding (8 bits of mantissa: ~4e-3 relative per op,
    accumulated over a few layers), far below what a wrong rate, group or dtype would change."""
    steps = 4
    module, data = make_module(), TinyData()
    record = Record()
    trainer = make_trainer(max_steps=steps, precision="bf16-mixed", callbacks=[record])
    _, _, ref_losses, _ = reference_training(
        module, data.batches, clip=None, accumulate=1, steps=steps, bf16_autocast=True
    )
    trainer.fit(module, datamodule=data)
    assert trainer.global_step == steps
    assert all(p.dtype == torch.float32 for p in module.model.parameters())
    state = trainer.optimizers[0].state
    assert all(s["exp_avg"].dtype == s["exp_avg_sq"].dtype == torch.float32 for s in state.values())
    assert [s["train/loss"] for s in record.steps] == pytest.approx(ref_losses, rel=2e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = module.model(data.val_x)
        loss = module.training_step((data.val_x, data.val_y), 0)
    assert logits.dtype == torch.bfloat16  # the matmuls really ran in bfloat16
    assert loss.dtype == torch.float32  # our cross-entropy computes in float32 whatever it is given


def test_validation_metrics_equal_an_independent_computation() -> None:
    module, data = make_module(), TinyData(val_windows=10)
    (metrics,) = make_trainer(limit_val_batches=None).validate(module, datamodule=data, verbose=False)
    with torch.no_grad():
        logits = module.model(data.val_x)  # all 10 windows at once: (10, CONTEXT, VOCAB)
        expected = F.cross_entropy(logits.flatten(0, 1), data.val_y.flatten()).item()
    assert metrics["val/loss"] == pytest.approx(expected, rel=1e-5)
    assert metrics["val/ppl"] == pytest.approx(math.exp(expected), rel=1e-5)
    assert metrics["val/bpb"] == pytest.approx(expected / math.log(2) / data.val_bytes_per_token, rel=1e-5)
    # Loss by position in the window: an independent per-token computation averaged over windows,
    # and (every window is whole) its mean over positions is val/loss.
    per_token = F.cross_entropy(logits.flatten(0, 1), data.val_y.flatten(), reduction="none")
    by_position = per_token.view(data.val_y.shape).mean(0)  # (CONTEXT,)
    torch.testing.assert_close(module.val_loss_by_position, by_position, rtol=1e-5, atol=1e-6)
    assert module.val_loss_by_position.mean().item() == pytest.approx(metrics["val/loss"], rel=1e-5)
    last = f"val/loss_by_position/{CONTEXT:0{len(str(CONTEXT))}d}"
    assert metrics[last] == pytest.approx(by_position[-1].item(), rel=1e-5)
    assert metrics[f"val/loss_by_position/{1:0{len(str(CONTEXT))}d}"] == pytest.approx(
        by_position[0].item(), rel=1e-5
    )


def test_parameter_groups_exempt_norms_and_embeddings() -> None:
    module = make_module()
    groups = {g["name"]: g for g in parameter_groups(module.model, 0.1)}
    norm_ids = {id(p) for m in module.model.modules() if isinstance(m, RMSNorm) for p in m.parameters()}
    emb_ids = {id(p) for m in module.model.modules() if isinstance(m, Embedding) for p in m.parameters()}
    no_decay = {id(p) for p in groups["no_decay"]["params"]}
    assert no_decay == norm_ids | emb_ids
    assert groups["no_decay"]["weight_decay"] == 0.0 and groups["decay"]["weight_decay"] == 0.1
    assert all(p.ndim == 2 for p in groups["decay"]["params"])
    total = sum(len(g["params"]) for g in groups.values())
    assert total == len(list(module.model.parameters()))

    everything = parameter_groups(module.model, 0.1, decay_norms=True, decay_embeddings=True)
    assert [g["name"] for g in everything] == ["decay"]


def test_tied_embedding_is_one_parameter_in_one_group() -> None:
    module = make_module(model={"tie_embeddings": True})
    groups = parameter_groups(module.model, 0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) == len(list(module.model.parameters()))
    no_decay = {id(p) for g in groups if g["name"] == "no_decay" for p in g["params"]}
    assert id(module.model.token_embeddings.weight) in no_decay


def test_schedule_steps_per_optimizer_step() -> None:
    lr, min_lr = 1e-3, 1e-4
    factors = [schedule_factor(k, lr, min_lr, 3, 10) for k in range(12)]
    assert factors[0] == pytest.approx(1 / 3)  # step 0 already trains: no step at lr 0
    assert factors[2] == pytest.approx(1.0)  # full rate at the end of warmup
    assert factors[9] * lr == pytest.approx(min_lr)  # the last step of the cycle runs at min_lr
    assert [f * lr for f in factors] == pytest.approx(
        [warmup_cosine(k + 1, lr, min_lr, 3, 10) for k in range(12)]
    )


def test_warmup_comes_from_the_scheduler_schema() -> None:
    """warmup_iters (steps) wins when set; otherwise warmup_fraction of cosine_cycle_iters; a bad value
    is refused naming the key."""

    def first_factor(**scheduler) -> float:
        config = make_module(scheduler=scheduler).configure_optimizers()
        return config["lr_scheduler"]["scheduler"].lr_lambdas[0](0)

    assert first_factor() == pytest.approx(1 / 2)  # SCHEDULER: warmup_iters=2
    assert first_factor(warmup_iters=None, warmup_fraction=0.5) == pytest.approx(1 / 3)  # 3 of 6 steps
    no_warmup = schedule_factor(0, OPTIMIZER["lr"], SCHEDULER["min_lr"], 0, SCHEDULER["cosine_cycle_iters"])
    assert first_factor(warmup_iters=None, warmup_fraction=0.0) == pytest.approx(no_warmup)
    with pytest.raises(ValueError, match=r"lr=-1: expected a positive number"):
        make_module(optimizer={"lr": -1}).configure_optimizers()


def test_compiled_module_keeps_a_clean_state_dict(monkeypatch) -> None:
    compiled = []
    original = torch.nn.Module.compile

    def spy(self, *args, **kwargs):
        compiled.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Module, "compile", spy)
    module = make_module(compile=True)  # compiled in place; never called here, so nothing compiles yet
    assert compiled == [module.model]
    keys = list(module.state_dict())
    assert keys and all(k.startswith("model.") and "_orig_mod" not in k for k in keys)
    assert keys == list(make_module().state_dict())


def test_checkpoint_of_another_shape_is_refused_naming_the_field() -> None:
    small, wide = make_module(), make_module(model={"d_model": 64})
    checkpoint: dict = {"state_dict": small.state_dict()}
    small.on_save_checkpoint(checkpoint)
    with pytest.raises(ValueError, match=r"another shape \(d_model: checkpoint 32, config 64"):
        wide.on_load_checkpoint(checkpoint)
    small.on_load_checkpoint(checkpoint)  # same shape: accepted


def test_checkpoint_restores_rng_states() -> None:
    module = make_module()
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.rand(5), np.random.rand(5), random.random()  # move every generator on
    module.on_load_checkpoint(checkpoint)
    again = (torch.rand(3), np.random.rand(3), random.random())
    # The same generators from the same states run the same algorithm: bit-identical draws on any CPU.
    torch.testing.assert_close(again[0], expected[0], atol=0, rtol=0)
    np.testing.assert_array_equal(again[1], expected[1])
    assert again[2] == expected[2]


@pytest.mark.slow
def test_compile_also_compiles_the_loss_and_the_optimizer_update():
    """compile=true compiles a training step's arithmetic beyond the model: the loss (same value and
    gradient as the eager one, to rounding) and AdamW's flat update (``compiled_update``)."""
    assert make_module(compile=True).configure_optimizers()["optimizer"].compiled_update
    assert not make_module().configure_optimizers()["optimizer"].compiled_update
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 50, requires_grad=True)
    targets = torch.randint(0, 50, (3, 7))
    eager = cross_entropy(logits, targets)
    (eager_grad,) = torch.autograd.grad(eager, logits)
    compiled = compiled_cross_entropy()(logits, targets)
    (compiled_grad,) = torch.autograd.grad(compiled, logits)
    torch.testing.assert_close(compiled, eager, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(compiled_grad, eager_grad, atol=1e-7, rtol=1e-5)
