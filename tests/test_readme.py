"""README.md is the front door: its commands must keep working as printed.

The end-to-end behaviour behind each command is tested where it lives (tests/test_train_e2e.py,
test_generate.py, ...). Here we check what only the README can get wrong: every ``python -m`` module it
names exists, every config choice it names (``experiment=``, ``trainer=``, ``data=``, ``logger=``,
``debug=``) is a real config file, and its self-contained Python examples run.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = (REPO / "README.md").read_text(encoding="utf-8")
CONFIGS = REPO / "configs"


def code_blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README, flags=re.S)


def test_every_python_module_named_exists(monkeypatch: pytest.MonkeyPatch) -> None:
    # The README's commands run from the repository root, where `benchmarks` is importable (it is not
    # installed): look modules up from there, whatever the tests run before this one put on sys.path.
    monkeypatch.syspath_prepend(str(REPO))
    modules = set(re.findall(r"python -m ([\w.]+)", README)) - {"pytest"}
    assert {"lit_llm.train", "tokenizer", "lit_llm.generate"} <= modules
    missing = [m for m in sorted(modules) if importlib.util.find_spec(m) is None]
    assert not missing, f"README names modules that do not exist: {missing}"


@pytest.mark.parametrize("group", ["experiment", "trainer", "data", "logger", "debug"])
def test_every_config_choice_named_exists(group: str) -> None:
    choices = set(re.findall(rf"(?<![\w.]){group}=(\w+)(?![\w/.])", README))
    assert choices, f"README shows no {group}= choice"
    missing = [c for c in sorted(choices) if not (CONFIGS / group / f"{c}.yaml").is_file()]
    assert not missing, f"README names {group} configs that do not exist: {missing}"


def test_self_contained_python_examples_run(fixtures_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The model example and the GPT-2 tokenizer example (they need only tests/fixtures/)."""
    monkeypatch.chdir(REPO)
    runnable = [b for b in code_blocks("python") if "TransformerLM" in b or "gpt2_vocab.json" in b]
    assert len(runnable) == 2
    for block in runnable:
        exec(compile(block, "README.md", "exec"), {})
