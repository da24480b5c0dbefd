"""Where LMs come from: ``make_lm`` (``models``), checkpoints (``hf``), the local engine, roles, usage, servers."""
