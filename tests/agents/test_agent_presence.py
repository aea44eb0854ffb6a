"""Who is in a room's presence agrees with who answers there (docs/agents.md, "In the
room"): an agent that `root.agents` leaves out is not shown, and shows again once listed; in
a new room the agents are present as soon as someone is, before any message."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator

import httpx
import pytest

from roomcast.client import Channel, connect
from roomcast.testing import ServerProcess

AGENTS = """
[[agents]]
name = "helper"
provider = "scripted"
rooms = ["room:*"]

[[agents]]
name = "critic"
provider = "scripted"
rooms = ["room:*"]
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    path = tmp_path_factory.mktemp("presence") / "agents.toml"
    path.write_text(AGENTS)
    env = {"ROOMCAST_PUBLISH_RATE": "0", "ROOMCAST_LOG_LEVEL": "info"}
    with ServerProcess(store="memory://", env=env, args=["--agents", str(path)]) as proc:
        yield proc


async def present(channel: Channel) -> set[str]:
    return {member.client_id for member in await channel.presence.members()}


async def until(channel: Channel, check: Callable[[set[str]], bool]) -> set[str]:
    """Wait (20 s at most) until the members ``channel`` sees pass ``check``."""
    async with asyncio.timeout(20):
        while True:
            members = await present(channel)
            if check(members):
                return members
            await asyncio.sleep(0.05)


def new_room() -> str:
    return f"room:{uuid.uuid4().hex[:8]}"


async def test_an_agent_removed_from_the_room_leaves_its_presence_and_comes_back(
    server: ServerProcess,
) -> None:
    async with connect(server.url, client_id="alice") as alice:
        room = alice.channels.get(new_room())
        await room.publish("hello")
        await until(room, lambda members: {"helper", "critic"} <= members)
        root = await room.objects.root()
        listed = await room.objects.create_map({"critic": {"added_by": "alice", "ts": 1}})
        await root.set("agents", listed)  # the web UI's Remove of helper
        members = await until(room, lambda members: "helper" not in members)
        assert "critic" in members
        await listed.set("helper", {"added_by": "alice", "ts": 2})  # Add it back
        await until(room, lambda members: {"helper", "critic"} <= members)
        [helper] = [m for m in await room.presence.members() if m.client_id == "helper"]
        assert helper.data == {"kind": "agent", "status": "idle", "model": "scripted"}


async def test_agents_are_present_in_a_new_room_as_soon_as_someone_is(
    server: ServerProcess,
) -> None:
    channel = new_room()
    async with connect(server.url, client_id="alice") as alice:
        room = alice.channels.get(channel)
        await room.presence.enter({"name": "Alice"})
        members = await until(room, lambda members: {"helper", "critic"} <= members)
        assert members == {"alice", "helper", "critic"}
        # Nothing was published: the room has no message, and is not listed yet.
        async for page in room.history(limit=10):
            assert page.messages == []
        async with httpx.AsyncClient(base_url=server.url) as http:
            listed = (await http.get("/v1/channels", params={"prefix": channel})).json()
        assert listed["items"] == []
