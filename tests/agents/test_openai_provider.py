"""The OpenAI-compatible adapter against a local server speaking the chat-completions SSE format."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import pytest
from fake_llm import (
    FAST_RETRY,
    FakeLLMServer,
    Reply,
    collect,
    openai_chunk,
    openai_error,
    openai_text,
    openai_tool_call_deltas,
    sse,
)

from roomcast.agents.providers import (
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    RetryPolicy,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    ToolSpec,
    Turn,
    Usage,
)
from roomcast.agents.providers.openai import OpenAICompatibleProvider

POLL = ToolSpec(
    name="create_poll",
    description="Open a poll in the room.",
    parameters={
        "type": "object",
        "properties": {
            "question": {"type": "string"},
            "options": {"type": "array", "items": {"type": "string"}},
        },
        "required": ["question", "options"],
    },
)

REQUEST = ProviderRequest(
    agent_name="ada",
    system_prompt="You are ada.",
    messages=(
        Turn("alice", "hi there"),
        Turn("ada", "Hello alice."),
        Turn("bob", "@ada what is 2+2?"),
    ),
    tools=(POLL,),
    max_tokens=256,
    temperature=0.3,
)


@contextlib.asynccontextmanager
async def provider_for(
    server: FakeLLMServer, *, timeout_s: float = 10.0
) -> AsyncIterator[OpenAICompatibleProvider]:
    provider = OpenAICompatibleProvider(
        model="fake-model",
        api_key="sk-test",
        base_url=server.url + "/v1",
        timeout_s=timeout_s,
        retry=FAST_RETRY,
        key_env="OPENAI_API_KEY",
    )
    try:
        yield provider
    finally:
        await provider.aclose()


async def test_text_stream_and_the_request_sent() -> None:
    async with (
        FakeLLMServer([Reply(events=openai_text(["Two", " plus two", " is four."]))]) as server,
        provider_for(server) as provider,
    ):
        events = await collect(provider, REQUEST)
    assert events == [
        TextDelta("Two"),
        TextDelta(" plus two"),
        TextDelta(" is four."),
        Usage(12, 5),
    ]
    [sent] = server.requests
    assert sent.method == "POST"
    assert sent.path == "/v1/chat/completions"
    assert sent.headers["authorization"] == "Bearer sk-test"
    body = sent.body
    assert body["model"] == "fake-model"
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 256
    assert body["temperature"] == 0.3
    assert body["messages"] == [
        {"role": "system", "content": "You are ada."},
        {"role": "user", "content": "alice: hi there"},
        {"role": "assistant", "content": "Hello alice."},
        {"role": "user", "content": "bob: @ada what is 2+2?"},
    ]
    assert body["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "create_poll",
                "description": "Open a poll in the room.",
                "parameters": POLL.parameters,
            },
        }
    ]


async def test_tool_calls_split_across_chunks_arrive_whole() -> None:
    events = [
        openai_chunk({"role": "assistant", "content": "Let me ask the room."}),
        *openai_tool_call_deltas(
            0,
            "call_a",
            "create_poll",
            ['{"quest', 'ion": "Lunch?", ', '"options": ["pizza", "sushi"]}'],
        ),
        *openai_tool_call_deltas(
            1, "call_b", "create_poll", ['{"question": "Dinner?",', ' "options": []}']
        ),
        openai_chunk(finish_reason="tool_calls"),
        openai_chunk(usage=(40, 30)),
        sse("[DONE]"),
    ]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        got = await collect(provider, REQUEST)
    assert got == [
        TextDelta("Let me ask the room."),
        ToolCall("call_a", "create_poll", {"question": "Lunch?", "options": ["pizza", "sushi"]}),
        ToolCall("call_b", "create_poll", {"question": "Dinner?", "options": []}),
        Usage(40, 30),
    ]


async def test_a_tool_round_is_sent_back_as_assistant_tool_calls_and_tool_messages() -> None:
    call = ToolCall("call_a", "create_poll", {"question": "Lunch?", "options": ["a", "b"]})
    request = ProviderRequest(
        agent_name="ada",
        system_prompt="",
        messages=(
            Turn("alice", "make a poll"),
            ToolRound("On it.", (ToolResult(call, "poll p1 created"),)),
        ),
    )
    async with (
        FakeLLMServer([Reply(events=openai_text(["Done."]))]) as server,
        provider_for(server) as provider,
    ):
        await collect(provider, request)
    messages = server.requests[0].body["messages"]
    assert messages == [
        {"role": "user", "content": "alice: make a poll"},
        {
            "role": "assistant",
            "content": "On it.",
            "tool_calls": [
                {
                    "id": "call_a",
                    "type": "function",
                    "function": {
                        "name": "create_poll",
                        "arguments": '{"question": "Lunch?", "options": ["a", "b"]}',
                    },
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_a", "content": "poll p1 created"},
    ]
    assert "tools" not in server.requests[0].body


def test_openai_itself_gets_max_completion_tokens() -> None:
    provider = OpenAICompatibleProvider(model="gpt-x", api_key="sk-test")
    params = provider.request_params(REQUEST)
    assert params["max_completion_tokens"] == 256
    assert "max_tokens" not in params


async def test_401_is_a_readable_error_that_is_not_retried() -> None:
    reply = Reply(
        status=401,
        body=openai_error(
            "Incorrect API key provided: sk-te**", "invalid_request_error", "invalid_api_key"
        ),
    )
    async with FakeLLMServer([reply]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError) as caught:
            await collect(provider, REQUEST)
    error = caught.value
    assert error.status == 401
    assert error.retryable is False
    assert "HTTP 401" in error.message
    assert "Incorrect API key provided" in error.message
    assert "$OPENAI_API_KEY" in error.message
    assert "fake-model" in error.message
    assert len(server.requests) == 1


async def test_429_before_the_first_token_is_retried() -> None:
    limited = Reply(
        status=429,
        body=openai_error("Rate limit reached", "rate_limit_error"),
        headers={"retry-after": "0"},
    )
    async with (
        FakeLLMServer([limited, Reply(events=openai_text(["ok"]))]) as server,
        provider_for(server) as provider,
    ):
        events = await collect(provider, REQUEST)
    assert events == [TextDelta("ok"), Usage(12, 5)]
    assert len(server.requests) == 2


async def test_429_retries_are_bounded() -> None:
    limited = Reply(status=429, body=openai_error("Rate limit reached", "rate_limit_error"))
    async with FakeLLMServer([limited]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError) as caught:
            await collect(provider, REQUEST)
    assert caught.value.status == 429
    assert caught.value.retryable is True
    assert "Rate limit reached" in caught.value.message
    assert "gave up after 3 attempts" in caught.value.message
    assert len(server.requests) == FAST_RETRY.attempts


async def test_a_malformed_stream_is_a_provider_error() -> None:
    events = [openai_chunk({"content": "Hel"}), "data: {not json\n\n", sse("[DONE]")]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        got: list[ProviderEvent] = []
        with pytest.raises(ProviderError) as caught:
            async with contextlib.aclosing(provider.stream(REQUEST)) as stream:
                async for event in stream:
                    got.append(event)
    assert got == [TextDelta("Hel")]
    assert "malformed stream" in caught.value.message
    assert caught.value.retryable is False
    assert len(server.requests) == 1


async def test_tool_arguments_that_are_not_json_are_a_provider_error() -> None:
    events = [
        *openai_tool_call_deltas(0, "call_a", "create_poll", ['{"question": ', "oops"]),
        openai_chunk(finish_reason="tool_calls"),
        sse("[DONE]"),
    ]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError, match="not JSON"):
            await collect(provider, REQUEST)


async def test_a_stream_that_ends_before_the_model_finished_is_a_provider_error() -> None:
    events = [openai_chunk({"content": "Half an ans"})]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError, match="ended before the model finished"):
            await collect(provider, REQUEST)


async def test_an_error_object_inside_the_stream_is_a_provider_error() -> None:
    events = [
        openai_chunk({"content": "Hel"}),
        sse({"error": {"message": "The server had an error", "type": "server_error"}}),
    ]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        with pytest.raises(ProviderError, match="The server had an error"):
            await collect(provider, REQUEST)
    assert len(server.requests) == 1


def test_the_retry_delay_follows_retry_after_and_stays_bounded() -> None:
    policy = RetryPolicy(attempts=5, base_delay_s=0.5, max_delay_s=8.0)
    assert policy.delay_s(1, retry_after_s=2.0) == 2.0
    assert policy.delay_s(1, retry_after_s=120.0) == 8.0
    assert 0.25 <= policy.delay_s(1) <= 0.5
    assert 1.0 <= policy.delay_s(3) <= 2.0
    assert policy.delay_s(20) == 8.0


async def test_tool_call_deltas_without_an_index_are_told_apart_by_id() -> None:
    def part(call_id: str | None, name: str | None, arguments: str) -> str:
        call: dict[str, object] = {"function": {"arguments": arguments}}
        if call_id:
            call["id"] = call_id
            call["type"] = "function"
            call["function"] = {"name": name, "arguments": arguments}
        return openai_chunk({"tool_calls": [call]})

    events = [
        part("c1", "create_poll", '{"question": '),
        part(None, None, '"A?", "options": []}'),
        part("c2", "create_poll", '{"question": "B?", "options": []}'),
        openai_chunk(finish_reason="tool_calls"),
        sse("[DONE]"),
    ]
    async with FakeLLMServer([Reply(events=events)]) as server, provider_for(server) as provider:
        got = await collect(provider, REQUEST)
    assert got == [
        ToolCall("c1", "create_poll", {"question": "A?", "options": []}),
        ToolCall("c2", "create_poll", {"question": "B?", "options": []}),
    ]
