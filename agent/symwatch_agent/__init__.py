"""The symwatch agent: runs inside a PyTorch training process and publishes per-layer
symmetry indicators over ZeroMQ. Needs only torch and pyzmq (NVML optional); never imports
the observer side (textual, rich)."""

from __future__ import annotations

from symwatch_agent.agent import Agent, __version__, open_agents, watch

__all__ = ["Agent", "watch", "open_agents", "__version__"]
