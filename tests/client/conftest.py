"""SDK test fixtures: a TCP proxy that can cut connections, fast reconnects, fresh rooms."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest
from tcp_proxy import TcpProxy

from roomcast.client import Backoff
from roomcast.testing import ServerProcess


@pytest.fixture
def channel_name() -> str:
    """A channel no other test uses."""
    return f"room:{uuid.uuid4().hex[:10]}"


@pytest.fixture
def backoff() -> Backoff:
    """Short reconnect delays, so tests that cut connections stay quick."""
    return Backoff(initial=0.05, maximum=0.5)


@pytest.fixture
async def proxy(server: ServerProcess) -> AsyncIterator[TcpProxy]:
    """A proxy in front of the module's server; connect through ``proxy.url``."""
    p = await TcpProxy(server.port).start()
    yield p
    await p.aclose()
