"""The runtime with the real provider adapters, against local servers that speak OpenAI's and
Anthropic's streaming formats: the answer is the model's stream, the request is the room."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from fake_llm import (
    FakeLLMServer,
    Reply,
    anthropic_text,
    openai_chunk,
    openai_error,
    openai_text,
)

from polling import eventually
from roomcast.agents import runtime as runtime_module
from roomcast.agents.config import AgentConfig
from roomcast.agents.runtime import AgentRuntime
from roomcast.client import Message, connect
from roomcast.testing import ServerProcess

KEY = "workers:" + "p" * 32
ALICE = {"X-Roomcast-Client-Id": "alice"}
ENVIRON = {"FAKE_KEY": "sk-test"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {
        "ROOMCAST_KEYS": KEY,
        "ROOMCAST_ALLOW_ANONYMOUS": "true",
        "ROOMCAST_PUBLISH_RATE": "0",
        "ROOMCAST_LOG_LEVEL": "warning",
    }
    with ServerProcess(store="memory://", env=env) as proc:
        yield proc


def agent(
    fake: FakeLLMServer, channel: str, provider: str = "openai", **fields: Any
) -> AgentConfig:
    """The agent ``helper`` in ``channel`` only (the tests share one server)."""
    base = f"{fake.url}/v1" if provider == "openai" else fake.url
    values: dict[str, Any] = {
        "name": "helper",
        "provider": provider,
        "model": "fake-model",
        "base_url": base,
        "api_key_env": "FAKE_KEY",
        "rooms": (channel,),
        "price_per_mtok_in": 1.0,
        "price_per_mtok_out": 2.0,
    }
    values.update(fields)
    return AgentConfig(**values)


@contextlib.asynccontextmanager
async def running(server: ServerProcess, config: AgentConfig) -> AsyncIterator[AgentRuntime]:
    """An agent runtime for ``config`` on ``server``, closed after."""
    runtime = AgentRuntime(server.url, [config], key=KEY, environ=ENVIRON)
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.aclose()


async def answers(url: str, channel: str) -> list[Message]:
    async with connect(url, client_id="reader") as client:
        async for page in client.channels.get(channel).history(limit=100):
            return [m for m in page.messages if m.client_id == "helper" and m.name == "text"]
    return []


async def settled(url: str, channel: str, count: int = 1, within: float = 15) -> list[Message]:
    async with asyncio.timeout(within):
        while True:
            found = await answers(url, channel)
            if len(found) >= count and all(m.status != "streaming" for m in found):
                return found
            await asyncio.sleep(0.05)


@pytest.fixture
def channel() -> str:
    import uuid

    return f"room:{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def fake_openai(request: pytest.FixtureRequest) -> AsyncIterator[FakeLLMServer]:
    async with FakeLLMServer(request.param) as fake:
        yield fake


async def ask(server: ServerProcess, channel: str, text: str, earlier: str | None = None) -> int:
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.url, client_id="bob") as bob,
    ):
        if earlier is not None:
            await bob.channels.get(channel).publish(earlier)
        return await alice.channels.get(channel).publish(text)


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
async def test_a_mention_streams_the_models_answer_with_usage(
    server: ServerProcess, channel: str, provider: str
) -> None:
    pieces = ["Let's ", "try ", "the ", "taco ", "place."]
    events = (
        openai_text(pieces, usage=(120, 5))
        if provider == "openai"
        else anthropic_text(pieces, input_tokens=120, output_tokens=5)
    )
    async with FakeLLMServer([Reply(events=events, pause_s=0.02)]) as fake:
        async with running(server, agent(fake, channel, provider)):
            trigger = await ask(server, channel, "@helper pick a place", earlier="I want tacos")
            [answer] = await settled(server.url, channel)
    assert answer.data == "".join(pieces) and answer.status == "complete"
    assert answer.extras["reply_to"] == trigger
    assert answer.extras["agent"] == {
        "name": "helper",
        "provider": provider,
        "model": "fake-model",
        "depth": 1,
    }
    usage = answer.extras["usage"]
    assert (usage["input_tokens"], usage["output_tokens"]) == (120, 5)
    assert usage["cost_usd"] == pytest.approx(120 / 1e6 * 1.0 + 5 / 1e6 * 2.0)
    [request] = fake.requests
    sent = str(request.body)
    assert "I want tacos" in sent and "bob" in sent  # earlier room messages, with speakers
    assert "@helper pick a place" in sent
    assert request.body["model"] == "fake-model" and request.body["stream"] is True


async def test_cancel_closes_the_model_stream(server: ServerProcess, channel: str) -> None:
    events = [
        openai_chunk({"role": "assistant", "content": ""}),
        *(openai_chunk({"content": f"word{i} "}) for i in range(5)),
    ]
    async with FakeLLMServer([Reply(events=events, pause_s=0.05, hold=True)]) as fake:
        async with running(server, agent(fake, channel)):
            async with connect(server.url, client_id="alice") as alice:
                lunch = alice.channels.get(channel)
                await lunch.publish("@helper talk to me")
                async with asyncio.timeout(10):
                    found: list[Message] = []
                    while not found or not found[0].data:
                        await asyncio.sleep(0.05)
                        found = await answers(server.url, channel)
                await lunch.cancel(found[0].msg_serial, reason="stop")
                await asyncio.wait_for(fake.disconnected.wait(), 5)
                [answer] = await settled(server.url, channel)
    assert answer.status == "cancelled" and answer.cancelled_by == "alice"
    assert str(answer.data).startswith("word0")


async def test_a_401_fails_the_answer_with_a_readable_reason(
    server: ServerProcess, channel: str
) -> None:
    body = openai_error("Incorrect API key provided", "invalid_request_error", "invalid_api_key")
    async with FakeLLMServer([Reply(status=401, body=body)]) as fake:
        async with running(server, agent(fake, channel)):
            await ask(server, channel, "@helper hello?")
            [answer] = await settled(server.url, channel)
    assert answer.status == "failed"
    failure = answer.extras["failure"]
    assert "401" in failure or "API key" in failure, failure
    assert answer.extras["reply_to"] == 1 and len(fake.requests) == 1


async def test_a_429_is_retried_and_then_answers(server: ServerProcess, channel: str) -> None:
    limited = Reply(
        status=429,
        body=openai_error("Slow down", "rate_limit_error"),
        headers={"retry-after": "0.1"},
    )
    async with FakeLLMServer([limited, Reply(events=openai_text(["Fine."]))]) as fake:
        async with running(server, agent(fake, channel)):
            await ask(server, channel, "@helper hello?")
            [answer] = await settled(server.url, channel)
    assert answer.status == "complete" and answer.data == "Fine."
    assert len(fake.requests) == 2


async def test_auto_asks_the_judge_then_answers_or_stays_silent(
    server: ServerProcess, channel: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="roomcast.agents")
    replies = [
        Reply(events=openai_text(["YES - they want a suggestion"])),
        Reply(events=openai_text(["Try the ramen place."])),
        Reply(events=openai_text(["NO, they are chatting among themselves"])),
    ]
    async with FakeLLMServer(replies) as fake:
        async with running(server, agent(fake, channel, policy="auto")):
            await ask(server, channel, "anyone know a good lunch place?")
            [answer] = await settled(server.url, channel)
            assert answer.data == "Try the ramen place."
            second = await ask(server, channel, "bob, see you at noon")
            await asyncio.sleep(1.5)
            assert len(await answers(server.url, channel)) == 1
    judge = fake.requests[0].body
    assert judge["max_tokens"] == 30 or judge.get("max_completion_tokens") == 30
    assert len(fake.requests) == 3  # judge, answer, judge
    # Each decision is logged once, after the judge made it, with its reason.
    decisions = [r.getMessage() for r in caplog.records if f" {channel} #" in r.getMessage()]
    assert decisions == [
        f"agent helper answers {channel} #1 (the auto judge: they want a suggestion)",
        f"agent helper stays silent on {channel} #{second} "
        "(the auto judge: they are chatting among themselves)",
    ]


async def test_the_context_is_kept_from_the_rooms_events_not_read_at_each_mention(
    server: ServerProcess, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent keeps each room's latest messages from the events it receives: a mention
    reads no history, and the context still has every change (an edit, a delete) and the
    agent's own streamed answer, whole."""
    history_reads: list[str] = []
    read_history = runtime_module.latest_messages

    async def counted(reads: Any, limit: int) -> list[Message]:
        history_reads.append(reads.name)
        return await read_history(reads, limit)

    monkeypatch.setattr(runtime_module, "latest_messages", counted)
    replies = [
        Reply(events=openai_text(["Tacos ", "at ", "noon."]), pause_s=0.02),
        Reply(events=openai_text(["Noodles ", "then."]), pause_s=0.02),
    ]
    async with FakeLLMServer(replies) as fake, running(server, agent(fake, channel)) as runtime:
        async with (
            connect(server.url, client_id="alice") as alice,
            connect(server.url, client_id="bob") as bob,
        ):
            said = bob.channels.get(channel)
            wish = await said.publish("I want tacos")
            oops = await said.publish("my password is hunter2")
            [worker] = runtime.workers
            await eventually(
                lambda: channel in worker.rooms and worker.rooms[channel].recent.serial is not None,
                what="the agent in the room, its latest messages kept",
            )
            await alice.channels.get(channel).publish("@helper pick a place")
            await settled(server.url, channel)
            await said.update(wish, data="I want noodles")
            await said.delete(oops)
            await alice.channels.get(channel).publish("@helper and now?")
            await settled(server.url, channel, count=2)
    first, second = (str(request.body["messages"]) for request in fake.requests)
    assert "I want tacos" in first and "hunter2" in first
    assert "I want noodles" in second and "Tacos at noon." in second
    assert "I want tacos" not in second and "hunter2" not in second
    assert history_reads == []


async def test_a_message_asked_again_is_taken_from_what_is_kept(
    server: ServerProcess, channel: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``agent.regenerate`` (here from the AI SDK's regenerate) names a message the agent
    keeps: it answers it again without reading it from history."""
    reads: list[int] = []
    read_message = runtime_module.message_at

    async def counted(reads_from: Any, msg_serial: int) -> Message | None:
        reads.append(msg_serial)
        return await read_message(reads_from, msg_serial)

    monkeypatch.setattr(runtime_module, "message_at", counted)
    replies = [
        Reply(events=openai_text(["Tacos."]), pause_s=0.01),
        Reply(events=openai_text(["Noodles."]), pause_s=0.01),
    ]
    chat = channel.removeprefix("room:")
    async with FakeLLMServer(replies) as fake, running(server, agent(fake, channel)) as runtime:
        async with connect(server.url, client_id="alice") as alice:
            await alice.channels.get(channel).publish("hello")  # the agent attaches the room
            [worker] = runtime.workers
            await eventually(
                lambda: channel in worker.rooms and worker.rooms[channel].recent.serial is not None,
                what="the agent in the room, its latest messages kept",
            )
            asked = await alice.channels.get(channel).publish("@helper pick a place")
            await settled(server.url, channel)
            async with httpx.AsyncClient(base_url=server.url, headers=ALICE) as http:
                messages = (await http.get(f"/v1/ai-sdk/chat/{chat}/messages")).json()["messages"]
                again = {
                    "id": chat,
                    "messages": messages[:2],
                    "trigger": "regenerate-message",
                    "messageId": messages[2]["id"],
                }
                async with http.stream("POST", "/v1/ai-sdk/chat", json=again) as response:
                    assert response.status_code == 200
                    lines = [line async for line in response.aiter_lines()]
            assert any('"Noodles."' in line for line in lines)
            [_, second] = await settled(server.url, channel, count=2)
    assert second.data == "Noodles." and second.extras["regenerate"]
    assert "pick a place" in str(fake.requests[1].body["messages"])
    assert asked not in reads
