"""``roomcast.testing`` helpers that are not processes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from roomcast import testing


class OfferedPorts:
    """Stands in for the system's socket in ``free_port``: each bind to port 0 gets the
    next of ``ports``, as a system that offers the same free port twice would."""

    def __init__(self, ports: Iterator[int]) -> None:
        self.ports = ports
        self.port = 0

    def __call__(self) -> OfferedPorts:
        return self

    def __enter__(self) -> OfferedPorts:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def bind(self, address: Any) -> None:
        self.port = next(self.ports)

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)


def test_free_port_never_gives_the_same_port_twice(monkeypatch: pytest.MonkeyPatch) -> None:
    taken = testing.free_port()  # a real one, now given
    offered = OfferedPorts(iter([taken, 1, 1, taken, 2]))  # 1, 2: never offered for real
    monkeypatch.setattr(testing.socket, "socket", offered)
    assert [testing.free_port(), testing.free_port()] == [1, 2]
