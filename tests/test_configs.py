"""The real configs (configs/) composed as Hydra composes them for `python -m lit_llm.train`:
every experiment and hardware choice is valid, the TinyStories experiment is the documented base
configuration, and bad values fail at start-up with one line per bad key, before Lightning is imported."""

from __future__ import annotations

import ast
import inspect
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lit_llm.config_schema import GROUPS, DataConfig, OptimizerConfig, SchedulerConfig, defaults
from lit_llm.config_validation import ConfigError, config_problems, resolve, validate_config

REPO = Path(__file__).resolve().parent.parent
CONFIGS = REPO / "configs"
EXPERIMENTS = sorted(p.stem for p in (CONFIGS / "experiment").glob("*.yaml"))
DATASET_EXPERIMENTS = ["owt", "quickstart", "shakespeare", "tinystories"]  # one per dataset, named like it
TRAINERS = sorted(p.stem for p in (CONFIGS / "trainer").glob("*.yaml"))


def compose_train(*overrides: str, tmp: Path = Path("/tmp/lit_llm_cfg")) -> dict:
    """The composed, resolved config; Hydra's run-time paths pinned (no Hydra run in a unit test)."""
    pinned = [f"paths.root_dir={tmp}", f"paths.output_dir={tmp}/logs/run"]
    with initialize_config_dir(config_dir=str(CONFIGS), version_base="1.3"):
        return resolve(compose("train", overrides=[*pinned, *overrides]))


def problems_of(*overrides: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        validate_config(compose_train(*overrides))
    return info.value.problems


def test_groups_and_options_exist() -> None:
    assert set(DATASET_EXPERIMENTS) <= set(EXPERIMENTS)
    assert TRAINERS == ["cpu", "ddp", "ddp_sim", "default", "fsdp", "gpu", "mps"]
    assert sorted(p.stem for p in (CONFIGS / "logger").glob("*.yaml")) == ["csv", "none", "tensorboard"]
    assert (CONFIGS / "debug" / "fast.yaml").is_file()


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment: str) -> None:
    config = validate_config(compose_train(f"experiment={experiment}"))
    assert config["name"] == experiment
    if experiment in DATASET_EXPERIMENTS:
        assert config["data"]["dataset"] == experiment
    assert config["model"]["vocab_size"] == config["data"]["vocab_size"]
    assert config["data"]["context_length"] == config["model"]["context_length"]
    assert (
        config["trainer"]["max_steps"] % config["trainer"]["val_check_interval"] == 0
    )  # last step validated


def test_quickstart_is_the_default_experiment() -> None:
    assert compose_train()["name"] == "quickstart"


def test_tinystories_is_the_base_configuration() -> None:
    config = compose_train("experiment=tinystories")
    model, data = config["model"], config["data"]
    assert (data["vocab_size"], model["context_length"], model["d_model"]) == (10000, 256, 512)
    assert (model["num_layers"], model["num_heads"], model["d_ff"], model["rope_theta"]) == (
        4,
        16,
        1344,
        10000.0,
    )
    assert data["batch_size"] == 32
    tokens = config["trainer"]["max_steps"] * data["batch_size"] * model["context_length"]
    assert 320e6 < tokens < 335e6  # ~327M tokens
    assert (config["optimizer"]["lr"], config["scheduler"]["min_lr"]) == (1e-3, 1e-4)
    assert SchedulerConfig(**config["scheduler"]).warmup_steps == 500  # of cosine_cycle_iters = 40000
    assert compose_train("experiment=owt")["data"]["vocab_size"] == 32000


@pytest.mark.parametrize("trainer", TRAINERS)
def test_every_trainer_option_validates_and_builds_its_strategy(trainer: str) -> None:
    config = validate_config(compose_train(f"trainer={trainer}"))
    strategy = config["trainer"]["strategy"]
    if isinstance(strategy, dict):
        built = instantiate(strategy, _convert_="all")
        assert type(built).__name__ == strategy["_target_"].rsplit(".", 1)[1]
    expected = {"gpu": "bf16-mixed", "ddp": "bf16-mixed", "fsdp": "bf16-mixed", "ddp_sim": "32-true"}
    assert config["trainer"]["precision"] == expected.get(trainer, "32-true")


def test_ddp_sim_is_two_cpu_processes_over_gloo() -> None:
    trainer = compose_train("trainer=ddp_sim")["trainer"]
    assert (trainer["accelerator"], trainer["devices"]) == ("cpu", 2)
    assert trainer["strategy"]["process_group_backend"] == "gloo"


def test_debug_fast_shrinks_everything_and_a_logger_can_be_added_back() -> None:
    config = compose_train("debug=fast")
    assert config["trainer"]["max_steps"] <= 10 and config["model"]["num_layers"] == 1
    assert config["data"]["vocab_size"] <= 512 and not config["logger"]
    assert list(compose_train("debug=fast", "logger=tensorboard")["logger"]) == ["tensorboard"]
    validate_config(config)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.d_model=100", "model.num_heads=3"], "model.d_model=100: expected a multiple of num_heads=3"),
        (["optimizer.lr=-1"], "optimizer.lr=-1: expected a positive number"),
        (["optimizer.betas=[0.9,1.5]"], "optimizer.betas=[0.9, 1.5]: expected two numbers in [0, 1)"),
        (["trainer.max_steps=0"], "trainer.max_steps=0: expected a positive integer"),
        (["scheduler.min_lr=1"], "scheduler.min_lr=1: expected <= optimizer.lr=0.003"),
        (
            ["scheduler.warmup_iters=500"],
            "scheduler.warmup_iters=500: expected < cosine_cycle_iters=300",
        ),
        (["scheduler.warmup_fraction=1.5"], "scheduler.warmup_fraction=1.5: expected a number in [0, 1)"),
        (["data.batch_size=many"], "data.batch_size='many': expected an integer"),
        (["model.vocab_size=100"], "model.vocab_size=100: expected >= data.vocab_size=2000"),
        (["data.context_length=512"], "data.context_length=512: expected <= model.context_length=128"),
        (["data.dataset=null"], "data.dataset=None: expected a string"),
        (["compile=maybe"], "compile='maybe': expected true or false"),
        (["+model.droput=0.1"], "model.droput: unknown key"),
        (["+optimizer.momentum=0.9"], "optimizer.momentum: unknown key"),
        (["+extra=1"], "extra: unknown top-level key"),
        (["+trainer.callbacks=[]"], "trainer.callbacks: set by the callbacks/logger groups"),
        (["+trainer.max_step=10"], "trainer.max_step: unknown key for Trainer.__init__"),
        (
            ["+callbacks.throughput.peak_flop=1e12"],
            "callbacks.throughput.peak_flop: unknown key for TokenThroughput",
        ),
        (["callbacks.text_samples._target_=lit_llm.callbacks.Nope"], "callbacks.text_samples._target_="),
    ],
)
def test_bad_values_are_reported_naming_the_key(overrides: list[str], expected: str) -> None:
    problems = problems_of(*overrides)
    assert any(expected in p for p in problems), problems


def test_every_problem_is_reported_at_once() -> None:
    config = compose_train("optimizer.lr=-1", "trainer.max_steps=0", "+model.foo=1", "model.num_heads=7")
    problems = config_problems(config)
    assert len(problems) >= 4, problems
    assert {p.split("=")[0].split(":")[0] for p in problems} >= {
        "optimizer.lr",
        "trainer.max_steps",
        "model.foo",
    }


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_one_override_of_the_run_length_gives_a_valid_run(experiment: str) -> None:
    """Warmup is a fraction of the run by default, so `trainer.max_steps=10` alone is a valid run."""
    config = validate_config(compose_train(f"experiment={experiment}", "trainer.max_steps=10"))
    assert config["scheduler"]["warmup_iters"] is None
    assert 0 <= SchedulerConfig(**config["scheduler"]).warmup_steps < 10


def test_the_scaling_study_trains_each_width_on_ten_tokens_per_parameter() -> None:
    from lit_llm.flops import count_parameters
    from lit_llm.model import ModelConfig

    for d_model in (32, 96):
        config = validate_config(compose_train("experiment=scaling", f"model.d_model={d_model}"))
        tokens_per_step = config["data"]["batch_size"] * config["model"]["context_length"]
        parameters = count_parameters(ModelConfig.from_dict(config["model"]))
        assert config["trainer"]["max_steps"] == round(10 * parameters / tokens_per_step)
        assert config["trainer"]["val_check_interval"] == config["trainer"]["max_steps"]


def test_warmup_is_a_fraction_of_the_schedule_unless_given_in_steps() -> None:
    assert SchedulerConfig(cosine_cycle_iters=300).warmup_steps == 30  # the default 10%
    assert SchedulerConfig(cosine_cycle_iters=300, warmup_fraction=0.0).warmup_steps == 0
    assert SchedulerConfig(cosine_cycle_iters=2, warmup_fraction=0.9).warmup_steps == 1  # always < cycle
    # An absolute warmup_iters, when set, wins over the fraction (on the command line too).
    assert SchedulerConfig(cosine_cycle_iters=300, warmup_iters=7).warmup_steps == 7
    config = validate_config(compose_train("trainer.max_steps=10", "scheduler.warmup_iters=3"))
    assert SchedulerConfig(**config["scheduler"]).warmup_steps == 3
    assert "scheduler.warmup_iters=10: expected < cosine_cycle_iters=10" in " ".join(
        problems_of("trainer.max_steps=10", "scheduler.warmup_iters=10")
    )


def test_the_schema_is_the_one_statement_of_the_keys_and_their_defaults() -> None:
    """Without an experiment, each group composes to its schema's defaults plus the group file's own
    values: the files restate nothing, and the data schema is the data module's argument list."""
    config = compose_train("~experiment")
    assert config["optimizer"] == defaults(OptimizerConfig)
    scheduler = dict(defaults(SchedulerConfig), cosine_cycle_iters=config["trainer"]["max_steps"])
    assert config["scheduler"] == scheduler
    for group, schema in GROUPS.items():
        assert set(config[group]) >= set(defaults(schema)), group
    from lit_llm.data.datamodule import TokenWindowDataModule

    arguments = set(inspect.signature(TokenWindowDataModule).parameters)
    assert set(defaults(DataConfig)) - {"_target_"} == arguments


def test_every_schema_field_has_a_type_and_a_docstring() -> None:
    from lit_llm import config_schema

    tree = ast.parse(inspect.getsource(config_schema))
    classes = [node for node in tree.body if isinstance(node, ast.ClassDef) and node.name.endswith("Config")]
    assert {c.name for c in classes} >= {"OptimizerConfig", "SchedulerConfig", "DataConfig", "TrainerConfig"}
    for cls in classes:
        body = cls.body
        for i, node in enumerate(body):
            if isinstance(node, ast.AnnAssign):
                after = body[i + 1] if i + 1 < len(body) else None
                documented = isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant)
                assert documented, f"{cls.name}.{node.target.id} has no docstring"


def test_each_shared_value_has_one_owner_and_the_dataset_files_only_their_own_facts() -> None:
    """model.vocab_size follows data.vocab_size, data.context_length follows model.context_length; the
    dataset files read no other group and start from data/base.yaml, not from another dataset."""
    config = compose_train("data.vocab_size=4096", "model.context_length=64")
    assert (config["model"]["vocab_size"], config["data"]["context_length"]) == (4096, 64)
    for path in (CONFIGS / "data").glob("*.yaml"):
        text = path.read_text()
        if path.stem != "base":
            assert "${" not in text and "  - base\n" in text, path.name


def test_lightning_checks_its_own_arguments_when_the_trainer_is_built_before_any_data_work(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from lit_llm.data.datamodule import TokenWindowDataModule
    from lit_llm.train import build

    built = []
    monkeypatch.setattr(TokenWindowDataModule, "__init__", lambda self, **kw: built.append(kw))
    for overrides, expected in [
        (["trainer.precision=bf17"], "trainer.precision='bf17': Precision 'bf17' is invalid. Allowed"),
        (["trainer.accelerator=abacus"], "trainer.accelerator='abacus': You selected an invalid accelerator"),
        (["trainer=cpu", "trainer.devices=0"], "trainer.devices=0: "),
    ]:
        config = validate_config(compose_train(*overrides, "debug=fast"))  # ours pass: Lightning's to check
        with pytest.raises(ConfigError) as info:
            build(config)
        assert len(info.value.problems) == 1 and info.value.problems[0].startswith(expected), info.value
    assert built == []


def cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "lit_llm.train", *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["model.d_model=100", "model.num_heads=3"], "model.d_model=100: expected a multiple of num_heads=3"),
        (["optimizer.lr=-1"], "optimizer.lr=-1: expected a positive number"),
        (["experiment=nope"], "Could not find 'experiment/nope'"),
        (["trainer.precision=bf17"], "trainer.precision='bf17': Precision 'bf17' is invalid"),
    ],
)
def test_cli_fails_fast_with_one_line_naming_the_key(
    tmp_path: Path, overrides: list[str], expected: str
) -> None:
    result = cli(tmp_path, *overrides)
    assert result.returncode != 0
    assert expected in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "logs").exists() or not any((tmp_path / "logs").rglob("*.ckpt"))


def test_value_errors_are_found_before_lightning_is_imported(tmp_path: Path) -> None:
    """The structural reason the common mistakes fail in about a second: nothing heavy is imported."""
    probe = (
        "import runpy, sys\n"
        "sys.argv = ['lit_llm.train', 'optimizer.lr=-1']\n"
        "try:\n"
        "    runpy.run_module('lit_llm.train', run_name='__main__', alter_sys=True)\n"
        "finally:\n"
        "    print('lightning imported:', 'lightning' in sys.modules)\n"
    )
    env = dict(os.environ, PYTHONPATH=str(REPO))
    result = subprocess.run(
        [sys.executable, "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "optimizer.lr=-1" in result.stderr
    assert "lightning imported: False" in result.stdout
