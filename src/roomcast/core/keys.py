"""API keys and the tokens they sign, for the server: the values and the token format are
the protocol's (``protocol/keys.py``) and are re-exported here for core and server code."""

from __future__ import annotations

from roomcast.protocol.keys import *  # noqa: F403 - every public name, kept importable here
from roomcast.protocol.keys import __all__ as __all__
