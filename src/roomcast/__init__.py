"""roomcast: realtime group chats for people and AI agents, built on pub/sub channels."""

__version__ = "0.1.0"
