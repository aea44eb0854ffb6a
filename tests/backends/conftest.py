"""Fixtures shared by the backend tests: a store per backend URL, opened and closed per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from roomcast.backends import Store, StoreOptions, open_backend
from roomcast.backends.measured import MeasuredStore

MakeStore = Callable[..., Awaitable[Store]]
MEASURED = "measured+"  # a URL prefix meaning: that store, wrapped in a MeasuredStore


class TimingSink:
    """A StoreObserver that checks what it is told and keeps nothing."""

    def appended(self, op: str, seconds: float, events: int) -> None:
        assert seconds >= 0 and events >= 0, (op, seconds, events)

    def read(self, op: str, seconds: float) -> None:
        assert seconds >= 0, (op, seconds)


@pytest.fixture(params=["memory", "sqlite", "measured"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "measured":
        return MEASURED + f"sqlite:///{tmp_path}/x.db"
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/x.db"


@pytest.fixture
async def make_store(backend_url: str) -> AsyncIterator[MakeStore]:
    """Opens stores for ``backend_url`` (with given options) and closes them after the test."""
    opened: list[Store] = []

    async def make(options: StoreOptions | None = None) -> Store:
        url = backend_url.removeprefix(MEASURED)
        store = open_backend(url, options or StoreOptions())
        if url != backend_url:
            store = MeasuredStore(store, TimingSink())
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.aclose()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()
