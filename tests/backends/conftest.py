"""Fixtures shared by the backend tests: a store per backend URL, opened and closed per test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from roomcast.backends import Store, StoreOptions, open_backend

MakeStore = Callable[..., Awaitable[Store]]


@pytest.fixture(params=["memory", "sqlite"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return "memory://" if request.param == "memory" else f"sqlite:///{tmp_path}/x.db"


@pytest.fixture
async def make_store(backend_url: str) -> AsyncIterator[MakeStore]:
    """Opens stores for ``backend_url`` (with given options) and closes them after the test."""
    opened: list[Store] = []

    async def make(options: StoreOptions | None = None) -> Store:
        store = open_backend(backend_url, options or StoreOptions())
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in reversed(opened):
        await store.aclose()


@pytest.fixture
async def store(make_store: MakeStore) -> Store:
    return await make_store()
