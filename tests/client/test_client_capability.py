"""``client.connected.capability`` in the SDK: what the connection may do, kept current when
a renewal (``auth``) brings a token with another capability."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from polling import eventually
from roomcast.client import StateChange, connect
from roomcast.client.tokens import token_capability
from roomcast.testing import ServerProcess

KEY = "grants:" + "g" * 32
WIDE = {"room:*": ["cancel-any", "publish", "subscribe"]}
NARROW = {"room:*": ["cancel-own", "subscribe"]}


@pytest.fixture(scope="module")
def keyed(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(env={**test_env, "ROOMCAST_KEYS": KEY}) as proc:
        yield proc


def test_a_tokens_capability_is_read_from_its_claims() -> None:
    assert token_capability("not-a-jwt") is None


async def test_connected_capability_follows_a_renewal(keyed: ServerProcess) -> None:
    grants = [WIDE]

    async def auth_callback() -> str:
        body = {"client_id": "erin", "ttl_s": 3, "capability": grants[-1]}
        async with httpx.AsyncClient(base_url=keyed.url) as http:
            response = await http.post(
                "/v1/tokens", json=body, headers={"Authorization": f"Bearer {KEY}"}
            )
        token: str = response.raise_for_status().json()["token"]
        return token

    async with connect(keyed.url, auth_callback=auth_callback) as client:
        assert client.connected is not None and client.connected.capability == WIDE
        renewed: list[StateChange] = []
        client.on("renewed", renewed.append)
        grants.append(NARROW)
        await eventually(lambda: bool(renewed), within=10)
        assert client.connected.capability == NARROW
