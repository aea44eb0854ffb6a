"""Acknowledged means durable: a publish that got ``ok`` survives SIGKILL of the server."""

from __future__ import annotations

import asyncio
import contextlib
import signal

from roomcast.testing import ServerProcess, WireClient


async def _publish_until_dropped(client: WireClient, channel: str, acked: dict[int, int]) -> None:
    """Pipeline publishes (up to 200 in flight) until the connection dies."""
    sent: dict[int, int] = {}
    k = 0

    async def reader() -> None:
        while True:
            reply = await client.next(lambda m: m["action"] == "ok", timeout=30)
            acked[sent.pop(reply["ref"])] = reply["serial"]

    task = asyncio.create_task(reader())
    try:
        while not client.closed.is_set():
            while len(sent) < 200:
                ref = client.next_ref()
                sent[ref] = k
                await client.send({"action": "publish", "channel": channel, "data": k, "ref": ref})
                k += 1
            await asyncio.sleep(0)
    except Exception:  # the server died under us
        pass
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task


async def test_sigkill_loses_no_acknowledged_publish(test_env: dict[str, str]) -> None:
    proc = ServerProcess(env=test_env)
    try:
        proc.start()
        client = await WireClient.connect(proc.ws_url, client_id="writer")
        acked: dict[int, int] = {}
        publishing = asyncio.create_task(_publish_until_dropped(client, "room:durable", acked))
        while len(acked) < 3000:  # noqa: ASYNC110 - polling a plain dict
            await asyncio.sleep(0.05)
        proc.stop(signal.SIGKILL)
        await asyncio.wait_for(publishing, 30)
        assert len(acked) >= 3000

        proc.start()  # same file, same port
        reader = await WireClient.connect(proc.ws_url, client_id="reader")
        stored: dict[int, int] = {}
        after = 0
        while True:
            page = await reader.request("history", channel="room:durable", after=after, limit=1000)
            for message in page["messages"]:
                stored[message["data"]] = message["msg_serial"]
            if not page["has_more"]:
                break
            after = page["messages"][-1]["msg_serial"]
        missing = {k: s for k, s in acked.items() if stored.get(k) != s}
        assert missing == {}, f"{len(missing)} acknowledged publishes lost"
        serials = sorted(stored.values())
        assert serials == list(range(1, len(serials) + 1))  # gap-free
        ok = await reader.request("publish", channel="room:durable", data="after restart")
        assert ok["serial"] == len(serials) + 1  # serials continue without a gap
        await reader.close()
    finally:
        proc.close()


async def test_sigterm_flushes_and_exits_cleanly(test_env: dict[str, str]) -> None:
    proc = ServerProcess(env=test_env)
    try:
        proc.start()
        client = await WireClient.connect(proc.ws_url, client_id="writer")
        for k in range(50):
            await client.send({"action": "publish", "channel": "room:term", "data": k})
        await client.request("ping")
        assert proc.stop(signal.SIGTERM) == 0
        assert "flushed and closed" in proc.output()
        proc.start()
        reader = await WireClient.connect(proc.ws_url, client_id="reader")
        page = await reader.request("history", channel="room:term", limit=100)
        assert [m["data"] for m in page["messages"]] == list(range(50))
        await reader.close()
    finally:
        proc.close()
