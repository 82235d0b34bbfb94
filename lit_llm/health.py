"""``NetworkHealth``: the quantities that say *why* a run behaves as it does, logged every
``every_n_steps`` optimizer steps under ``health/`` (the ``callbacks.health`` node of the config).

- ``health/grad_norm/<matrix>``: the L2 norm of each weight matrix's gradient (before clipping), e.g.
  ``health/grad_norm/layers.0.attn.q_proj``. A layer whose gradient vanishes or explodes shows here
  first, long before the loss says anything.
- ``health/update_ratio_log10/<matrix>``: log10(||W_after - W_before|| / ||W_before||), the relative
  size of the change AdamW actually made in this step (after clipping, weight decay included). The
  rule of thumb is about -3 (1e-3): much lower, the matrix is barely learning; towards -1, the rate
  is too high for it.
- ``health/residual_rms/layers.<i>``: RMS of the residual stream after block i. Growing without bound
  across layers or over training is the classic sign of a pre-norm stack drifting.
- ``health/attn_entropy/layers.<i>/mean`` and ``/min``: entropy (nats) of the attention weights of
  layer i, averaged over queries, then over heads (mean) or the lowest head (min). A head whose min
  falls towards 0 has collapsed onto one key.
- ``health/max_logit``: the largest absolute logit: logits that keep growing make softmax saturate.
- ``health/clip_fraction``: the fraction of optimizer steps since the previous log whose gradient
  norm exceeded ``trainer.gradient_clip_val`` (only with clipping on).

Cost: on the steps it logs, a copy of the weights before the step, a few foreach norms and one
eager forward pass over ``windows`` windows of that step's batch; the numbers are gathered into one
tensor and read once. On the other steps it does nothing (the clipping count is a device tensor kept
by ``LanguageModelModule``): no host sync per step. Rank 0 computes and logs; in DDP its gradients and
weights are everyone's. A compiled model is traced eagerly (``lit_llm.model.trace``). Training is
unchanged by it: nothing here touches a gradient, a weight or a random number generator.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_llm.model.trace import attention_entropy, trace_forward


def matrix_name(parameter_name: str) -> str:
    """``layers.0.attn.q_proj.weight`` -> ``layers.0.attn.q_proj``: the tag of a weight matrix."""
    return parameter_name.removesuffix(".weight")


def update_ratio_log10(before: list[Tensor], after: list[Tensor]) -> Tensor:
    """log10(||after - before|| / ||before||) of each pair of tensors: (n,). An update of exactly zero
    gives -inf (TensorBoard leaves the point out), as it should: nothing changed."""
    changes = torch.stack(torch._foreach_norm(torch._foreach_sub(after, before)))  # (n,)
    sizes = torch.stack(torch._foreach_norm(before))  # (n,)
    return torch.log10(changes / sizes.clamp(min=torch.finfo(sizes.dtype).tiny))


class NetworkHealth(Callback):
    """Per-matrix gradient norms and update-to-weight ratios, residual RMS and attention entropy per
    layer, the largest logit and the clipped fraction of steps, every ``every_n_steps`` optimizer
    steps (the first included), traced on the first ``windows`` windows of that step's batch."""

    def __init__(self, every_n_steps: int = 50, windows: int = 4) -> None:
        if not (isinstance(every_n_steps, int) and every_n_steps >= 1):
            raise ValueError(f"every_n_steps={every_n_steps!r}: expected a positive integer")
        if not (isinstance(windows, int) and windows >= 1):
            raise ValueError(f"windows={windows!r}: expected a positive integer")
        self.every_n_steps, self.windows = every_n_steps, windows
        self._names: list[str] = []
        self._params: list[Tensor] = []
        self._grad_norms: Tensor | None = None  # (matrices,) of the step being taken
        self._before: list[Tensor] | None = None  # the weights before it
        self._clipped_at_last_log: Tensor | None = None
        self._step_at_last_log = 0
        self._step = 0  # index of the optimizer step being measured
        self._enabled = True

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if isinstance(trainer.strategy, FSDPStrategy):
            rank_zero_warn("callbacks.health: FSDP shards the weights across ranks; network health is off")
            self._enabled = False
            return
        named = [(matrix_name(n), p) for n, p in pl_module.model.named_parameters() if p.ndim >= 2]
        self._names, self._params = [n for n, _ in named], [p for _, p in named]
        self._step_at_last_log = trainer.global_step

    def _due(self, trainer: pl.Trainer) -> bool:
        return (
            self._enabled
            and trainer.is_global_zero
            and bool(trainer.loggers)
            and trainer.global_step % self.every_n_steps == 0
        )

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        # Lightning calls this after backward (and after unscaling fp16 gradients), before clipping and
        # before the step: the gradients are those of the whole optimizer step, not yet clipped.
        if not self._due(trainer):
            return
        with torch.no_grad():
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self._params]
            self._grad_norms = torch.stack(torch._foreach_norm(grads)).float()  # (matrices,)
            self._before = [p.detach().clone() for p in self._params]
        self._step = trainer.global_step  # logged at the step's own index, as Lightning logs train/loss

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._before is None:  # not a logging step, or mid-accumulation before its optimizer step
            return
        with torch.no_grad():
            ratios = update_ratio_log10(self._before, [p.detach() for p in self._params]).float()
            self._before = None
            token_ids = batch[0][: self.windows]  # (windows, seq)
            trace = trace_forward(pl_module.model, token_ids)
            rms = torch.stack([x.float().pow(2).mean().sqrt() for x in trace.residuals])  # (layers,)
            entropies = torch.stack([attention_entropy(w) for w in trace.attention])  # (layers, heads)
            parts = [
                self._grad_norms,
                ratios,
                rms,
                entropies.mean(dim=1),
                entropies.amin(dim=1),
                trace.logits.abs().amax().float().reshape(1),
            ]
            clipping = bool(trainer.gradient_clip_val)
            if clipping:
                parts.append(self._clip_fraction(trainer, pl_module).reshape(1))
            values = torch.cat([part.to(torch.float32).cpu() for part in parts]).tolist()  # the one read
        metrics = dict(zip(self._tags(len(rms), clipping), values, strict=True))
        for logger in trainer.loggers:
            logger.log_metrics(metrics, step=self._step)

    def _clip_fraction(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor:
        """Clipped steps / steps since the previous log (a device tensor; read with the rest)."""
        clipped = getattr(pl_module, "clipped_steps", None)
        if clipped is None:
            clipped = torch.zeros((), dtype=torch.long, device=pl_module.device)
        before = self._clipped_at_last_log if self._clipped_at_last_log is not None else 0
        steps = max(trainer.global_step - self._step_at_last_log, 1)
        self._clipped_at_last_log, self._step_at_last_log = clipped.clone(), trainer.global_step
        return (clipped - before).float() / steps

    def _tags(self, layers: int, clipping: bool) -> list[str]:
        """The names of the values in the order ``on_train_batch_end`` concatenates them."""
        blocks = [f"layers.{i}" for i in range(layers)]
        return [
            *(f"health/grad_norm/{n}" for n in self._names),
            *(f"health/update_ratio_log10/{n}" for n in self._names),
            *(f"health/residual_rms/{b}" for b in blocks),
            *(f"health/attn_entropy/{b}/mean" for b in blocks),
            *(f"health/attn_entropy/{b}/min" for b in blocks),
            "health/max_logit",
            *(["health/clip_fraction"] if clipping else []),
        ]
