"""The Anthropic adapter against a local server speaking the Messages SSE format."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from fake_llm import (
    FAST_RETRY,
    FakeLLMServer,
    Reply,
    anthropic_end,
    anthropic_error,
    anthropic_event,
    anthropic_start,
    anthropic_text,
    anthropic_text_block,
    anthropic_tool_block,
    collect,
)

from roomcast.agents.providers import (
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    ToolSpec,
    Turn,
    Usage,
)
from roomcast.agents.providers.anthropic import AnthropicProvider

LOOKUP = ToolSpec(
    name="search_history",
    description="Search the room's history.",
    parameters={"type": "object", "properties": {"query": {"type": "string"}}},
)

REQUEST = ProviderRequest(
    agent_name="sage",
    system_prompt="You are sage.",
    messages=(
        Turn("alice", "hi"),
        Turn("sage", "Hello alice."),
        Turn("bob", "what did carol say?"),
        Turn("carol", "@sage find it"),
    ),
    tools=(LOOKUP,),
    max_tokens=300,
    temperature=0.5,
)


@contextlib.asynccontextmanager
async def provider_for(
    server: FakeLLMServer, *, timeout_s: float = 10.0
) -> AsyncIterator[AnthropicProvider]:
    provider = AnthropicProvider(
        model="fake-messages-model",
        api_key="sk-ant-test",
        base_url=server.url,
        timeout_s=timeout_s,
        retry=FAST_RETRY,
        key_env="ANTHROPIC_API_KEY",
    )
    try:
        yield provider
    finally:
        await provider.aclose()


async def test_text_stream_and_the_request_sent() -> None:
    async with (
        FakeLLMServer([Reply(events=anthropic_text(["Carol said", " hello."]))]) as server,
        provider_for(server) as provider,
    ):
        events = await collect(provider, REQUEST)
    assert events == [TextDelta("Carol said"), TextDelta(" hello."), Usage(20, 6)]
    [sent] = server.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/messages"
    # The key goes as `x-api-key` or, in newer SDKs, as a bearer token.
    assert "sk-ant-test" in sent.headers.get("x-api-key", "") + sent.headers.get(
        "authorization", ""
    )
    assert "anthropic-version" in sent.headers
    body = sent.body
    assert body["model"] == "fake-messages-model"
    assert body["stream"] is True
    assert body["max_tokens"] == 300
    assert body["temperature"] == 0.5
    assert body["system"] == "You are sage."
    # Lines of other people that follow each other make one user turn.
    assert body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "alice: hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello alice."}]},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "bob: what did carol say?"},
                {"type": "text", "text": "carol: @sage find it"},
            ],
        },
    ]
    assert body["tools"] == [
        {
            "name": "search_history",
            "description": "Search the room's history.",
            "input_schema": LOOKUP.parameters,
        }
    ]


async def test_a_conversation_that_starts_with_the_agent_gets_a_user_turn_first() -> None:
    request = ProviderRequest(
        agent_name="sage",
        system_prompt="",
        messages=(Turn("sage", "Welcome!"), Turn("dan", "thanks")),
    )
    async with (
        FakeLLMServer([Reply(events=anthropic_text(["ok"]))]) as server,
        provider_for(server) as provider,
    ):
        await collect(provider, request)
    body = server.requests[0].body
    assert "system" not in body
    assert [m["role"] for m in body["messages"]] == ["user", "assistant", "user"]


async def test_tool_use_with_input_split_across_deltas_arrives_whole() -> None:
    events = [
        anthropic_start(input_tokens=50),
        *anthropic_text_block(0, ["Searching."]),
        *anthropic_tool_block(1, "toolu_1", "search_history", ['{"que', 'ry": "car', 'ol"}']),
        *anthropic_tool_block(2, "toolu_2", "search_history", []),
        *anthropic_end(output_tokens=33, stop_reason="tool_use"),
    ]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        got = await collect(provider, REQUEST)
    assert got == [
        TextDelta("Searching."),
        ToolCall("toolu_1", "search_history", {"query": "carol"}),
        ToolCall("toolu_2", "search_history", {}),
        Usage(50, 33),
    ]


async def test_a_tool_round_is_sent_back_as_tool_use_and_tool_result_blocks() -> None:
    call = ToolCall("toolu_1", "search_history", {"query": "carol"})
    request = ProviderRequest(
        agent_name="sage",
        system_prompt="",
        messages=(
            Turn("carol", "find it"),
            ToolRound("Searching.", (ToolResult(call, "no match", is_error=True),)),
        ),
    )
    async with (
        FakeLLMServer([Reply(events=anthropic_text(["Nothing found."]))]) as server,
        provider_for(server) as provider,
    ):
        await collect(provider, request)
    assert server.requests[0].body["messages"] == [
        {"role": "user", "content": [{"type": "text", "text": "carol: find it"}]},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Searching."},
                {
                    "type": "tool_use",
                    "id": "toolu_1",
                    "name": "search_history",
                    "input": {"query": "carol"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_1",
                    "content": "no match",
                    "is_error": True,
                }
            ],
        },
    ]


async def test_401_is_a_readable_error_that_is_not_retried() -> None:
    reply = Reply(status=401, body=anthropic_error("invalid x-api-key", "authentication_error"))
    async with FakeLLMServer([reply]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError) as caught:
            await collect(provider, REQUEST)
    error = caught.value
    assert (error.status, error.retryable) == (401, False)
    assert "HTTP 401: invalid x-api-key" in error.message
    assert "$ANTHROPIC_API_KEY" in error.message
    assert len(server.requests) == 1


async def test_429_before_the_first_token_is_retried() -> None:
    limited = Reply(status=429, body=anthropic_error("Rate limited", "rate_limit_error"))
    async with (
        FakeLLMServer([limited, limited, Reply(events=anthropic_text(["ok"]))]) as server,
        provider_for(server) as provider,
    ):
        events = await collect(provider, REQUEST)
    assert events == [TextDelta("ok"), Usage(20, 6)]
    assert len(server.requests) == 3


async def test_a_rate_limit_error_event_before_any_text_is_retried() -> None:
    early = Reply(
        events=[
            anthropic_start(),
            anthropic_event("error", error={"type": "rate_limit_error", "message": "slow down"}),
        ]
    )
    async with (
        FakeLLMServer([early, Reply(events=anthropic_text(["ok"]))]) as server,
        provider_for(server) as provider,
    ):
        events = await collect(provider, REQUEST)
    assert events == [TextDelta("ok"), Usage(20, 6)]
    assert len(server.requests) == 2


async def test_an_error_event_after_text_fails_without_a_retry() -> None:
    late = Reply(
        events=[
            anthropic_start(),
            *anthropic_text_block(0, ["Partial"]),
            anthropic_event("error", error={"type": "rate_limit_error", "message": "slow down"}),
        ]
    )
    async with FakeLLMServer([late]) as server, provider_for(server) as provider:
        got: list[ProviderEvent] = []
        with pytest.raises(ProviderError) as caught:
            async with contextlib.aclosing(provider.stream(REQUEST)) as stream:
                async for event in stream:
                    got.append(event)
    assert got == [TextDelta("Partial")]
    assert caught.value.status == 429
    assert "slow down" in caught.value.message
    assert len(server.requests) == 1


async def test_an_overloaded_event_is_retryable_but_not_retried() -> None:
    overloaded = Reply(
        events=[
            anthropic_start(),
            anthropic_event("error", error={"type": "overloaded_error", "message": "Overloaded"}),
        ]
    )
    async with FakeLLMServer([overloaded]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError) as caught:
            await collect(provider, REQUEST)
    assert (caught.value.status, caught.value.retryable) == (529, True)
    assert len(server.requests) == 1


async def test_a_malformed_stream_is_a_provider_error() -> None:
    events = [anthropic_start(), "event: content_block_start\ndata: {oops\n\n"]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError) as caught:
            await collect(provider, REQUEST)
    assert "malformed stream" in caught.value.message
    assert caught.value.retryable is False


async def test_a_stream_without_message_stop_is_a_provider_error() -> None:
    events = [anthropic_start(), *anthropic_text_block(0, ["cut"])]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError, match="before message_stop"):
            await collect(provider, REQUEST)


async def test_usage_counts_cached_input_and_the_last_cumulative_counts() -> None:
    start = anthropic_event(
        "message_start",
        message={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": "fake-messages-model",
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": 10,
                "cache_creation_input_tokens": 100,
                "cache_read_input_tokens": 1000,
                "output_tokens": 1,
            },
        },
    )
    delta = anthropic_event(
        "message_delta",
        delta={"stop_reason": "end_turn", "stop_sequence": None},
        usage={"input_tokens": 12, "output_tokens": 7},
    )
    events = [start, *anthropic_text_block(0, ["hi"]), delta, anthropic_event("message_stop")]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        got = await collect(provider, REQUEST)
    assert got == [TextDelta("hi"), Usage(12 + 100 + 1000, 7)]
