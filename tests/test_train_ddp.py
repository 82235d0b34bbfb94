"""`trainer=ddp_sim`: two CPU processes (gloo) train the real quickstart config a few steps; each rank
records a hash of the windows it drew, and the two ranks must have drawn different ones."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback
from test_train_e2e import REPO, only, run_train


class FirstBatchProbe(Callback):
    """Test-only callback (loaded in the training processes through a +callbacks override): writes
    rank<k>.json with the rank, the world size and a hash of every training batch the rank drew."""

    def __init__(self, out_dir: str) -> None:
        self.out_dir = Path(out_dir)
        self.hashes: list[str] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.hashes.append(hashlib.sha256(batch[0].cpu().numpy().tobytes()).hexdigest())

    def on_train_end(self, trainer, pl_module) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        record = {"rank": trainer.global_rank, "world_size": trainer.world_size, "hashes": self.hashes}
        (self.out_dir / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


@pytest.mark.slow
def test_ddp_sim_ranks_train_on_different_windows(tmp_path: Path, session_data_paths, monkeypatch) -> None:
    probe_dir = tmp_path / "probe"
    # The training processes import this file as a module to build the probe.
    monkeypatch.setenv("PYTHONPATH", str(REPO / "tests"))
    run_train(
        tmp_path,
        "experiment=quickstart",
        "debug=fast",
        "trainer=ddp_sim",
        "logger=tensorboard",
        "callbacks.health.every_n_steps=2",
        "callbacks.progress_bar=null",
        "+callbacks.probe._target_=test_train_ddp.FirstBatchProbe",
        f"+callbacks.probe.out_dir={probe_dir}",
        *session_data_paths,
    )
    ranks = [json.loads((probe_dir / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world_size"] == 2 for r in ranks)
    assert all(len(r["hashes"]) == 4 for r in ranks)  # debug=fast: 4 steps on each rank
    assert not set(ranks[0]["hashes"]) & set(ranks[1]["hashes"])  # no window batch shared across ranks
    run_dir = only(list((tmp_path / "logs" / "debug").iterdir()))
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["best.ckpt", "last.ckpt"]
    # Network health under DDP: rank 0 alone writes it (one event file), at steps 0 and 2.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events_file,) = (run_dir / "tensorboard").glob("events.out.tfevents.*")
    events = EventAccumulator(str(events_file), size_guidance={"scalars": 0})
    events.Reload()
    assert [e.step for e in events.Scalars("health/max_logit")] == [0, 2]
    assert [e.step for e in events.Scalars("health/update_ratio_log10/layers.0.attn.q_proj")] == [0, 2]
