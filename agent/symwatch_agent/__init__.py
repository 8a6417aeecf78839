"""The symwatch agent: runs inside a PyTorch training process and publishes per-layer
symmetry indicators over ZeroMQ. Needs only torch and pyzmq (NVML optional); never imports
the observer side (textual, rich)."""

from __future__ import annotations

from symwatch.core.version import __version__
from symwatch_agent.agent import Agent, open_agents, watch
from symwatch_agent.options import AgentOptions

__all__ = ["Agent", "AgentOptions", "watch", "open_agents", "__version__"]
