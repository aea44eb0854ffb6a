"""Agents: participants backed by a model (DESIGN.md §Agents; docs/agents.md).

``config`` reads the agents file; ``providers`` talk to the models; ``tools`` are what the
models may call (``@tool`` marks your own); ``runtime`` answers in the rooms (``roomcast
serve`` runs it in process, ``roomcast agents`` as separate workers).
"""

from .tools import tool

__all__ = ["tool"]
