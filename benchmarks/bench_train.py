"""Tokens/s of training through `lit_llm.train` (Lightning, as a user runs it) against a bare PyTorch loop
doing the same work, in the same process; then the wall time and final val/bpb of the real quickstart.

Same work on both paths: the quickstart model, data windows (the same TokenWindowDataModule, from step 0),
our AdamW with the same parameter groups, warmup-cosine schedule, our gradient clipping and loss; over
the timed steps, one validation on the same fixed windows followed by a checkpoint (model + optimizer),
a final checkpoint, and reading the loss every ``log_every_n_steps`` steps. The Lightning path keeps
everything a user gets (TensorBoard logger, rich progress bar, throughput/LR/grad-norm logging, the
non-finite guard, atomic last/best checkpoints) except text samples, which the bare loop has no
counterpart for. The timed span starts after ``--warmup`` steps and ends when the last checkpoint is on
disk. Paths are timed in alternating rounds so that a change of machine load hits both alike.

Two clocks: wall time (what a user waits for), and the process's CPU time (both threads, the
TensorBoard writer and progress-bar threads included). On a machine shared with other jobs the wall
clock swings several-fold between rounds; CPU time with ``--threads 1`` (no thread pool spinning while
descheduled) is the steady measure of the overhead Lightning adds per token.

    python -m benchmarks.bench_train [--steps 90] [--warmup 10] [--rounds 3] [--threads N] [--skip-quickstart]
"""

from __future__ import annotations

import argparse
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback

from lit_llm.config_schema import SchedulerConfig
from lit_llm.config_validation import resolve, validate_config
from lit_llm.losses import cross_entropy
from lit_llm.module import parameter_groups, schedule_factor
from lit_llm.optim import AdamW, clip_grad_norm
from lit_llm.train import build

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"


def quickstart_config(run_dir: Path, steps: int, val_at: int) -> dict:
    overrides = [
        f"paths.root_dir={REPO}",
        f"paths.output_dir={run_dir}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={val_at}",
        "callbacks.text_samples=null",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return validate_config(resolve(compose("train", overrides=overrides)))


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    """(wall seconds, CPU seconds) since ``start``."""
    wall, cpu = _now()
    return wall - start[0], cpu - start[1]


class _StartClock(Callback):
    def __init__(self, at_step: int) -> None:
        self.at_step, self.start = at_step, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None and trainer.global_step == self.at_step:
            self.start = _now()


def lightning_run(config: dict, warmup: int) -> tuple[float, float]:
    """(wall, CPU) seconds from the start of step ``warmup`` until fit() returns (last checkpoint written)."""
    trainer, module, datamodule = build(config)
    clock = _StartClock(warmup)
    trainer.callbacks.insert(0, clock)
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    return _since(clock.start)


def bare_run(config: dict, warmup: int, run_dir: Path) -> tuple[float, float]:
    """The same training as a plain PyTorch loop; (wall, CPU) seconds over the same span."""
    from hydra.utils import instantiate

    from lit_llm.model import ModelConfig, TransformerLM

    torch.manual_seed(config["seed"])
    steps, val_at = config["trainer"]["max_steps"], config["trainer"]["val_check_interval"]
    log_every, clip = config["trainer"]["log_every_n_steps"], config["trainer"]["gradient_clip_val"]
    opt_cfg, sched_cfg = config["optimizer"], config["scheduler"]
    data = instantiate(config["data"], _convert_="all")
    data.prepare_data()
    data.setup("fit")
    model = TransformerLM.from_config(ModelConfig.from_dict(config["model"]))
    groups = parameter_groups(model, opt_cfg["weight_decay"])
    optimizer = AdamW(groups, lr=opt_cfg["lr"], betas=tuple(opt_cfg["betas"]), eps=opt_cfg["eps"])
    lr, min_lr = opt_cfg["lr"], sched_cfg["min_lr"]
    warm, cycle = SchedulerConfig(**sched_cfg).warmup_steps, sched_cfg["cosine_cycle_iters"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: schedule_factor(k, lr, min_lr, warm, cycle)
    )
    params = [p for g in groups for p in g["params"]]
    run_dir.mkdir(parents=True, exist_ok=True)

    def checkpoint(step: int) -> None:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
            run_dir / "last.pt",
        )

    start = None
    batches = iter(data.train_dataloader())
    for step in range(steps):
        if step == warmup:
            start = _now()
        x, y = next(batches)
        loss = cross_entropy(model(x), y)
        loss.backward()
        clip_grad_norm(params, clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0:
            loss.item()
        if (step + 1) % val_at == 0:
            model.eval()
            with torch.inference_mode():
                total = sum(
                    cross_entropy(model(vx), vy).item() * vy.numel() for vx, vy in data.val_dataloader()
                )
            model.train()
            assert math.isfinite(total)
            checkpoint(step + 1)
    checkpoint(steps)
    return _since(start)


def quickstart_wall_time() -> tuple[float, str, float]:
    """The default experiment from nothing (fresh data and artifact folders), as a user types it;
    returns (seconds, its summary line, unigram entropy of its validation tokens in nats/token)."""
    import numpy as np

    from lit_llm.data.synthetic import token_unigram_entropy

    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        start = time.perf_counter()
        result = subprocess.run(
            [sys.executable, "-m", "lit_llm.train", "callbacks.progress_bar=null"],
            cwd=tmp,
            env=env,
            capture_output=True,
            text=True,
        )
        elapsed = time.perf_counter() - start
        output = result.stdout + result.stderr
        if result.returncode != 0:
            raise RuntimeError(output[-2000:])
        done = re.search(r"done at step \d+: .*", output)
        (valid,) = Path(tmp, "artifacts", "tokens").glob("*/valid.npy")
        entropy = token_unigram_entropy(np.load(valid, mmap_mode="r")) * math.log(2)
        return elapsed, done.group(0) if done else "(no summary line)", entropy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=90)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--skip-quickstart", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"load average: {os.getloadavg()}; torch threads: {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        config = quickstart_config(Path(tmp) / "run", args.steps, val_at=args.steps // 2 + 5)
        model, data = config["model"], config["data"]
        tokens = (args.steps - args.warmup) * data["batch_size"] * model["context_length"]
        print(
            f"quickstart model: d_model {model['d_model']}, {model['num_layers']} layers, context "
            f"{model['context_length']}, vocab {model['vocab_size']}; batch {data['batch_size']}; "
            f"{args.steps} steps, timed from step {args.warmup} ({tokens} tokens)"
        )
        names = ("bare PyTorch loop", "lit_llm.train (Lightning)")
        results: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in names}
        for round_ in range(args.rounds):
            for name in names:
                run_dir = Path(tmp) / f"{name.split()[0]}-{round_}"
                config["paths"]["output_dir"] = str(run_dir)
                for node in config["callbacks"].values():
                    if node and "dirpath" in node:
                        node["dirpath"] = str(run_dir / "checkpoints")
                config["logger"]["tensorboard"]["save_dir"] = str(run_dir)
                run = bare_run(config, args.warmup, run_dir) if name.startswith("bare") else None
                wall, cpu = run or lightning_run(config, args.warmup)
                results[name]["wall"].append(tokens / wall)
                results[name]["cpu"].append(tokens / cpu)
                print(
                    f"  round {round_ + 1}: {name:<26} {tokens / wall:9.0f} tokens/s (wall), "
                    f"{tokens / cpu:9.0f} tokens per CPU-second"
                )
    bare, ours = (results[name] for name in names)
    for clock, unit in (("wall", "tokens/s (wall clock)"), ("cpu", "tokens per CPU-second")):
        ratios = [o / b for b, o in zip(bare[clock], ours[clock], strict=True)]
        print(
            f"{unit}: bare median {statistics.median(bare[clock]):.0f} best {max(bare[clock]):.0f}; "
            f"Lightning median {statistics.median(ours[clock]):.0f} best {max(ours[clock]):.0f}; "
            f"ratio of medians {statistics.median(ours[clock]) / statistics.median(bare[clock]):.3f}, "
            f"of bests {max(ours[clock]) / max(bare[clock]):.3f}, per round "
            + ", ".join(f"{r:.3f}" for r in ratios)
            + " (target >= 0.95)"
        )
    print(f"load average: {os.getloadavg()}")
    if not args.skip_quickstart:
        seconds, summary, entropy = quickstart_wall_time()
        print(f"quickstart from scratch (`python -m lit_llm.train`): {seconds:.1f} s wall; {summary}")
        print(f"unigram entropy of the quickstart validation tokens: {entropy:.4f} nats/token (vs val/loss)")
        print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
