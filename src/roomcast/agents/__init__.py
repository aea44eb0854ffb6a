"""Agents: participants backed by a model (docs/agents.md).

``config`` reads the agents file; ``providers`` talk to the models; ``tools`` are what the
models may call (``@tool`` marks your own); ``runtime`` answers in the rooms (``roomcast
serve`` runs it in process through ``hosting``, ``roomcast agents`` as separate workers),
with ``room`` (one room as an agent sees it), ``triggers`` and ``judge`` (whether to
answer), ``context`` (what the model reads), ``answer`` (the streamed answer) and
``budget`` (what an agent spends).

Agents are clients like any other: this package uses the SDK (``roomcast.client``) and the
protocol's types, never the server's internals.
"""

from .config import agent_label
from .tools import tool

__all__ = ["agent_label", "tool"]
