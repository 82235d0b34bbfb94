"""`python -m lit_llm.train` end to end, in subprocesses, exactly as a user types it (the real configs,
shrunk by debug=fast): every TensorBoard tag and a loadable checkpoint; resume = uninterrupted run,
step for step; a checkpoint of another shape refused with one line."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import matplotlib.image
import pytest
import torch

from lit_llm.model import ModelConfig

REPO = Path(__file__).resolve().parent.parent
SCALAR_TAGS = {
    "train/loss",
    "val/loss",
    "val/ppl",
    "val/bpb",
    "lr",
    "grad_norm",
    "throughput/tokens_per_sec",
    "throughput/mfu",
}


def run_train(cwd: Path, *overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("HYDRA_FULL_ERROR", None)
    result = subprocess.run(
        [sys.executable, "-m", "lit_llm.train", *overrides],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"training failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def only(paths: list[Path]) -> Path:
    assert len(paths) == 1, paths
    return paths[0]


def test_quickstart_end_to_end_writes_every_tag_and_a_checkpoint(tmp_path: Path, session_data_paths) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = run_train(
        tmp_path,
        "experiment=quickstart",
        "debug=fast",
        "logger=tensorboard",
        "callbacks.health.every_n_steps=2",
        *session_data_paths,
    )
    output = result.stdout + result.stderr
    # The terminal: a real FLOPs total, and neither torch's LeafSpec deprecation nor Lightning's advert.
    assert "Total FLOPs:" in output and "Total FLOPs: 0 " not in output
    assert "LeafSpec" not in output and "litlogger" not in output
    run_dir = only(list((tmp_path / "logs" / "debug").iterdir()))
    assert (run_dir / ".hydra" / "config.yaml").is_file()

    events = EventAccumulator(
        str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0, "histograms": 0, "images": 0}
    )
    events.Reload()
    tags = events.Tags()
    assert set(tags["scalars"]) >= SCALAR_TAGS, SCALAR_TAGS - set(tags["scalars"])
    assert any(tag.startswith("val/loss_by_position/") for tag in tags["scalars"])
    # Network health (every 2 steps here: steps 0 and 2) and one attention image per layer per validation.
    health = {
        "health/grad_norm/layers.0.attn.q_proj",
        "health/update_ratio_log10/layers.0.ffn.w2",
        "health/residual_rms/layers.0",
        "health/attn_entropy/layers.0/mean",
        "health/attn_entropy/layers.0/min",
        "health/max_logit",
        "health/clip_fraction",
    }
    assert health <= set(tags["scalars"]), health - set(tags["scalars"])
    assert [event.step for event in events.Scalars("health/max_logit")] == [0, 2]
    assert tags["images"] == ["attention/layers.0"]  # debug=fast: one layer
    assert [image.step for image in events.Images("attention/layers.0")] == [2, 4]
    image = events.Images("attention/layers.0")[-1]
    decoded = matplotlib.image.imread(io.BytesIO(image.encoded_image_string), format="png")
    assert decoded.shape[:2] == (image.height, image.width) and decoded.std() > 0
    # One tag per quantity, nothing constant: no `epoch` (always 0), no second learning-rate tag.
    assert not [tag for tag in tags["scalars"] if tag == "epoch" or tag.startswith("lr-")]
    assert len(events.Scalars("train/loss")) == 4  # debug=fast: 4 steps, logged every step
    assert len(events.Scalars("val/loss")) == 2  # validated at steps 2 and 4
    assert "samples/text_summary" in tags["tensors"]
    # Histograms of every weight and gradient, at each validation (steps 2 and 4).
    weight_tag = "weights/model.layers.0.attn.q_proj.weight"
    assert {weight_tag, "grads/model.layers.0.attn.q_proj.weight", "weights/model.lm_head.weight"} <= set(
        tags["histograms"]
    ), sorted(tags["histograms"])[:5]
    assert [event.step for event in events.Histograms(weight_tag)] == [2, 4]
    sample = events.Tensors("samples/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "Once upon a time" in sample
    # The CUSTOM SCALARS page: the layout written at the start, every chart naming logged tags.
    from tensorboard.plugins.custom_scalar import layout_pb2

    (tag,) = events.PluginTagToContent("custom_scalars")
    (written,) = events.Tensors(tag)  # once per run
    layout = layout_pb2.Layout.FromString(written.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for cat in layout.category for chart in cat.chart}
    assert charts["loss (train and validation)"] == ["train/loss", "val/loss"]
    assert all(tag in tags["scalars"] or tag.endswith(".*") for chart in charts.values() for tag in chart)
    hparams = events.PluginTagToContent("hparams")
    assert {"_hparams_/experiment", "_hparams_/session_start_info"} <= set(hparams)
    assert {"hp/val_loss", "hp/val_bpb"} <= set(tags["scalars"])

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    assert ckpt["model_config"]["d_model"] == 32
    # Derived values are recorded resolved (the HParams table read `model/d_ff = None`).
    assert (
        ckpt["hyper_parameters"]["model"]["d_ff"] == ModelConfig.from_dict(ckpt["model_config"]).resolved_d_ff
    )
    assert all(k.startswith("model.") and "_orig_mod" not in k for k in ckpt["state_dict"])
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()


def read_metrics(run_dir: Path) -> dict[str, dict[int, str]]:
    """metric -> {step: value as written} from a CSVLogger file (strings: compared exactly)."""
    out: dict[str, dict[int, str]] = {}
    with open(run_dir / "csv" / "metrics.csv") as f:
        for row in csv.DictReader(f):
            for key, value in row.items():
                if value and key not in ("step", "epoch"):
                    out.setdefault(key, {})[int(row["step"])] = value
    return out


@pytest.mark.slow
def test_resume_reproduces_the_uninterrupted_run_step_for_step(tmp_path: Path, session_data_paths) -> None:
    n = 3
    common = [
        "debug=fast",
        "logger=csv",
        f"trainer.val_check_interval={n}",
        f"scheduler.cosine_cycle_iters={2 * n}",  # the schedule of the 2n-step run in both cases
        "trainer.enable_progress_bar=false",  # the configured bar and summary are dropped, not refused
        "trainer.enable_model_summary=false",
        *session_data_paths,
    ]
    run_train(tmp_path, *common, "name=straight", f"trainer.max_steps={2 * n}")
    run_train(tmp_path, *common, "name=split", f"trainer.max_steps={n}")
    resumed = run_train(tmp_path, *common, "name=split", f"trainer.max_steps={2 * n}", "ckpt_path=last")
    assert "resuming" in resumed.stdout + resumed.stderr

    straight = read_metrics(only(list((tmp_path / "logs" / "straight").iterdir())))
    first, second = (read_metrics(d) for d in sorted((tmp_path / "logs" / "split").iterdir()))
    assert sorted(first["train/loss"]) == list(range(n)) and sorted(second["train/loss"]) == list(
        range(n, 2 * n)
    )
    # Exact: every run does the same ops on the same batches, shapes and thread count (one machine, one
    # environment), and the resumed one starts from bit-identical weights, optimizer and RNG states.
    for metric in ("train/loss", "lr", "grad_norm"):
        assert {**first[metric], **second[metric]} == straight[metric], metric
    assert second["val/loss"] == {2 * n - 1: straight["val/loss"][2 * n - 1]}

    # The same experiment with another model width cannot resume from that checkpoint.
    wider = run_train(tmp_path, *common, "name=split", "model.d_model=64", "ckpt_path=last", check=False)
    assert wider.returncode == 1
    assert (
        "error: checkpoint holds a model of another shape (d_model: checkpoint 32, config 64" in wider.stderr
    )
    assert "Traceback" not in wider.stderr


def test_diverging_run_stops_with_one_line_and_writes_no_checkpoint(
    tmp_path: Path, session_data_paths
) -> None:
    # lr 1e30: step 0 is finite, its update makes every later loss NaN, before the first validation.
    result = run_train(
        tmp_path, "debug=fast", "optimizer.lr=1e30", "scheduler.min_lr=0", *session_data_paths, check=False
    )
    assert result.returncode == 1
    # The spike guard (on by default) skipped step 1's update and stops at the validation of step 2.
    assert "error: non-finite training loss (NaN or inf) at step 1, its update skipped" in result.stderr
    assert "no checkpoint had been written yet" in result.stderr and "Traceback" not in result.stderr
    assert not list((tmp_path / "logs").rglob("*.ckpt"))
