"""The Hydra config tree, shipped in the wheel as ``lit_llm.configs`` (see pyproject.toml)."""
