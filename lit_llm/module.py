"""``LanguageModelModule``: a ``TransformerLM`` trained by Lightning with our own optimisation pieces.

Lightning owns the loop, devices, precision, distribution and checkpoint files; this module owns what
is specific to language modelling: the loss, our AdamW with its parameter groups, the warmup-cosine
schedule (stepped per optimizer step), our gradient clipping, and the validation metrics
``val/loss``, ``val/ppl`` and ``val/bpb`` computed over the data module's fixed validation windows.

Checkpoints carry ``hyper_parameters`` made of plain dicts only, so they load with
``torch.load(weights_only=True)``, and ``compile=True`` compiles the model in place
(``nn.Module.compile``), so the state dict keys (``model.*``) are the same compiled or not. It compiles
the rest of a training step's arithmetic too: the training loss and AdamW's update (``compiled_update``).
At the ablation_base size that is 0.67 -> 0.38 ms (loss, forward and backward) and 1.45 -> 0.81 ms
(optimizer step) of a ~45 ms compiled step.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.strategies import FSDPStrategy
from torch import Tensor, nn

from lit_llm.config_schema import OptimizerConfig, SchedulerConfig
from lit_llm.losses import cross_entropy, token_cross_entropy
from lit_llm.model import ModelConfig, TransformerLM
from lit_llm.model.layers import Embedding
from lit_llm.optim import AdamW, clip_grad_norm, warmup_cosine

LN2 = math.log(2.0)


def parameter_groups(
    model: nn.Module, weight_decay: float, *, decay_norms: bool = False, decay_embeddings: bool = False
) -> list[dict[str, Any]]:
    """Split parameters into a "decay" and a "no_decay" group for AdamW.

    Decay shrinks weights towards zero; that regularises matrices but only hurts norm gains (whose
    neutral value is 1) and embedding rows (which see few updates each), hence the defaults. A tied
    lm_head shares the embedding's Parameter and is counted once, with the embedding.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    seen: set[int] = set()
    for module in model.modules():
        is_embedding = isinstance(module, Embedding | nn.Embedding)
        for param in module.parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if is_embedding:
                wants_decay = decay_embeddings
            elif param.ndim < 2:
                wants_decay = decay_norms
            else:
                wants_decay = True
            (decay if wants_decay else no_decay).append(param)
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


@functools.cache
def compiled_cross_entropy() -> Callable[[Tensor, Tensor], Tensor]:
    """``lit_llm.losses.cross_entropy`` under ``torch.compile``, built once per process: its softmax,
    log and gather become a few fused kernels, forward and backward."""
    return torch.compile(cross_entropy, fullgraph=True)


def schedule_factor(step: int, lr: float, min_lr: float, warmup_iters: int, cosine_cycle_iters: int) -> float:
    """LambdaLR factor for optimizer step ``step`` (0-based): ``warmup_cosine(step + 1) / lr``.

    The +1 means no step is wasted at learning rate 0, and the last step of a ``cosine_cycle_iters``
    long run is taken at exactly ``min_lr``.
    """
    return warmup_cosine(step + 1, lr, min_lr, warmup_iters, cosine_cycle_iters) / lr


class LanguageModelModule(pl.LightningModule):
    """Train ``TransformerLM`` from plain config dicts (the ``model``, ``optimizer`` and ``scheduler``
    groups of the Hydra config); their keys: ``ModelConfig``, and ``OptimizerConfig`` and
    ``SchedulerConfig`` in lit_llm/config_schema.py."""

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any],
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.config = ModelConfig.from_dict(dict(model))
        # Derived values recorded as built (d_ff: None -> the width used), so the checkpoint and the
        # TensorBoard HParams table say what the model is; loading it builds the same model.
        resolved = {**dict(model), "d_ff": self.config.resolved_d_ff}
        self.save_hyperparameters(
            {"model": resolved, "optimizer": optimizer, "scheduler": scheduler, "compile": compile}
        )
        self.model = TransformerLM.from_config(self.config)
        self._compiled = compile
        if compile:
            self.model.compile()  # in place: same module, same parameter names
        self._train_loss_sum: Tensor | None = None
        self._train_loss_count = 0
        self._val_loss_sum: Tensor | None = None
        self._val_token_count: Tensor | None = None
        self.val_loss_by_position: Tensor | None = None  # (seq,) after each validation
        # Optimizer steps whose gradient norm exceeded the clipping bound, counted on the device (read by
        # lit_llm.health.NetworkHealth as the fraction of steps clipped between its logs).
        self.clipped_steps: Tensor | None = None
        self.spike_guard: Any = None  # lit_llm.spike_guard.SpikeGuard, set by that callback when present

    def forward(self, token_ids: Tensor) -> Tensor:
        """(batch, seq) int64 -> logits (batch, seq, vocab)."""
        return self.model(token_ids)

    # -- training ---------------------------------------------------------------------------------

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch  # (batch, seq) each; y is x shifted by one token
        loss = (compiled_cross_entropy() if self._compiled else cross_entropy)(self(x), y)
        if self.spike_guard is not None and not self.spike_guard.check_loss(self, loss):
            return None  # a loss spike: Lightning takes None as "no backward, no optimizer step"
        # Averaged over the micro-batches of one optimizer step and logged in on_before_optimizer_step;
        # kept on the device so that logging never forces a sync per step.
        detached = loss.detach()
        self._train_loss_sum = detached if self._train_loss_sum is None else self._train_loss_sum + detached
        self._train_loss_count += 1
        return loss

    def _writes_logs(self) -> bool:
        """True on the optimizer steps whose metrics Lightning writes to the loggers (every
        ``trainer.log_every_n_steps``, and the last one).

        ``self.log`` costs 1-2 ms of Python per call on a CPU (Lightning moves and wraps every value):
        three per step were a tenth of an ``ablation_base`` step. Values of the other steps would be
        overwritten before anyone reads them, so they are only handed over on these steps. Lightning
        asks the same question (``should_update_logs``) when it writes; it holds for the whole step.
        """
        trainer = self._trainer
        return trainer is None or trainer._logger_connector.should_update_logs

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._writes_logs():
            if self._train_loss_sum is not None:
                self.log("train/loss", self._train_loss_sum / self._train_loss_count, prog_bar=True)
            # The rate this step will use; all groups share it (only weight decay differs).
            self.log("lr", float(optimizer.param_groups[0]["lr"]))
        self._train_loss_sum, self._train_loss_count = None, 0

    def configure_gradient_clipping(
        self,
        optimizer: torch.optim.Optimizer,
        gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip with our ``clip_grad_norm`` and log the pre-clip norm it returns as ``grad_norm`` on
        logging steps (a tensor: Lightning reads it only when it writes the logs: no sync per step). Without
        ``gradient_clip_val`` the bound is infinite: the gradients are scaled by exactly 1, and the norm
        comes from the same function."""
        if gradient_clip_algorithm not in (None, "norm"):
            raise ValueError(
                f"trainer.gradient_clip_algorithm={gradient_clip_algorithm!r}: only 'norm' is supported"
            )
        max_norm = gradient_clip_val if gradient_clip_val else math.inf
        if isinstance(self.trainer.strategy, FSDPStrategy):
            # Sharded gradients: the global norm needs every rank's shard, which FSDP's own
            # clip_grad_norm_ all-reduces; ours would see only this rank's shard.
            norm = self.trainer.strategy.model.clip_grad_norm_(max_norm)
        else:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            norm = clip_grad_norm(params, max_norm)
        if math.isfinite(max_norm):  # without a bound nothing is clipped: no op per step to count it
            clipped = (norm > max_norm).long()  # a 0-d tensor: counted without reading it
            self.clipped_steps = clipped if self.clipped_steps is None else self.clipped_steps + clipped
        if self._writes_logs():
            self.log("grad_norm", norm)

    def configure_optimizers(self) -> dict[str, Any]:
        # The schema classes check every value and give warmup_fraction / warmup_iters their meaning.
        opt = OptimizerConfig(**self.hparams.optimizer)
        sched = SchedulerConfig(**self.hparams.scheduler)
        groups = parameter_groups(
            self.model, opt.weight_decay, decay_norms=opt.decay_norms, decay_embeddings=opt.decay_embeddings
        )
        optimizer = AdamW(
            groups, lr=opt.lr, betas=tuple(opt.betas), eps=opt.eps, compiled_update=self._compiled
        )
        lr, min_lr, warmup, cycle = opt.lr, sched.min_lr, sched.warmup_steps, sched.cosine_cycle_iters

        def factor(step: int) -> float:
            return schedule_factor(step, lr, min_lr, warmup, cycle)

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # -- validation -------------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_loss_sum = torch.zeros((), device=self.device)
        self._val_token_count = torch.zeros((), device=self.device)
        # (context,) each: losses summed over windows at each position, and how many windows reached it
        self._val_position_sum = torch.zeros(self.config.context_length, device=self.device)
        self._val_position_count = torch.zeros(self.config.context_length, device=self.device)

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        x, y = batch  # (windows, seq) each
        losses = token_cross_entropy(self(x), y).float()  # (windows, seq)
        # Token-weighted, so a short last batch counts for what it holds; and by position in the window.
        self._val_loss_sum += losses.sum()
        self._val_token_count += y.numel()
        self._val_position_sum[: y.shape[1]] += losses.sum(0)
        self._val_position_count[: y.shape[1]] += y.shape[0]

    def on_validation_epoch_end(self) -> None:
        # A sum over ranks is right whether the ranks share the windows or split them.
        total = self.trainer.strategy.reduce(self._val_loss_sum, reduce_op="sum")
        count = self.trainer.strategy.reduce(self._val_token_count, reduce_op="sum")
        val_loss = total / count.clamp(min=1)
        self.log("val/loss", val_loss, prog_bar=True, sync_dist=True)
        self._log_loss_by_position()
        self.log("val/ppl", torch.exp(val_loss), sync_dist=True)
        bytes_per_token = getattr(self.trainer.datamodule, "val_bytes_per_token", None)
        if bytes_per_token:
            # nats/token -> bits/token -> bits/byte: comparable across tokenizers.
            self.log("val/bpb", val_loss / LN2 / float(bytes_per_token), prog_bar=True, sync_dist=True)

    def _log_loss_by_position(self) -> None:
        """How much context helps: the mean validation loss at each position of the window (position
        p predicts token p + 1 from p + 1 tokens). Kept whole in ``val_loss_by_position``; logged at
        positions 0, 1, 3, 7, ... and the last, as ``val/loss_by_position/<p+1 tokens of context>``
        (zero-padded, so TensorBoard lists them in order). The curve averages to ``val/loss``."""
        # Reduced on every rank first (a collective), then the same decision everywhere.
        sums = self.trainer.strategy.reduce(self._val_position_sum, reduce_op="sum")
        windows = self.trainer.strategy.reduce(self._val_position_count, reduce_op="sum")
        seq = int((windows > 0).sum().item())  # positions some window reached (all, in practice)
        if seq == 0:
            return
        self.val_loss_by_position = (sums[:seq] / windows[:seq]).detach()  # (seq,)
        width = len(str(self.config.context_length))
        for p in sorted({*(2**k - 1 for k in range(seq.bit_length()) if 2**k - 1 < seq), seq - 1}):
            self.log(f"val/loss_by_position/{p + 1:0{width}d}", self.val_loss_by_position[p])

    # -- checkpoints ------------------------------------------------------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["model_config"] = self.config.to_dict()
        checkpoint["rng_states"] = _rng_states()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse a checkpoint of another model shape with one line naming the config fields that differ
        and the first parameter that does not fit (``lit_llm.checkpoint.check_state_dict``)."""
        from lit_llm.checkpoint import CheckpointError, check_state_dict

        try:
            check_state_dict("checkpoint", self.state_dict(), checkpoint.get("state_dict", {}))
        except CheckpointError as e:
            saved = checkpoint.get("model_config") or {}
            current = self.config.to_dict()
            fields = [
                f"{k}: checkpoint {saved[k]!r}, config {current[k]!r}"
                for k in current
                if k in saved and saved[k] != current[k]
            ]
            raise ValueError(
                f"checkpoint holds a model of another shape ({'; '.join([*fields, e.problem])})"
            ) from None
        if "rng_states" in checkpoint:
            _set_rng_states(checkpoint["rng_states"])


def _rng_states() -> dict[str, Any]:
    """torch, numpy and Python RNG states as tensors and plain values (safe for weights_only loads)."""
    _, keys, pos, has_gauss, cached_gaussian = np.random.get_state()
    states: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state()
    return states


def _set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    np_state = states["numpy"]
    np.random.set_state(
        (
            "MT19937",
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state(states["cuda"])
