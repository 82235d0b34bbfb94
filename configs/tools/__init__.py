"""The Hydra configs of the tools (generate, evaluate, export), shipped as ``lit_llm.configs.tools``.

A search path of their own, apart from the training tree: ``evaluate data=FILE`` is a plain key here,
not a choice in the training config group ``data/``.
"""
