"""Training speed through `lit_llm.train` (Lightning, as a user runs it) against plain PyTorch loops, each
run in a fresh interpreter; the runs of a round take turns, a tenth of the timed steps at a time.

Four runs of the same training, timed over the same span:

* **plain built-in loop**: what a nanoGPT-style ``train.py`` does, the reference. The same architecture
  written with PyTorch's own modules and kernels (``benchmarks.bench_model.ReferenceLM``: ``nn.Linear``,
  ``F.rms_norm``, ``F.silu``, ``F.scaled_dot_product_attention``), ``F.cross_entropy``,
  ``torch.optim.AdamW(fused=True)`` with the same decay groups, ``clip_grad_norm_``, the same
  warmup-cosine schedule, random windows of the same token file (``get_batch``).
* **our model, bare loop**: our from-scratch model, loss, AdamW and clipping in the same plain loop; its
  gap to the first is our ops, its gap to the third is the framework (and the allocator setting below).
* **lit_llm.train**: ``lit_llm.train.build`` + ``Trainer.fit``, exactly what the command runs, with
  everything a user gets (TensorBoard logger, progress bar, throughput/LR/grad-norm logging, the
  non-finite guard, atomic last/best checkpoints) except text samples. ``build`` also applies
  ``keep_freed_memory`` (``lit_llm.memory``: glibc keeps freed memory instead of re-faulting it every
  step), which the first two runs, plain loops as nanoGPT writes them, do not have;
* **plain loop, freed memory kept**: the first run with that same allocator setting, to show how much
  of a ratio is the allocator (on a CPU without glibc it is the first run again).

Each timed span starts at step ``--warmup`` and ends when the last checkpoint is on disk; it holds one
validation over the same fixed windows followed by a checkpoint (model + optimizer), a final
checkpoint, and reading the loss every ``log_every_n_steps`` steps. Shapes:

* ``--shape small``: ``experiment=ablation_base`` (4 layers, d_model 128, context 64, batch 12, bytes
  of Tiny Shakespeare from tests/fixtures).
* ``--shape base``: the TinyStories base model (vocab 10000, context 256, d_model 512, 4 layers, 16
  heads, d_ff 1344, batch 8) on the quickstart corpus.
* ``--shape quickstart``: the default experiment; then also the quickstart command from nothing.

``--compile`` compiles all four (``torch.compile`` on both models and their training losses,
``compile=true`` for ours, which compiles its AdamW update too). ``--eager-vs-compiled`` times, instead,
our two runners eager and compiled, four runs taking turns, and prints compiled over eager.
``--split-framework`` times, instead, where ``lit_llm.train``'s gap to our bare loop lies, four runs
taking turns, each over the first: our bare loop with freed memory kept (as ``lit_llm.train`` keeps it);
``lit_llm.train``; "checkpoints only", with every callback of configs/callbacks/default.yaml set to null
but ``model_checkpoint`` and Lightning's own progress bar and model summary off (``build`` still adds
``RunClock`` and ``FreezeStartupObjects``); and "no logger", that without the TensorBoard logger too:
Lightning's loop alone around the same model, loss and optimizer. The steps between neighbours are what
our callbacks, then the logger, then Lightning's loop cost.
``--precision bf16-mixed`` runs all four with bfloat16 matmuls: ``trainer.precision=bf16-mixed`` for ours,
``torch.autocast("cpu", torch.bfloat16)`` around the plain loops' forward (the loss in float32); on CPUs
with bf16 instructions (AVX512-BF16, AMX) its matmuls run several times faster than float32's.
Two clocks: wall time, and the process's CPU time (steadier on a shared machine with ``--threads 1``).
Every run is its own process (``--run``, internal): one run after another in a single process, the later
ones ran in what the earlier ones left (the plain loop at ablation_base: 18.1-19.6K tokens/s in a fresh
process, 15.5K after a ``lit_llm.train`` run in the same one). The processes of a round take turns
(``Turns``): each runs ``--block`` steps (a tenth of the timed span), stops, and waits while the others
run theirs, so that all meet the same drifts of this shared machine's speed (per-25-step medians of
one run ranged over 46-85 ms a step within 15 s); run one after another, whole runs of the same loop
differed by 15-19.6K tokens/s.

    python -m benchmarks.bench_train [--shape small|base|quickstart]
        [--compile | --eager-vs-compiled | --split-framework] [--precision 32-true|bf16-mixed]
        [--steps N] [--warmup N] [--block N] [--rounds 3] [--threads N] [--skip-quickstart]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import Callback
from torch import nn

from benchmarks.bench_model import ReferenceLM
from lit_llm.config_schema import SchedulerConfig
from lit_llm.config_validation import resolve, validate_config
from lit_llm.data.batch import get_batch
from lit_llm.losses import cross_entropy
from lit_llm.memory import keep_freed_memory
from lit_llm.module import compiled_cross_entropy, parameter_groups, schedule_factor
from lit_llm.optim import AdamW, clip_grad_norm
from lit_llm.train import build

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
FIXTURES = REPO / "tests" / "fixtures"

SHAPES = {
    "small": ["experiment=ablation_base"],
    "base": [
        "experiment=tinystories",
        "data=quickstart",
        "data.vocab_size=10000",
        "data.batch_size=8",
    ],
    "quickstart": [],
}


def shape_config(
    shape: str, root: Path, steps: int, val_at: int, compile_: bool, precision: str = "32-true"
) -> dict:
    """The validated config of ``shape`` with every path under ``root``. The Tiny Shakespeare download
    of ``small`` is replaced by the copy in tests/fixtures (this machine may be offline)."""
    raw = root / "data" / "raw" / "shakespeare" / "input.txt"
    raw.parent.mkdir(parents=True, exist_ok=True)
    fixture = FIXTURES / "tinyshakespeare.txt"
    if not raw.is_file() or raw.read_bytes() != fixture.read_bytes():  # a new copy: its tokens again
        shutil.copyfile(fixture, raw)
    overrides = [
        *SHAPES[shape],
        f"paths.root_dir={root}",
        f"paths.output_dir={root / 'run'}",
        f"trainer.max_steps={steps}",
        f"trainer.val_check_interval={val_at}",
        "callbacks.text_samples=null",
        f"compile={str(compile_).lower()}",
        f"trainer.precision={precision}",
        # Compiled, a validation pass before training (Lightning's sanity check) compiles the evaluation
        # graph up front, as it does the training graph's in the warmup steps: one-off compilations stay
        # out of the timed span (in it, the first validation took 1.07 s instead of 0.26 s eager).
        f"trainer.num_sanity_val_steps={-1 if compile_ else 0}",
    ]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return validate_config(resolve(compose("train", overrides=overrides)))


def _now() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


class Turns:
    """The clock of one run, and its turns on the machine when runs take turns (``--turn-fds``).

    The timed span starts at step ``warmup`` and ends with the run; ``at_step`` is called at the start
    of every step. Alone (``fds=None``) that is one stretch of time. Taking turns (``fds``, the pipes
    to the parent), the run also stops at every ``block`` steps of the span: it tells the parent (one
    byte) and waits for the byte that says go; only the time between a go and the next stop counts.
    The parent lets the runs of a round go one block at a time, in turn, so all of them meet the same
    drifts of the machine's speed (module docstring); every stretch starts after a pause, so each
    runner pays the same cold caches.
    """

    def __init__(self, warmup: int, block: int = 1, fds: tuple[int, int] | None = None) -> None:
        self.warmup, self.block, self.fds = warmup, max(1, block), fds
        self.spent = (0.0, 0.0)  # (wall, CPU) seconds counted so far
        self._since: tuple[float, float] | None = None  # start of the stretch being counted
        self._last_step = -1

    def wait_for_turn(self) -> None:
        """Hand the machine back to the parent and wait until it is this run's turn (alone: return)."""
        if self.fds is None:
            return
        ready, go = self.fds
        os.write(ready, b"R")
        if os.read(go, 1) != b"G":
            raise RuntimeError("bench_train: the parent process went away")

    def _stop(self) -> None:
        if self._since is not None:
            wall, cpu = _now()
            self.spent = (self.spent[0] + wall - self._since[0], self.spent[1] + cpu - self._since[1])
            self._since = None

    def at_step(self, step: int) -> None:
        if step == self._last_step:  # a later micro-batch of the same optimizer step
            return
        self._last_step = step
        taking_turns = self.fds is not None and step > self.warmup and (step - self.warmup) % self.block == 0
        if step == self.warmup or taking_turns:
            self._stop()
            self.wait_for_turn()
            self._since = _now()

    def total(self) -> tuple[float, float]:
        """(wall, CPU) seconds of the timed span, the run being over."""
        if self._last_step < self.warmup:
            raise RuntimeError(f"the run ended at step {self._last_step}, before the timed span began")
        self._stop()
        return self.spent


class _TurnsCallback(Callback):
    def __init__(self, turns: Turns) -> None:
        self.turns = turns

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.turns.at_step(trainer.global_step)


def lightning_run(
    config: dict, warmup: int, run_dir: Path, turns: Turns | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds from the start of step ``warmup`` until fit() returns (last checkpoint written);
    with ``turns``, only the stretches it counts."""
    config["paths"]["output_dir"] = str(run_dir)
    for node in config["callbacks"].values():
        if node and "dirpath" in node:
            node["dirpath"] = str(run_dir / "checkpoints")
    for node in config["logger"].values():
        if node and "save_dir" in node:
            node["save_dir"] = str(run_dir)
    trainer, module, datamodule = build(config)
    turns = turns or Turns(warmup)
    trainer.callbacks.insert(0, _TurnsCallback(turns))
    trainer.fit(module, datamodule=datamodule, weights_only=True)
    return turns.total()


def plain_run(
    config: dict, warmup: int, run_dir: Path, *, builtin: bool, compile_: bool, turns: Turns | None = None
) -> tuple[float, float]:
    """The same training as a plain loop: PyTorch built-ins (``builtin``) or our pieces, with the forward
    under bfloat16 autocast where the config's ``trainer.precision`` is ``bf16-mixed``.
    (wall, CPU) seconds over the same span as ``lightning_run``."""
    from hydra.utils import instantiate

    from lit_llm.model import ModelConfig, TransformerLM

    torch.manual_seed(config["seed"])
    steps, val_at = config["trainer"]["max_steps"], config["trainer"]["val_check_interval"]
    log_every, clip = config["trainer"]["log_every_n_steps"], config["trainer"]["gradient_clip_val"]
    opt_cfg, sched_cfg = config["optimizer"], config["scheduler"]
    data = instantiate(config["data"], _convert_="all")
    data.prepare_data()
    data.setup("fit")
    train_tokens = np.load(data.prepared.train_tokens, mmap_mode="r")
    batch, context = data.batch_size, config["model"]["context_length"]
    model_config = ModelConfig.from_dict(config["model"])
    betas, eps = tuple(opt_cfg["betas"]), opt_cfg["eps"]
    if builtin:
        fields = model_config.to_dict()
        model: nn.Module = ReferenceLM(
            **{k: fields[k] for k in ("vocab_size", "context_length", "d_model", "num_layers", "num_heads")},
            d_ff=model_config.resolved_d_ff,
            rope_theta=model_config.rope_theta,
        )
        groups = parameter_groups(model, opt_cfg["weight_decay"])  # nn.Embedding and 1-D gains: no decay
        optimizer = torch.optim.AdamW(groups, lr=opt_cfg["lr"], betas=betas, eps=eps, fused=True)
        params = [p for g in groups for p in g["params"]]

        def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())  # float32 loss

        def clip_fn() -> None:
            torch.nn.utils.clip_grad_norm_(params, clip)
    else:
        model = TransformerLM.from_config(model_config)
        groups = parameter_groups(model, opt_cfg["weight_decay"])
        optimizer = AdamW(groups, lr=opt_cfg["lr"], betas=betas, eps=eps, compiled_update=compile_)
        params = [p for g in groups for p in g["params"]]
        loss_fn = cross_entropy

        def clip_fn() -> None:
            clip_grad_norm(params, clip)

    compiled: Callable = torch.compile(model) if compile_ else model
    train_loss_fn = loss_fn
    if compile_:  # the training loss too, as compile=true does for lit_llm.train (nanoGPT's model returns it)
        train_loss_fn = torch.compile(loss_fn, fullgraph=True) if builtin else compiled_cross_entropy()
    forward = compiled
    if str(config["trainer"]["precision"]) == "bf16-mixed":  # a float32 loop stays a bare call

        def forward(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return compiled(x)

    lr, min_lr = opt_cfg["lr"], sched_cfg["min_lr"]
    warm, cycle = SchedulerConfig(**sched_cfg).warmup_steps, sched_cfg["cosine_cycle_iters"]
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda k: schedule_factor(k, lr, min_lr, warm, cycle)
    )
    run_dir.mkdir(parents=True, exist_ok=True)

    def checkpoint(step: int) -> None:
        torch.save(
            {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step},
            run_dir / "last.pt",
        )

    def validate() -> float:
        model.eval()
        with torch.inference_mode():
            total = sum(loss_fn(forward(vx), vy).item() * vy.numel() for vx, vy in data.val_dataloader())
        model.train()
        assert math.isfinite(total)
        return total

    if compile_:  # the evaluation graph compiled before the timed span, as lit_llm.train's sanity check does
        validate()
    rng = np.random.default_rng(config["seed"])
    turns = turns or Turns(warmup)
    for step in range(steps):
        turns.at_step(step)
        x, y = get_batch(train_tokens, batch, context, "cpu", rng)
        loss = train_loss_fn(forward(x), y)
        loss.backward()
        clip_fn()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if (step + 1) % log_every == 0:
            loss.item()
        if (step + 1) % val_at == 0:
            validate()
            checkpoint(step + 1)
    checkpoint(steps)
    return turns.total()


def quickstart_wall_time() -> tuple[float, str, float]:
    """The default experiment from nothing (fresh data and artifact folders), as a user types it;
    returns (seconds, its summary line, unigram entropy of its validation tokens in nats/token)."""
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


RUNNERS = ("plain built-in loop", "our model, bare loop", "lit_llm.train", "plain loop, freed memory kept")
COMPILED = ", compiled"  # a runner's name with this suffix: that runner with torch.compile
BARE_KEPT = "our model, bare loop, freed memory kept"
CHECKPOINTS_ONLY = "lit_llm.train, checkpoints only"
NO_LOGGER = "lit_llm.train, no logger"
SPLIT_FRAMEWORK = (BARE_KEPT, "lit_llm.train", CHECKPOINTS_ONLY, NO_LOGGER)
EAGER_VS_COMPILED = (
    "our model, bare loop",
    "our model, bare loop" + COMPILED,
    "lit_llm.train",
    "lit_llm.train" + COMPILED,
)


def run(
    name: str, config: dict, warmup: int, run_dir: Path, compile_: bool, turns: Turns | None = None
) -> tuple[float, float]:
    """(wall, CPU) seconds of runner ``name`` (one of ``RUNNERS``, ``EAGER_VS_COMPILED`` without the
    suffix, or ``SPLIT_FRAMEWORK``) over the timed span, in this process."""
    if name in (CHECKPOINTS_ONLY, NO_LOGGER):
        config["callbacks"] = {
            key: node if key == "model_checkpoint" else None for key, node in config["callbacks"].items()
        }
        # Without these switches Lightning would put in its own progress bar and model summary.
        config["trainer"].update(enable_progress_bar=False, enable_model_summary=False)
        if name == NO_LOGGER:
            config["logger"] = {key: None for key in config["logger"]}
        name = "lit_llm.train"
    if name == "lit_llm.train":
        return lightning_run(config, warmup, run_dir, turns)
    if name in ("plain loop, freed memory kept", BARE_KEPT):  # what lit_llm.train's keep_freed_memory gives
        keep_freed_memory()
    builtin = name not in ("our model, bare loop", BARE_KEPT)
    return plain_run(config, warmup, run_dir, builtin=builtin, compile_=compile_, turns=turns)


class _Child:
    """One run of a round: its process, its two pipes (its stops in, our go's out) and its output file."""

    def __init__(self, name: str, command: list[str], output: Path) -> None:
        self.name, self.output = name, output
        self.stops, child_stops = os.pipe()  # the child writes a byte at each stop
        child_go, self.go = os.pipe()  # we write one when it may go on
        command = [*command, "--turn-fds", f"{child_stops},{child_go}"]
        with output.open("w") as sink:  # a file, not a pipe: a child is never blocked on its own output
            self.process = subprocess.Popen(
                command, cwd=REPO, stdout=sink, stderr=subprocess.STDOUT, pass_fds=(child_stops, child_go)
            )
        os.close(child_stops)
        os.close(child_go)

    def next_stop(self) -> bool:
        """Wait for the child's next stop; False once it has exited (its end of the pipe closed)."""
        return os.read(self.stops, 1) == b"R"

    def go_on(self) -> None:
        os.write(self.go, b"G")

    def result(self) -> tuple[float, float]:
        self.process.wait()
        os.close(self.stops)
        os.close(self.go)
        text = self.output.read_text()
        found = re.findall(r"^RESULT (.*)$", text, flags=re.MULTILINE)
        if self.process.returncode != 0 or not found:
            raise RuntimeError(f"run {self.name!r} failed:\n{text[-3000:]}")
        result = json.loads(found[-1])
        return result["wall"], result["cpu"]


def run_round(
    args: argparse.Namespace, root: Path, round_: int, runners: tuple[str, ...]
) -> dict[str, tuple[float, float]]:
    """Each of ``runners`` once, each in a fresh interpreter (this module with ``--run``), over the data
    prepared under ``root``, taking turns (``Turns``): all start, each takes its untimed first turn
    (set-up and warmup steps) alone, then they go ``--block`` steps at a time, one after another, in
    an order that turns every cycle. (wall, CPU) seconds of each one's timed span."""
    children = []
    for i, name in enumerate(runners):
        command = [sys.executable, "-m", "benchmarks.bench_train", "--run", name, "--root", str(root)]
        command += ["--run-dir", str(root / f"run{i}-{round_}"), "--shape", args.shape]
        command += ["--precision", args.precision, "--steps", str(args.steps), "--warmup", str(args.warmup)]
        command += ["--block", str(args.block)]
        if args.compile:
            command.append("--compile")
        if args.threads:
            command += ["--threads", str(args.threads)]
        children.append(_Child(name, command, root / f"run{i}-{round_}.log"))
    results: dict[str, tuple[float, float]] = {}
    try:
        running = [child for child in children if child.next_stop()]  # each started, waiting for us
        cycle = round_
        while running:
            turn = cycle % len(running)
            for child in running[turn:] + running[:turn]:
                child.go_on()
                if not child.next_stop():  # it ran to its end
                    results[child.name] = child.result()
            running = [child for child in running if child.name not in results]
            cycle += 1
        for child in children:  # one that died before its first stop
            if child.name not in results:
                results[child.name] = child.result()
    finally:
        for child in children:
            if child.process.poll() is None:
                child.process.kill()
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="small")
    parser.add_argument("--compile", action="store_true", help="torch.compile every model")
    parser.add_argument(
        "--eager-vs-compiled", action="store_true", help="our runners eager and compiled, compiled / eager"
    )
    parser.add_argument(
        "--split-framework", action="store_true", help="lit_llm.train without our callbacks, then the logger"
    )
    parser.add_argument("--precision", choices=["32-true", "bf16-mixed"], default="32-true")
    parser.add_argument("--steps", type=int, default=None, help="steps per run (default: 300 small, 60 base)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed first steps (default: steps / 6)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument(
        "--skip-quickstart", action="store_true", help="--shape quickstart: skip the from-nothing run"
    )
    # One run in this process (what each round starts, in a fresh interpreter per run).
    parser.add_argument(
        "--run", choices=sorted({*RUNNERS, *EAGER_VS_COMPILED, *SPLIT_FRAMEWORK}), help=argparse.SUPPRESS
    )
    parser.add_argument("--root", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--run-dir", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--turn-fds", help=argparse.SUPPRESS)  # "stops,go": the pipes of Turns
    parser.add_argument(
        "--block", type=int, default=None, help="steps per turn (default: a tenth of the timed steps)"
    )
    args = parser.parse_args()
    if args.compile and args.eager_vs_compiled:
        parser.error("--compile and --eager-vs-compiled: choose one (the latter runs both)")
    if args.split_framework and args.eager_vs_compiled:
        parser.error("--split-framework and --eager-vs-compiled: choose one")
    if args.threads:
        torch.set_num_threads(args.threads)
    args.steps = steps = args.steps or {"small": 300, "base": 60, "quickstart": 90}[args.shape]
    args.warmup = warmup = (
        args.warmup
        if args.warmup is not None
        else max(steps // 6, 10 if args.compile or args.eager_vs_compiled else 1)
    )
    args.block = args.block or max(1, (steps - warmup) // 10)
    if args.run:
        fds = tuple(map(int, args.turn_fds.split(","))) if args.turn_fds else None
        turns = Turns(warmup, args.block, fds)
        turns.wait_for_turn()  # set-up and warmup steps: the untimed first turn
        compile_ = args.compile or args.run.endswith(COMPILED)
        config = shape_config(args.shape, args.root, steps, steps // 2 + 5, compile_, args.precision)
        wall, cpu = run(args.run.removesuffix(COMPILED), config, warmup, args.run_dir, compile_, turns)
        print("RESULT " + json.dumps({"wall": wall, "cpu": cpu}))
        return

    print(f"load average: {os.getloadavg()}; torch {torch.__version__}, threads {torch.get_num_threads()}")
    with tempfile.TemporaryDirectory() as tmp:
        config = shape_config(args.shape, Path(tmp), steps, steps // 2 + 5, args.compile, args.precision)
        model, data = config["model"], config["data"]
        tokens = (steps - warmup) * data["batch_size"] * model["context_length"]
        print(
            f"--shape {args.shape}{' --compile' * args.compile}"
            f"{' --eager-vs-compiled' * args.eager_vs_compiled}{' --split-framework' * args.split_framework}"
            f" --precision {args.precision}: "
            f"d_model {model['d_model']}, "
            f"{model['num_layers']} layers, context {model['context_length']}, vocab {model['vocab_size']}; "
            f"batch {data['batch_size']}; {steps} steps, timed from step {warmup} ({tokens} tokens); "
            f"each run in a fresh process, the runs of a round taking turns every {args.block} steps"
        )
        # Prepared once here (tokens, tokenizer), so that no run's process spends its start on it.
        from hydra.utils import instantiate

        instantiate(config["data"], _convert_="all").prepare_data()
        runners = (
            EAGER_VS_COMPILED
            if args.eager_vs_compiled
            else SPLIT_FRAMEWORK
            if args.split_framework
            else RUNNERS
        )
        results: dict[str, dict[str, list[float]]] = {name: {"wall": [], "cpu": []} for name in runners}
        width = max(map(len, runners))
        for round_ in range(args.rounds):
            measured = run_round(args, Path(tmp), round_, runners)
            for name in runners:
                wall, cpu = measured[name]
                results[name]["wall"].append(tokens / wall)
                results[name]["cpu"].append(tokens / cpu)
                print(
                    f"  round {round_ + 1}: {name:<{width}} {tokens / wall:9.0f} tokens/s (wall), "
                    f"{(steps - warmup) / wall:6.1f} it/s, {tokens / cpu:9.0f} tokens per CPU-second"
                )
    for clock, unit in (("wall", "tokens/s (wall clock)"), ("cpu", "tokens per CPU-second")):
        if args.eager_vs_compiled:
            print(f"{unit}, medians of {args.rounds} rounds; ratio compiled / eager (per round):")
        else:
            print(f"{unit}, medians of {args.rounds} rounds; ratio to {runners[0]!r} (per round):")
        for name, figures in results.items():
            reference = results[name.removesuffix(COMPILED) if args.eager_vs_compiled else runners[0]]
            ratios = [o / r for r, o in zip(reference[clock], figures[clock], strict=True)]
            median, reference_median = statistics.median(figures[clock]), statistics.median(reference[clock])
            print(
                f"  {name:<{width}} {median:9.0f}  ratio {median / reference_median:.3f}  ("
                + ", ".join(f"{r:.3f}" for r in ratios)
                + ")"
            )
    print(f"load average: {os.getloadavg()}")
    if args.shape == "quickstart" and not args.skip_quickstart:
        seconds, summary, entropy = quickstart_wall_time()
        print(f"quickstart from scratch (`python -m lit_llm.train`): {seconds:.1f} s wall; {summary}")
        print(f"unigram entropy of the quickstart validation tokens: {entropy:.4f} nats/token (vs val/loss)")
        print(f"load average: {os.getloadavg()}")


if __name__ == "__main__":
    main()
