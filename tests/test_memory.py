"""keep_freed_memory: freed tensors' pages are reused, not faulted in again (Linux with glibc)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from test_configs import compose_train

from lit_llm.config_validation import ConfigError, validate_config
from lit_llm.memory import _glibc

PROGRAM = """
import resource, torch
from lit_llm.memory import keep_freed_memory
from lit_llm.model import ModelConfig, TransformerLM
from lit_llm.losses import cross_entropy
from lit_llm.optim import AdamW
assert keep_freed_memory()
torch.manual_seed(0)
config = ModelConfig(vocab_size=256, context_length=64, d_model=128, num_layers=2, num_heads=4)
model = TransformerLM.from_config(config)
optimizer = AdamW(model.parameters(), lr=1e-3)
x, y = torch.randint(0, 256, (12, 64)), torch.randint(0, 256, (12, 64))
def steps(n):
    for _ in range(n):
        cross_entropy(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
steps(10)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
steps(20)
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


@pytest.mark.skipif(_glibc() is None, reason="only glibc's allocator is tuned")
def test_training_steps_reuse_their_memory_without_page_faults():
    # In its own process: the setting is for the whole process, and the count must be these steps' only.
    # Without it, a step of this model took ~1,200 page faults here; with it, 3.
    result = subprocess.run([sys.executable, "-c", PROGRAM], capture_output=True, text=True, check=True)
    assert float(result.stdout) < 100


def test_the_training_config_turns_it_on_by_default_and_off_on_request():
    assert validate_config(compose_train())["keep_freed_memory"] is True
    assert validate_config(compose_train("keep_freed_memory=false"))["keep_freed_memory"] is False
    with pytest.raises(ConfigError) as info:
        validate_config(compose_train("keep_freed_memory=sometimes"))
    assert any(p.startswith("keep_freed_memory=") for p in info.value.problems), info.value.problems
