"""Trainer callbacks, the user-facing names:

    from symwatch.integrations.transformers import SymwatchCallback       # transformers.Trainer
    from symwatch.integrations.lightning import SymwatchCallback          # lightning.pytorch
    from symwatch.integrations.pytorch_lightning import SymwatchCallback  # pytorch_lightning

Like `symwatch.watch`, these forward to the agent package (`symwatch_agent.entry.integrations`) on
first use, so `import symwatch` and the observer never import torch or the frameworks.
See docs/integrations.md.
"""
