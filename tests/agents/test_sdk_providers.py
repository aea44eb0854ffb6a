"""What both SDK-backed adapters share (``providers.sdk``): the stream's lifetime and the
transport errors, each adapter against a local server speaking its own wire format."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import pytest
from fake_llm import (
    FAST_RETRY,
    FakeLLMServer,
    Reply,
    anthropic_start,
    anthropic_text,
    anthropic_text_block,
    collect,
    openai_chunk,
    openai_text,
)

from roomcast.agents.providers import ProviderError, ProviderRequest, TextDelta, Turn
from roomcast.agents.providers.anthropic import AnthropicProvider
from roomcast.agents.providers.openai import OpenAICompatibleProvider
from roomcast.agents.providers.sdk import SDKProvider

REQUEST = ProviderRequest(
    agent_name="ada",
    system_prompt="You are ada.",
    messages=(Turn("alice", "hi there"),),
    tools=(),
    max_tokens=64,
)


@dataclass(frozen=True)
class Adapter:
    name: str
    provider: type[SDKProvider]
    path: str  # what the adapter's base_url adds to the server's address
    text: Callable[[Sequence[str]], list[str]]  # a whole streamed text answer
    first_piece: list[str]  # the start of an answer, up to the text "Hel"


ADAPTERS = [
    Adapter(
        "openai",
        OpenAICompatibleProvider,
        "/v1",
        openai_text,
        [openai_chunk({"content": "Hel"})],
    ),
    Adapter(
        "anthropic",
        AnthropicProvider,
        "",
        anthropic_text,
        [anthropic_start(), *anthropic_text_block(0, ["Hel"])[:2]],
    ),
]


@pytest.fixture(params=ADAPTERS, ids=lambda adapter: adapter.name)
def adapter(request: pytest.FixtureRequest) -> Adapter:
    chosen: Adapter = request.param
    return chosen


@contextlib.asynccontextmanager
async def provider_at(
    adapter: Adapter, url: str, *, timeout_s: float = 10.0
) -> AsyncIterator[SDKProvider]:
    provider = adapter.provider(
        model="fake-model",
        api_key="sk-test",
        base_url=url + adapter.path,
        timeout_s=timeout_s,
        retry=FAST_RETRY,
    )
    try:
        yield provider
    finally:
        await provider.aclose()


async def test_a_silent_service_times_out(adapter: Adapter) -> None:
    async with (
        FakeLLMServer([Reply(stall_s=5, events=adapter.text(["late"]))]) as server,
        provider_at(adapter, server.url, timeout_s=0.3) as provider,
    ):
        with pytest.raises(ProviderError) as caught:
            await collect(provider, REQUEST)
    assert "no answer within 0.3 s" in caught.value.message
    assert caught.value.retryable is True


async def test_an_unreachable_service_is_a_provider_error(adapter: Adapter) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with provider_at(adapter, f"http://127.0.0.1:{port}") as provider:
        with pytest.raises(ProviderError) as caught:
            await collect(provider, REQUEST)
    assert "connection failed" in caught.value.message
    assert caught.value.retryable is True


async def test_closing_the_iterator_closes_the_http_stream(adapter: Adapter) -> None:
    held = Reply(events=adapter.first_piece, hold=True)
    async with FakeLLMServer([held]) as server, provider_at(adapter, server.url) as provider:
        stream = provider.stream(REQUEST)
        assert await anext(stream) == TextDelta("Hel")
        await stream.aclose()
        await asyncio.wait_for(server.disconnected.wait(), timeout=5)
    assert server.completed == 0


async def test_cancelling_the_consumer_closes_the_http_stream(adapter: Adapter) -> None:
    held = Reply(events=adapter.first_piece, hold=True)
    first = asyncio.Event()

    async def consume(provider: SDKProvider) -> None:
        async with contextlib.aclosing(provider.stream(REQUEST)) as events:
            async for _ in events:
                first.set()

    async with FakeLLMServer([held]) as server, provider_at(adapter, server.url) as provider:
        task = asyncio.create_task(consume(provider))
        await asyncio.wait_for(first.wait(), timeout=5)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(server.disconnected.wait(), timeout=5)
