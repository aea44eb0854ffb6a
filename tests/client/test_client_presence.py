"""Presence through the SDK: enter, update, leave, and a member list that stays current."""

from __future__ import annotations

import asyncio

from roomcast.client import Client, PresenceMember, connect
from roomcast.testing import ServerProcess


async def members_until(
    client: Client, channel: str, expected: list[tuple[str, object]]
) -> list[PresenceMember]:
    """The members once they are ``expected`` ((client_id, data) pairs, any order)."""
    async with asyncio.timeout(5):
        while True:
            members = await client.channels.get(channel).presence.members()
            if sorted((m.client_id, str(m.data)) for m in members) == sorted(
                (c, str(d)) for c, d in expected
            ):
                return members
            await asyncio.sleep(0.01)


async def test_members_follow_enter_update_and_leave(
    server: ServerProcess, channel_name: str
) -> None:
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.url, client_id="bob") as bob,
        connect(server.url, client_id="carol") as carol,
    ):
        assert await carol.channels.get(channel_name).presence.members() == []
        await alice.channels.get(channel_name).presence.enter({"kind": "human"})
        # Entering attaches: alice sees herself as soon as enter returns.
        [me] = await alice.channels.get(channel_name).presence.members()
        assert (me.client_id, me.connection_id) == ("alice", alice.connection_id)
        await bob.channels.get(channel_name).presence.enter({"kind": "agent", "status": "idle"})
        await members_until(
            carol,
            channel_name,
            [("alice", {"kind": "human"}), ("bob", {"kind": "agent", "status": "idle"})],
        )
        await bob.channels.get(channel_name).presence.update(
            {"kind": "agent", "status": "thinking"}
        )
        await members_until(
            carol,
            channel_name,
            [("alice", {"kind": "human"}), ("bob", {"kind": "agent", "status": "thinking"})],
        )
        await alice.channels.get(channel_name).presence.leave()
        await members_until(carol, channel_name, [("bob", {"kind": "agent", "status": "thinking"})])
        # A late joiner gets the list from attached.presence.
        async with connect(server.url, client_id="dave") as dave:
            [member] = await dave.channels.get(channel_name).presence.members()
            assert member.client_id == "bob" and isinstance(member, PresenceMember)
        await bob.close()  # a clean close: bob leaves at once
        await members_until(carol, channel_name, [])


async def test_detach_leaves_presence(server: ServerProcess, channel_name: str) -> None:
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.url, client_id="bob") as bob,
    ):
        await alice.channels.get(channel_name).presence.enter("here")
        await members_until(bob, channel_name, [("alice", "here")])
        await alice.channels.get(channel_name).detach()
        await members_until(bob, channel_name, [])
