"""The ASGI app: thin adapters from WebSocket and HTTP onto :mod:`roomcast.core`."""

from .app import create_app

__all__ = ["create_app"]
