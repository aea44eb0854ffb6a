"""``connected.capability`` (docs/protocol.md §2): what the connection may do, as the server
decides it (anonymous default, a key's, a token's), so that a UI offers only that."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from roomcast.protocol.capabilities import Capability
from roomcast.settings import DEFAULT_ANONYMOUS_CAPABILITY
from roomcast.testing import ServerProcess, WireClient

KEY = "site:" + "c" * 32
NARROW = {"room:*": ["cancel-own", "publish", "subscribe"]}


@pytest.fixture(scope="module")
def keyed(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    env = {**test_env, "ROOMCAST_KEYS": KEY, "ROOMCAST_ALLOW_ANONYMOUS": "true"}
    with ServerProcess(env=env) as proc:
        yield proc


async def test_an_anonymous_connection_is_told_the_anonymous_capability(
    keyed: ServerProcess,
) -> None:
    client = await WireClient.connect(keyed.ws_url, client_id="alice")
    capability = client.connected["capability"]
    assert capability == Capability.parse(DEFAULT_ANONYMOUS_CAPABILITY).to_json()
    assert "cancel-own" in capability["*"] and "cancel-any" not in capability["*"]
    await client.close()


async def test_a_token_connection_is_told_the_tokens_capability(keyed: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=keyed.url) as http:
        minted = await http.post(
            "/v1/tokens",
            json={"client_id": "bob", "capability": NARROW},
            headers={"Authorization": f"Bearer {KEY}"},
        )
    assert minted.status_code == 200, minted.text
    client = await WireClient.connect(keyed.ws_url, token=minted.json()["token"])
    assert client.connected["capability"] == NARROW
    await client.close()


async def test_a_key_connection_is_told_everything(keyed: ServerProcess) -> None:
    client = await WireClient.connect(keyed.ws_url, key=KEY)
    assert client.connected["capability"] == {"*": ["*"]}
    await client.close()
