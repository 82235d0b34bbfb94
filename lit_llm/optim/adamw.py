"""AdamW (Loshchilov & Hutter, 2019) and global gradient-norm clipping, from scratch.

Both work on whole lists of tensors with ``torch._foreach_*`` ops: one call updates every parameter of
a group (a multi-tensor kernel on GPU, a C++ loop on CPU), so a step is a handful of Python calls
instead of a handful per parameter.
"""

from __future__ import annotations

import functools
import math
import operator
from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def _group_by_device_and_dtype(*parallel: list) -> list[list[list]]:
    """Split parallel lists into groups whose tensors (those of the first list) share a device and a
    dtype, as a foreach kernel needs; the other lists (gradients, states, step counts) follow along."""
    groups: dict[tuple[torch.device, torch.dtype], list[list]] = {}
    for items in zip(*parallel, strict=True):
        lists = groups.setdefault((items[0].device, items[0].dtype), [[] for _ in parallel])
        for lst, item in zip(lists, items, strict=True):
            lst.append(item)
    return list(groups.values())


class _FlatLayout:
    """The parameters of one param group and both Adam moments as views of three flat buffers.

    On a CPU a foreach op is a loop of one small kernel per tensor, about 5 us each before any
    arithmetic: eight ops over the 39 tensors of a small model are a few hundred kernel calls per
    step, where the same ops on one flat buffer are eight (3.3-3.6 ms -> 1.9 ms a step at the
    ablation_base size; ``torch.optim.AdamW(fused=True)``, one pass instead of eight, takes 0.9 ms).
    So on the CPU the parameters' storage is moved into
    one buffer (``p.data`` becomes a view of it; values, shapes and the Parameter objects are
    unchanged), the moments are created there, and a step gathers the gradients with one ``cat``.

    Anything that replaces a parameter's or moment's tensor (``.to()``, ``load_state_dict`` of the
    optimizer) breaks the layout; ``holds`` notices and the layout is rebuilt, values copied.
    """

    def __init__(self, params: list[Tensor], state: dict) -> None:
        sizes = [p.numel() for p in params]
        self.params = params
        self.param = torch.cat([p.detach().reshape(-1) for p in params])
        self.exp_avg = torch.cat([state[p]["exp_avg"].reshape(-1) for p in params])
        self.exp_avg_sq = torch.cat([state[p]["exp_avg_sq"].reshape(-1) for p in params])
        values, ms, vs = (b.split(sizes) for b in (self.param, self.exp_avg, self.exp_avg_sq))
        for p, value, m, v in zip(params, values, ms, vs, strict=True):
            p.data = value.view(p.shape)
            state[p]["exp_avg"], state[p]["exp_avg_sq"] = m.view(p.shape), v.view(p.shape)
        # Reused every step: two fewer fresh buffers of the model's size per step (on a CPU, fresh
        # memory is page faults).
        self.grad = torch.empty_like(self.param)
        self.denominator = torch.empty_like(self.param)
        self._pointers = [p.data_ptr() for p in params]
        self._states = [state[p] for p in params]
        self._exp_avgs = [s["exp_avg"] for s in self._states]
        self._exp_avg_sqs = [s["exp_avg_sq"] for s in self._states]

    def holds(self, params: list[Tensor], state: dict) -> bool:
        """Are ``params`` and their moments still exactly the tensors this layout made (same objects,
        same storage)? Written with ``map`` over whole lists: it runs every step (``gradients``)."""
        return (
            len(params) == len(self.params)
            and all(map(operator.is_, params, self.params))
            and [p.data_ptr() for p in params] == self._pointers
            and all(map(operator.is_, [state[p] for p in params], self._states))
            and all(map(operator.is_, [s["exp_avg"] for s in self._states], self._exp_avgs))
            and all(map(operator.is_, [s["exp_avg_sq"] for s in self._states], self._exp_avg_sqs))
        )

    def gradients(self, group: dict, state: dict) -> list[Tensor] | None:
        """The gradients of a step this layout can take as it is, in ``params`` order; None when it
        cannot (the group or a tensor was replaced, or a parameter has no gradient or a sparse one),
        and ``AdamW.step`` takes the general path, which rebuilds the layout where it applies.

        Why a path of its own: the general one walks the parameters one by one in Python (state
        lookups, lists, checks). Here every check is one C-level pass over a list, and the step counts,
        equal by construction, advance together: at the ablation_base size a step takes 0.12-0.14 ms
        less (1.49-1.87 ms instead of 1.61-2.00; ``torch.optim.AdamW(fused=True)``: 0.84-1.04 ms)."""
        grads = [p.grad for p in self.params]
        if any(g is None or g.is_sparse for g in grads) or not self.holds(group["params"], state):
            return None
        return grads

    def advance(self) -> int:
        """Count one more step on every parameter (they all have the same count); return it."""
        for s in self._states:
            s["step"] += 1
        return self._states[0]["step"]


def _flattenable(group: dict, params: list[Tensor], steps: list[int]) -> bool:
    """The flat path applies to a group of dense CPU tensors of one dtype that all have a gradient and
    have taken the same number of steps (elsewhere, or for anything unusual, the foreach path)."""
    first = params[0]
    return (
        len(params) == len(group["params"])
        and len(set(steps)) == 1
        and all(
            type(p) in (torch.nn.Parameter, Tensor) and p.device.type == "cpu" and p.dtype == first.dtype
            for p in params
        )
    )


class AdamW(torch.optim.Optimizer):
    """Adam with decoupled weight decay.

    For each parameter p with gradient g, at step t (counted per parameter):
        p   <- p * (1 - lr * weight_decay)                  # decay, decoupled from the gradient
        m   <- beta1 * m + (1 - beta1) * g                   # first moment (as lerp toward g)
        v   <- beta2 * v + (1 - beta2) * g * g               # second moment
        p   <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    These are the operations of ``torch.optim.AdamW`` (amsgrad=False, maximize=False) in the same order
    and with the same association (decay first; m by lerp; eps added after dividing sqrt(v) by the
    bias-correction root), so both give the same parameters to float rounding (bit for bit against its
    default CPU implementation in tests/test_optim.py). Parameters without a gradient are skipped and
    their step count does not advance. On a CPU a group is updated as one flat vector (``_FlatLayout``:
    the same ops on the same numbers, in a handful of kernels).

    ``compiled_update=True`` (what ``compile=true`` training sets) runs that flat update as one kernel
    that ``torch.compile`` generates from ``_flat_update``, the same formulas written once more as
    tensor expressions: one pass over the parameters instead of eight. At the ablation_base size a whole
    ``step()`` takes 0.81 ms instead of 1.45 (``torch.optim.AdamW(fused=True)``: 0.57 ms); what is left
    is the Python above and the ``cat`` of the gradients. The compiler may order the float operations
    of a fused kernel differently, so it agrees with the eager update to rounding, not bit for bit.
    Elsewhere (not on a CPU, or a group the flat path does not take) nothing changes.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.01,
        *,
        compiled_update: bool = False,
    ) -> None:
        problems = []
        if not lr >= 0.0:
            problems.append(f"lr={lr}: expected >= 0")
        if not 0.0 <= betas[0] < 1.0:
            problems.append(f"betas[0]={betas[0]}: expected in [0, 1)")
        if not 0.0 <= betas[1] < 1.0:
            problems.append(f"betas[1]={betas[1]}: expected in [0, 1)")
        if not eps >= 0.0:
            problems.append(f"eps={eps}: expected >= 0")
        if not weight_decay >= 0.0:
            problems.append(f"weight_decay={weight_decay}: expected >= 0")
        if problems:
            raise ValueError("AdamW: " + "; ".join(problems))
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay))
        self._flat: dict[int, _FlatLayout] = {}  # by param group index; derived, not in state_dict
        self.compiled_update = compiled_update

    @torch.no_grad()
    def step(self, closure: Callable[[], Tensor] | None = None) -> Tensor | None:
        """One update of every parameter that has a gradient. ``closure`` (as Lightning passes it)
        re-computes the loss with autograd enabled; its loss is returned."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for index, group in enumerate(self.param_groups):
            layout = self._flat.get(index)
            grads = layout.gradients(group, self.state) if layout is not None else None
            if grads is not None:  # the common case: the same flat group as last step, every gradient
                self._flat_step(layout, grads, group, layout.advance())
                continue
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("AdamW does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            if _flattenable(group, params, steps):
                layout = self._flat.get(index)
                if layout is None or not layout.holds(params, self.state):
                    layout = self._flat[index] = _FlatLayout(params, self.state)
                self._flat_step(layout, grads, group, steps[0])
            else:
                # Step counts may now differ between the parameters: no flat step until a layout is
                # rebuilt (by the check above, which requires equal counts).
                self._flat.pop(index, None)
                self._update(params, grads, exp_avgs, exp_avg_sqs, steps, group)
        return loss

    def _flat_step(self, layout: _FlatLayout, grads: list[Tensor], group: dict, t: int) -> None:
        """Step ``t`` of a group held by ``layout``, its gradients gathered into one flat vector."""
        grad = torch.cat([g.reshape(-1) for g in grads], out=layout.grad)  # (total elements,)
        if self.compiled_update:
            lr, (beta1, beta2), wd = group["lr"], group["betas"], group["weight_decay"]
            # The values that change from step to step go in as a tensor, not as Python floats,
            # which the compiled kernel would have as constants (a new compilation every step).
            per_step = torch.tensor([1.0 - lr * wd, -lr / (1.0 - beta1**t), math.sqrt(1.0 - beta2**t)])
            flat = layout.param, grad, layout.exp_avg, layout.exp_avg_sq
            _compiled_flat_update()(*flat, per_step, beta1, beta2, group["eps"])
            return
        moments = [layout.exp_avg], [layout.exp_avg_sq]
        self._update([layout.param], [grad], *moments, [t], group, denominators=[layout.denominator])

    @staticmethod
    def _update(
        params: list[Tensor],
        grads: list[Tensor],
        exp_avgs: list[Tensor],
        exp_avg_sqs: list[Tensor],
        steps: list[int],
        group: dict,
        denominators: list[Tensor] | None = None,
    ) -> None:
        """The update of the class docstring on lists of tensors; ``denominators``, where given, are
        buffers (shaped like ``params``) for sqrt(v) / sqrt(1 - beta2^t) + eps."""
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        # The step counts are Python ints on the host: the bias corrections never wait on the device.
        for p, g, m, v, t in _group_by_device_and_dtype(params, grads, exp_avgs, exp_avg_sqs, steps):
            if wd != 0:
                torch._foreach_mul_(p, 1.0 - lr * wd)
            torch._foreach_lerp_(m, g, 1.0 - beta1)
            torch._foreach_mul_(v, beta2)
            torch._foreach_addcmul_(v, g, g, 1.0 - beta2)
            step_sizes = [-lr / (1.0 - beta1**n) for n in t]
            bias_correction2_roots = [math.sqrt(1.0 - beta2**n) for n in t]
            if denominators is None:
                denom = torch._foreach_sqrt(v)
            else:
                denom = [torch.sqrt(x, out=d) for x, d in zip(v, denominators, strict=True)]
            torch._foreach_div_(denom, bias_correction2_roots)
            torch._foreach_add_(denom, eps)
            torch._foreach_addcdiv_(p, m, denom, step_sizes)


def _flat_update(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    per_step: Tensor,
    beta1: float,
    beta2: float,
    eps: float,
) -> None:
    """The update of ``AdamW``'s docstring on one flat group, in place, for ``torch.compile`` to fuse.
    ``per_step``: (3,) = 1 - lr * weight_decay, -lr / (1 - beta1^t), sqrt(1 - beta2^t)."""
    decay, step_size, bias_correction2_root = per_step.unbind()
    param.mul_(decay)
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    param.add_(exp_avg / (exp_avg_sq.sqrt() / bias_correction2_root + eps) * step_size)


@functools.cache
def _compiled_flat_update() -> Callable[..., None]:
    """``_flat_update`` compiled, once per process (and only when asked for: compiling costs seconds)."""
    return torch.compile(_flat_update, fullgraph=True)


def clip_grad_norm(parameters: Iterable[Tensor] | Tensor, max_norm: float, eps: float = 1e-6) -> Tensor:
    """Scale all gradients in place so their global L2 norm is at most ``max_norm``.

    Returns the norm before clipping, as a tensor: reading it as a Python number would make the host
    wait for the device, so there the scale ``min(1, max_norm / (norm + eps))`` is applied
    unconditionally (a multiply by 1 when no clipping is needed) instead of branching on it; on the CPU,
    where reading it costs nothing, the multiply by 1 is skipped. ``max_norm=math.inf``
    only measures (a host-side check: no pass over the gradients). ``parameters`` may be a generator
    (it is read once into a list) or a single tensor.
    """
    params = [parameters] if isinstance(parameters, Tensor) else list(parameters)
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    per_group_norms = []
    for (group,) in _group_by_device_and_dtype(grads):
        norms = torch._foreach_norm(group, 2.0)  # one L2 norm per tensor
        per_group_norms.append(torch.linalg.vector_norm(torch.stack(norms), 2.0).to(grads[0].device))
    total_norm = torch.linalg.vector_norm(torch.stack(per_group_norms), 2.0)
    if math.isinf(max_norm):
        return total_norm
    # On the CPU the norm is already computed when it is read (there is no queue of device work to wait
    # for), so the branch is free, and the pass over every gradient is skipped when nothing needs clipping.
    if total_norm.device.type == "cpu" and max_norm / (total_norm.item() + eps) >= 1.0:
        return total_norm
    scale = torch.clamp(max_norm / (total_norm + eps), max=1.0)
    for (group,) in _group_by_device_and_dtype(grads):
        torch._foreach_mul_(group, scale.to(group[0].device, group[0].dtype))
    return total_norm
