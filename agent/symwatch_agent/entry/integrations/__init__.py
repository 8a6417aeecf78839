"""Trainer callbacks that start the agent from inside a training framework.

- `symwatch_agent.entry.integrations.transformers.SymwatchCallback`: Hugging Face `transformers.Trainer`.
- `symwatch_agent.entry.integrations.lightning.SymwatchCallback`: `lightning.pytorch.Trainer`.
- `symwatch_agent.entry.integrations.pytorch_lightning.SymwatchCallback`: the standalone
  `pytorch_lightning` package (a different `Callback` class, so a callback of its own).

Users import them as `symwatch.integrations.transformers` (and so on), which forwards here.
Each module imports its framework only when `SymwatchCallback` is first looked up, so this
package imports with torch and pyzmq alone. What they share lives in `session.py`.
See docs/integrations.md.
"""
