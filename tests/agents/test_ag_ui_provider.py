"""The ``ag-ui`` provider: any AG-UI agent as a room member (docs/agents.md, "AG-UI agents").

The agent is a real one: a Pydantic AI agent on a scripted model, served through Pydantic AI's
AG-UI adapter (ag_ui_agent_server.py). First the provider on its own, then ``roomcast serve``
and ``roomcast agents`` running it from an agents.toml.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ag_ui.core import (
    AssistantMessage,
    Event,
    RunFinishedEvent,
    RunStartedEvent,
    TextMessageChunkEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallChunkEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)
from ag_ui_agent_server import MENU, AGUIAgentServer, Plan, Script
from fake_llm import FAST_RETRY, collect

from roomcast.agents.config import AgentConfigError, load_agents
from roomcast.agents.providers import (
    ProviderConfigError,
    ProviderError,
    ProviderRequest,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    ToolSpec,
    Turn,
    make_provider,
)
from roomcast.agents.providers.ag_ui import (
    AGUIProvider,
    RunFailed,
    RunReader,
    parse_event,
)
from roomcast.agents.tools import ToolError, apply_patch, state_ops
from roomcast.client import LiveMap, Message, connect
from roomcast.protocol import messages as m
from roomcast.testing import AgentsProcess, ServerProcess, free_port

KEY = "workers:" + "g" * 32
AUTH = "Bearer agent-secret"
WORKER_ENV = {"AGGIE_AUTH": AUTH}
POLL = ToolSpec(
    "create_poll",
    "Create a poll.",
    {"type": "object", "properties": {"question": {"type": "string"}}},
)


def room() -> str:
    return f"agui:{uuid.uuid4().hex[:8]}"


def ask(thread: str, *turns: Turn | ToolRound, tools: tuple[ToolSpec, ...] = ()) -> ProviderRequest:
    return ProviderRequest(
        agent_name="aggie",
        system_prompt="You are aggie.",
        messages=turns or (Turn("alice", "@aggie hi"),),
        tools=tools,
        room=thread,
        state={"root": {"score": 1}},
    )


@pytest.fixture(scope="module")
def agent() -> Iterator[AGUIAgentServer]:
    with AGUIAgentServer() as server:
        yield server


# ----------------------------------------------------------------------------- the provider


async def test_text_and_the_agents_own_tool_become_the_answer_and_a_result(
    agent: AGUIAgentServer,
) -> None:
    thread = room()
    plan = Plan(say=["Let me ", "look."], call="todays_menu", then=["We have ", "tacos."])
    agent.plan(thread, plan)
    provider = AGUIProvider(url=agent.url, headers={"Authorization": AUTH})
    try:
        events = await collect(provider, ask(thread, Turn("bob", "hungry?")))
    finally:
        await provider.aclose()
    text = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert text == "Let me look.\n\nWe have tacos."  # two messages of one run: two paragraphs
    [result] = [e for e in events if isinstance(e, ToolResult)]
    assert result.call.name == "todays_menu" and result.output == MENU
    assert not any(isinstance(e, ToolCall) for e in events)  # the agent ran it: not ours
    [got] = agent.requests_for(thread)
    assert got.headers["authorization"] == AUTH
    assert got.input.state == {"root": {"score": 1}} and got.input.run_id
    [user] = got.input.messages
    assert isinstance(user, UserMessage) and user.name == "bob"
    assert user.content == "bob: hungry?"
    [context] = got.input.context or []
    assert context.value == "You are aggie."


async def test_a_call_of_a_roomcast_tool_is_left_to_roomcast_and_the_result_sent_back(
    agent: AGUIAgentServer,
) -> None:
    thread = room()
    arguments = {"question": "Lunch?"}
    agent.plan(
        thread, Plan(say=["A poll."], call="create_poll", arguments=arguments, then=["Open."])
    )
    provider = AGUIProvider(url=agent.url)
    turns = (Turn("alice", "hi @aggie"), Turn("aggie", "Hello."), Turn("alice", "@aggie a poll"))
    request = ask(thread, *turns, tools=(POLL,))
    try:
        first = await collect(provider, request)
        [call] = [e for e in first if isinstance(e, ToolCall)]
        assert call == ToolCall("call-1", "create_poll", arguments)
        done = ToolRound("A poll.", (ToolResult(call, '{"poll_id": "map-3"}'),))
        second = await collect(provider, ask(thread, *turns, done, tools=(POLL,)))
    finally:
        await provider.aclose()
    assert [e.text for e in second if isinstance(e, TextDelta)] == ["Open."]
    sent = agent.requests_for(thread)
    assert [t.name for t in sent[0].input.tools or []] == ["create_poll"]
    user, own, _, calls, result = sent[1].input.messages
    assert isinstance(own, AssistantMessage) and own.content == "Hello."
    assert isinstance(calls, AssistantMessage) and calls.tool_calls is not None
    assert calls.tool_calls[0].function.name == "create_poll"
    assert isinstance(result, ToolMessage) and result.tool_call_id == "call-1"
    assert result.content == '{"poll_id": "map-3"}'
    assert sent[0].input.messages[0].id == user.id  # a message keeps its id from run to run


async def test_run_error_is_a_provider_error_with_the_agents_message(
    agent: AGUIAgentServer,
) -> None:
    thread = room()
    agent.plan(thread, Plan(fail="the kitchen is on fire"))
    provider = AGUIProvider(url=agent.url)
    try:
        with pytest.raises(ProviderError) as caught:
            await collect(provider, ask(thread))
    finally:
        await provider.aclose()
    assert caught.value.message == f"AG-UI agent at {agent.url}: the kitchen is on fire"


async def test_http_errors_name_the_url_without_credentials_the_status_and_the_first_line(
    agent: AGUIAgentServer,
) -> None:
    host = agent.base.removeprefix("http://")
    provider = AGUIProvider(url=f"http://user:pw@{host}/unauthorized?token=s3cret")
    try:
        with pytest.raises(ProviderError) as caught:
            await collect(provider, ask(room()))
    finally:
        await provider.aclose()
    assert caught.value.status == 401 and not caught.value.retryable
    message = caught.value.message
    assert message.startswith(f"AG-UI agent at http://{host}/unauthorized: HTTP 401: ")
    assert "invalid token for this agent" in message and "see the logs" not in message
    assert "pw" not in message and "s3cret" not in message


async def test_a_refused_connection_and_a_stream_cut_short_are_readable_failures(
    agent: AGUIAgentServer,
) -> None:
    nobody = f"http://127.0.0.1:{free_port()}/agent"
    refused = AGUIProvider(url=nobody, retry=FAST_RETRY)
    cut = AGUIProvider(url=f"{agent.base}/cut-short")
    try:
        with pytest.raises(ProviderError) as first:
            await collect(refused, ask(room()))
        with pytest.raises(ProviderError) as second:
            await collect(cut, ask(room()))
    finally:
        await refused.aclose()
        await cut.aclose()
    assert first.value.message.startswith(f"AG-UI agent at {nobody}: cannot connect: ")
    assert second.value.message == (
        f"AG-UI agent at {agent.base}/cut-short: malformed stream: the stream ended before "
        "RUN_FINISHED"
    )


async def test_closing_the_stream_closes_the_http_stream_at_once(agent: AGUIAgentServer) -> None:
    thread = room()
    agent.plan(thread, Plan(say=["Thinking"], endless=True, pause_s=0.02))
    provider = AGUIProvider(url=agent.url)
    try:
        async with contextlib.aclosing(provider.stream(ask(thread))) as events:
            async for event in events:
                if isinstance(event, TextDelta) and "word3" in event.text:
                    break
        assert await asyncio.to_thread(agent.gone(thread).wait, 10)
    finally:
        await provider.aclose()


async def answer_of(url: str, thread: str) -> list[Any]:
    """The provider events of one answer from the agent at ``url`` in ``thread``."""
    provider = AGUIProvider(url=url, headers={"Authorization": AUTH})
    try:
        return await collect(provider, ask(thread))
    finally:
        await provider.aclose()


async def failure_of(url: str) -> ProviderError:
    """The error that ends an answer from the agent at ``url``."""
    with pytest.raises(ProviderError) as caught:
        await answer_of(url, room())
    return caught.value


@pytest.mark.parametrize("code", [307, 308])
async def test_a_307_or_308_is_followed_with_the_post_its_body_and_headers(
    agent: AGUIAgentServer, code: int
) -> None:
    thread = room()
    agent.plan(thread, Plan(say=["Found ", "me."]))
    events = await answer_of(f"{agent.base}/moved/{code}/2", thread)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Found me."
    [got] = agent.requests_for(thread)
    assert got.headers["authorization"] == AUTH and got.input.thread_id == thread


async def test_a_redirect_that_is_not_followed_is_named_with_where_it_points(
    agent: AGUIAgentServer,
) -> None:
    endless = await failure_of(f"{agent.base}/moved/307/9")
    assert endless.status == 307 and endless.message == (
        f"AG-UI agent at {agent.base}/moved/307/9: HTTP 307: redirected to "
        f"{agent.base}/moved/307/3 (still, after 5 redirects)"
    )
    found = await failure_of(f"{agent.base}/moved/302/1")
    assert found.status == 302 and found.message == (
        f"AG-UI agent at {agent.base}/moved/302/1: HTTP 302: redirected to {agent.base}/agent "
        "(not followed: only a 307 or 308 keeps the POST of a run)"
    )


@pytest.mark.parametrize(
    ("kind", "said"), [("titled", "502 Bad Gateway & more"), ("bare", "(an HTML page)")]
)
async def test_an_html_error_page_is_named_by_its_title(
    agent: AGUIAgentServer, kind: str, said: str
) -> None:
    failed = await failure_of(f"{agent.base}/html-error/{kind}")
    assert failed.status == 500 and failed.retryable
    assert failed.message == f"AG-UI agent at {agent.base}/html-error/{kind}: HTTP 500: {said}"


def hello(*middle: Event) -> Script:
    """A run with ``middle`` between its start and its end."""
    return Script(
        [
            RunStartedEvent(thread_id="t", run_id="r"),
            *middle,
            RunFinishedEvent(thread_id="t", run_id="r"),
        ]
    )


async def test_the_content_type_is_matched_without_case_or_parameters(
    agent: AGUIAgentServer,
) -> None:
    thread, other = room(), room()
    said = hello(
        TextMessageStartEvent(message_id="m1"),
        TextMessageContentEvent(message_id="m1", delta="Hi."),
        TextMessageEndEvent(message_id="m1"),
    ).events
    agent.script(thread, Script(said, content_type="Text/Event-Stream; Charset=UTF-8"))
    events = await answer_of(f"{agent.base}/scripted", thread)
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["Hi."]
    agent.script(other, Script(said, content_type="application/json"))
    with pytest.raises(ProviderError) as caught:
        await answer_of(f"{agent.base}/scripted", other)
    assert caught.value.message == (
        f"AG-UI agent at {agent.base}/scripted: HTTP 200: answered with application/json, "
        "not an event stream (text/event-stream)"
    )


async def test_a_tool_call_end_after_its_result_is_read_as_the_reference_client_does(
    agent: AGUIAgentServer,
) -> None:
    thread = room()
    agent.script(
        thread,
        hello(
            ToolCallStartEvent(tool_call_id="c1", tool_call_name="todays_menu"),
            ToolCallArgsEvent(tool_call_id="c1", delta="{}"),
            ToolCallResultEvent(message_id="r1", tool_call_id="c1", content=MENU),
            ToolCallEndEvent(tool_call_id="c1"),
            TextMessageChunkEvent(message_id="m1", delta="Tacos."),
        ),
    )
    events = await answer_of(f"{agent.base}/scripted", thread)
    assert events[:2] == [ToolResult(ToolCall("c1", "todays_menu", {}), MENU), TextDelta("Tacos.")]
    assert not any(isinstance(e, ToolCall) for e in events)


async def test_a_text_chunk_that_continues_no_message_is_a_malformed_stream(
    agent: AGUIAgentServer,
) -> None:
    thread = room()
    agent.script(thread, hello(TextMessageChunkEvent(delta="lost words")))
    with pytest.raises(ProviderError) as caught:
        await answer_of(f"{agent.base}/scripted", thread)
    assert caught.value.message == (
        f"AG-UI agent at {agent.base}/scripted: malformed stream: a TEXT_MESSAGE_CHUNK without "
        "messageId, and no message is open"
    )


# ----------------------------------------------------------------------------- events, sans I/O


def test_chunks_interleaved_messages_and_unknown_events_read_as_the_protocol_says() -> None:
    reader = RunReader()
    out = []
    for event in (
        TextMessageChunkEvent(message_id="m1", delta="Hello"),
        TextMessageChunkEvent(delta=" there."),
        TextMessageStartEvent(message_id="u1", role="user"),
        TextMessageContentEvent(message_id="u1", delta="(the user's words)"),
        ToolCallChunkEvent(tool_call_id="c1", tool_call_name="vote", delta='{"option"'),
        ToolCallChunkEvent(delta=': "tacos"}'),
        ToolCallStartEvent(tool_call_id="c2", tool_call_name="search"),
        ToolCallEndEvent(tool_call_id="c2"),
        ToolCallResultEvent(message_id="r", tool_call_id="c2", content="nothing found"),
        TextMessageContentEvent(message_id="m2", delta="Done."),
        RunFinishedEvent(thread_id="t", run_id="r", usage=[TokenUsage(input_tokens=7)]),
        TextMessageContentEvent(message_id="m2", delta="after the end"),
    ):
        out += reader.feed(event)
    assert parse_event('{"type": "SOMETHING_NEW", "x": 1}') is None
    text = "".join(e.text for e in out if isinstance(e, TextDelta))
    assert text == "Hello there.\n\nDone."
    assert [e for e in out if isinstance(e, ToolResult)] == [
        ToolResult(ToolCall("c2", "search", {}), "nothing found")
    ]
    assert [e for e in out if isinstance(e, ToolCall)] == [
        ToolCall("c1", "vote", {"option": "tacos"})
    ]
    assert reader.finished and reader.finish() == []


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ("not json", "an event is not JSON"),
        ('{"type": "TEXT_MESSAGE_CONTENT", "delta": "x"}', "is not valid: messageId"),
        ('{"type": "TOOL_CALL_ARGS", "toolCallId": "nope", "delta": "{}"}', "never started"),
    ],
)
def test_malformed_events_are_refused_with_what_is_wrong(data: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        event = parse_event(data)
        assert event is not None
        RunReader().feed(event)


@pytest.mark.parametrize(
    ("events", "problem"),
    [
        (  # the message the chunk would continue has ended
            [
                TextMessageChunkEvent(message_id="m1", delta="Hi."),
                TextMessageEndEvent(message_id="m1"),
                TextMessageChunkEvent(delta="more"),
            ],
            "a TEXT_MESSAGE_CHUNK without messageId, and no message is open",
        ),
        (  # chunks of two calls interleaved
            [
                ToolCallChunkEvent(tool_call_id="c1", tool_call_name="vote", delta="{}"),
                ToolCallChunkEvent(tool_call_id="c2", tool_call_name="vote", delta="{}"),
                ToolCallChunkEvent(tool_call_id="c1", delta=" "),
            ],
            "arguments of tool call 'c1' after it ended",
        ),
        (
            [
                ToolCallStartEvent(tool_call_id="c1", tool_call_name="vote"),
                ToolCallEndEvent(tool_call_id="c1"),
                ToolCallArgsEvent(tool_call_id="c1", delta="{}"),
            ],
            "arguments of tool call 'c1' after it ended",
        ),
    ],
)
def test_events_out_of_order_are_refused_with_what_is_wrong(
    events: list[Event], problem: str
) -> None:
    reader = RunReader()
    with pytest.raises(ValueError, match=problem):
        for event in events:
            reader.feed(event)


def test_an_interrupt_fails_the_run_with_its_reason() -> None:
    interrupt = parse_event(
        '{"type": "RUN_FINISHED", "threadId": "t", "runId": "r", "outcome": {"type": '
        '"interrupt", "interrupts": [{"id": "i", "reason": "approve the payment"}]}}'
    )
    assert interrupt is not None
    with pytest.raises(RunFailed, match="approve the payment"):
        RunReader().feed(interrupt)


# ----------------------------------------------------------------------------- shared state


STATE: dict[str, Any] = {
    "root": {"score": 1, "polls": {"object_id": "map-2"}, "note": "hi"},
    "map-2": {"p1": {"object_id": "map-3"}},
    "counter-5": 4,
}


def test_a_patch_becomes_sets_removes_and_increments() -> None:
    patch: list[dict[str, Any]] = [
        {"op": "replace", "path": "/root/score", "value": 3},
        {"op": "add", "path": "/root/winner", "value": {"name": "alice"}},
        {"op": "remove", "path": "/root/note"},
        {"op": "test", "path": "/counter-5", "value": 4},
        {"op": "replace", "path": "/counter-5", "value": 10},
        {"op": "copy", "from": "/root/winner/name", "path": "/root/runner~1up"},
    ]
    assert state_ops(STATE, apply_patch(STATE, patch), partial=False) == [
        m.MapSet(object_id="root", key="score", value=3),
        m.MapSet(object_id="root", key="winner", value={"name": "alice"}),
        m.MapSet(object_id="root", key="runner/up", value="alice"),
        m.MapRemove(object_id="root", key="note"),
        m.CounterInc(object_id="counter-5", amount=6),
    ]
    assert STATE["root"]["score"] == 1  # the patch works on a copy


@pytest.mark.parametrize(
    ("patch", "problem"),
    [
        ([{"op": "replace", "path": "/root/nothing", "value": 1}], "the path is not there"),
        ([{"op": "test", "path": "/root/score", "value": 2}], "the test failed"),
        ([{"op": "remove", "path": "/map-2"}], "never deleted"),
        ([{"op": "add", "path": "/map-9", "value": {}}], "no live object 'map-9'"),
        ([{"op": "replace", "path": "/counter-5", "value": "x"}], "counter"),
        ([{"op": "replace", "path": "/root", "value": [1]}], "map"),
        ([{"op": "remove", "path": "/root/polls"}], "root.polls is kept for polls"),
        ([{"op": "add", "path": "root", "value": 1}], "not a JSON pointer"),
    ],
)
def test_a_patch_that_cannot_be_live_objects_is_refused_whole(
    patch: list[dict[str, Any]], problem: str
) -> None:
    with pytest.raises(ToolError, match=problem):
        state_ops(STATE, apply_patch(STATE, patch), partial=False)


def test_a_snapshot_changes_what_the_agent_changed_and_leaves_out_nothing() -> None:
    given = {"root": {"score": 1, "note": "hi"}, "counter-5": 4}
    snapshot = {"root": {"score": 1, "winner": "bob"}, "counter-5": 6}
    assert state_ops(given, snapshot, partial=True) == [
        m.MapSet(object_id="root", key="winner", value="bob"),
        m.MapRemove(object_id="root", key="note"),
        m.CounterInc(object_id="counter-5", amount=2),
    ]
    assert state_ops(given, {"root": given["root"]}, partial=True) == []


# ----------------------------------------------------------------------------- configuration


def agents_file(folder: Path, body: str) -> Path:
    path = folder / f"agents-{uuid.uuid4().hex[:6]}.toml"
    path.write_text(textwrap.dedent(body))
    return path


@pytest.mark.parametrize(
    ("entry", "problem"),
    [
        ("", "url: missing (required for provider 'ag-ui')"),
        ('url = "ftp://agents.example/run"', "url: must be an http:// or https:// URL"),
        ('url = "agents.example/run"', "url: must be an http:// or https:// URL"),
        ('url = "http://a/run"\napi_key_env = "K"', "api_key_env: ag-ui agents take `url`"),
        (
            'url = "http://a/run"\nheaders_env = { "X Y" = "V" }',
            "headers_env: 'X Y' is not an HTTP header",
        ),
    ],
)
def test_a_bad_ag_ui_entry_is_refused_naming_the_agent_and_the_key(
    tmp_path: Path, entry: str, problem: str
) -> None:
    path = agents_file(tmp_path, f'[[agents]]\nname = "aggie"\nprovider = "ag-ui"\n{entry}\n')
    with pytest.raises(AgentConfigError) as caught:
        load_agents(path)
    assert f"{path}: [[agents]] #1 ('aggie'): {problem}" in str(caught.value)


def test_a_header_variable_that_is_not_set_is_a_config_error(tmp_path: Path) -> None:
    path = agents_file(
        tmp_path,
        """
        [[agents]]
        name = "aggie"
        provider = "ag-ui"
        url = "https://agents.example/run"
        headers_env = { Authorization = "AGGIE_AUTH" }
        """,
    )
    [config] = load_agents(path)
    assert config.model == "agent" and config.headers_env == (("Authorization", "AGGIE_AUTH"),)
    with pytest.raises(ProviderConfigError) as caught:
        make_provider(config, {})
    assert str(caught.value) == (
        f"{path}: [[agents]] #1 ('aggie'): headers_env: Authorization: the variable "
        "$AGGIE_AUTH is not set (set it, or name another variable)"
    )


@pytest.mark.parametrize("command", ["serve", "agents"])
def test_the_commands_stop_with_one_line_on_a_bad_ag_ui_agent(tmp_path: Path, command: str) -> None:
    path = agents_file(
        tmp_path,
        """
        [[agents]]
        name = "aggie"
        provider = "ag-ui"
        url = "http://127.0.0.1:9/agent"
        headers_env = { Authorization = "AGGIE_AUTH" }
        """,
    )
    args = ["--port", str(free_port())] if command == "serve" else ["--key", KEY]
    done = subprocess.run(
        [sys.executable, "-m", "roomcast", command, "--agents", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "AGGIE_AUTH": ""},
    )
    assert done.returncode == 2, done.stdout + done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert lines == [
        f"cannot start the agents: {path}: [[agents]] #1 ('aggie'): headers_env: "
        "Authorization: the variable $AGGIE_AUTH is not set (set it, or name another variable)"
    ]


# ----------------------------------------------------------------------------- in rooms


@pytest.fixture(scope="module")
def agents_toml(agent: AGUIAgentServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ag-ui")
    return agents_file(
        folder,
        f"""
        [[agents]]
        name = "aggie"
        provider = "ag-ui"
        url = "{agent.url}"
        headers_env = {{ Authorization = "AGGIE_AUTH" }}
        rooms = ["agui:*"]
        tools = ["builtin"]
        """,
    )


@pytest.fixture(scope="module")
def server(agents_toml: Path) -> Iterator[ServerProcess]:
    env = {
        "ROOMCAST_KEYS": KEY,
        "ROOMCAST_ALLOW_ANONYMOUS": "true",
        "ROOMCAST_PUBLISH_RATE": "0",
        "ROOMCAST_LOG_LEVEL": "info",
        "AGGIE_AUTH": AUTH,
    }
    with ServerProcess(store="memory://", env=env, args=["--agents", str(agents_toml)]) as proc:
        yield proc


async def history(url: str, channel: str) -> list[Message]:
    async with connect(url, client_id="reader") as client:
        async for page in client.channels.get(channel).history(limit=500):
            return page.messages
    return []


def answers(messages: list[Message]) -> list[Message]:
    return [x for x in messages if x.name == "text" and x.client_id == "aggie"]


async def reached(url: str, channel: str, check: Callable[[list[Message]], bool]) -> list[Message]:
    """The room's history once ``check`` holds of it."""
    async with asyncio.timeout(20):
        while True:
            messages = await history(url, channel)
            if check(messages):
                return messages
            await asyncio.sleep(0.05)


async def settled(url: str, channel: str, count: int = 1) -> list[Message]:
    """The room's history once aggie gave ``count`` answers and nothing streams."""
    return await reached(
        url,
        channel,
        lambda ms: len(answers(ms)) >= count and all(x.status != "streaming" for x in ms),
    )


async def test_a_mention_gets_the_agents_text_and_the_agent_gets_the_room(
    server: ServerProcess, agent: AGUIAgentServer
) -> None:
    channel = room()
    pieces = ["Let's ", "try ", "the ", "taco ", "place."]
    agent.plan(channel, Plan(say=pieces, pause_s=0.01))
    async with (
        connect(server.url, client_id="alice") as alice,
        connect(server.url, client_id="bob") as bob,
    ):
        lunch = alice.channels.get(channel)
        await bob.channels.get(channel).publish("I want tacos")
        await (await lunch.objects.root()).set("score", 1)
        poll = await lunch.polls.create("Where?", ["tacos", "ramen"])
        trigger = await lunch.publish("@aggie pick a place")
        [answer] = answers(await settled(server.url, channel))
    assert answer.data == "".join(pieces) and answer.status == "complete"
    assert answer.extras["reply_to"] == trigger
    assert answer.extras["agent"] == {
        "name": "aggie",
        "provider": "ag-ui",
        "model": "agent",
        "depth": 1,
    }
    [got] = agent.requests_for(channel)
    assert got.headers["authorization"] == AUTH
    said = [(x.name, x.content) for x in got.input.messages if isinstance(x, UserMessage)]
    assert said == [("bob", "bob: I want tacos"), ("alice", "alice: @aggie pick a place")]
    state = got.input.state
    assert isinstance(state, dict) and state["root"]["score"] == 1
    polls = state[state["root"]["polls"]["object_id"]]
    assert state[polls[poll.poll_id]["object_id"]]["question"] == "Where?"
    assert {"create_poll", "vote", "set_shared"} <= {t.name for t in got.input.tools or []}
    assert "aggie" in (got.input.context or [])[0].value


async def test_its_roomcast_tool_call_lands_in_the_room_and_its_result_goes_back(
    server: ServerProcess, agent: AGUIAgentServer
) -> None:
    channel = room()
    arguments = {"question": "Lunch?", "options": ["pizza", "sushi"]}
    plan = Plan(say=["Let me set up a poll."], call="create_poll", arguments=arguments)
    plan.then = ["The poll is open."]
    agent.plan(channel, plan)
    async with connect(server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        await lunch.publish("@aggie a poll please")
        messages = await settled(server.url, channel)
        await lunch.objects.sync()
        [made] = lunch.polls.list()
    assert made.question == "Lunch?" and made.created_by == "aggie"
    [line] = [x for x in messages if x.name == "tool"]
    assert line.data["tool"] == "create_poll" and line.data["error"] is False
    assert made.poll_id in line.data["result"]
    [answer] = answers(messages)
    assert answer.data == "Let me set up a poll.\n\nThe poll is open."
    assert line.extras["answer"] == answer.msg_serial
    assert line.extras["at"] == len("Let me set up a poll.")
    first, second = agent.requests_for(channel)
    [result] = [x for x in second.input.messages if isinstance(x, ToolMessage)]
    assert result.tool_call_id == "call-1" and made.poll_id in str(result.content)
    assert made.poll_id not in str(first.input.state) and made.poll_id in str(second.input.state)


async def test_its_own_tool_shows_as_a_tool_line_and_is_not_run_again(
    server: ServerProcess, agent: AGUIAgentServer
) -> None:
    channel = room()
    agent.plan(channel, Plan(say=["Checking."], call="todays_menu", then=["Tacos it is."]))
    async with connect(server.url, client_id="alice") as alice:
        await alice.channels.get(channel).publish("@aggie what's cooking?")
        messages = await settled(server.url, channel)
    [line] = [x for x in messages if x.name == "tool"]
    assert line.data == {"tool": "todays_menu", "arguments": {}, "result": MENU, "error": False}
    [answer] = answers(messages)
    assert answer.data == "Checking.\n\nTacos it is." and answer.status == "complete"
    assert line.extras["answer"] == answer.msg_serial and line.extras["at"] == len("Checking.")
    assert len(agent.requests_for(channel)) == 1  # the agent finished it in one run


async def until(root: LiveMap, check: Callable[[], bool]) -> None:
    """Return once ``check()`` holds of the live objects (waking on each change)."""
    changed = asyncio.Event()
    remove = root.objects.subscribe(lambda _: changed.set())
    try:
        async with asyncio.timeout(15):
            while not check():
                await changed.wait()
                changed.clear()
    finally:
        remove()


async def test_its_state_delta_and_snapshot_land_in_the_live_objects(
    server: ServerProcess, agent: AGUIAgentServer
) -> None:
    channel = room()
    async with connect(server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        root = await lunch.objects.root()
        await root.set("score", 1)
        agent.plan(channel, Plan(call="keep_score", arguments={"points": 3}, then=["3 it is."]))
        await lunch.publish("@aggie the score is 3")
        await until(root, lambda: root.get("score") == 3)  # STATE_DELTA: replace /root/score
        agent.plan(channel, Plan(call="name_winner", arguments={"name": "bob"}, then=["Bob!"]))
        await lunch.publish("@aggie who won?")
        await until(root, lambda: root.get("winner") == "bob")  # STATE_SNAPSHOT
        counter = await lunch.objects.create_counter(4)
        await root.set("tally", counter)
        agent.plan(channel, Plan(call="tally", then=["Counted."]))
        await lunch.publish("@aggie count one")
        await until(root, lambda: root.get("tallied") is True)
        messages = await settled(server.url, channel, count=3)
    # The second snapshot still holds the first one's +1: it is not counted twice.
    assert counter.value == 5 and root.get("score") == 3
    assert [x.data for x in answers(messages)] == ["3 it is.", "Bob!", "Counted."]
    tools = [x.data["tool"] for x in messages if x.name == "tool"]
    assert tools == ["keep_score", "name_winner", "tally"]


async def test_its_run_error_fails_the_answer_with_the_agents_message(
    server: ServerProcess, agent: AGUIAgentServer
) -> None:
    channel = room()
    agent.plan(channel, Plan(fail="the kitchen is closed today"))
    async with connect(server.url, client_id="alice") as alice:
        await alice.channels.get(channel).publish("@aggie lunch?")
        [answer] = answers(await settled(server.url, channel))
    assert answer.status == "failed"
    assert answer.extras["failure"] == f"AG-UI agent at {agent.url}: the kitchen is closed today"


async def test_a_cancel_closes_its_http_stream_and_ends_the_answer_cancelled(
    server: ServerProcess, agent: AGUIAgentServer
) -> None:
    channel = room()
    agent.plan(channel, Plan(say=["Well"], endless=True, pause_s=0.05))
    async with connect(server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        await lunch.publish("@aggie talk to me")
        started = await reached(server.url, channel, lambda ms: any(x.data for x in answers(ms)))
        await lunch.cancel(answers(started)[0].msg_serial, reason="enough")
        assert await asyncio.to_thread(agent.gone(channel).wait, 10)
        [answer] = answers(await settled(server.url, channel))
    assert answer.status == "cancelled" and answer.cancelled_by == "alice"
    assert str(answer.data).startswith("Well")


async def test_workers_and_the_server_answer_each_trigger_once(
    server: ServerProcess, agent: AGUIAgentServer, agents_toml: Path, tmp_path: Path
) -> None:
    channel = room()
    agent.plan(channel, Plan(say=["Here."]))
    workers = [AgentsProcess(server.url, agents_toml, KEY, env=WORKER_ENV) for _ in range(2)]
    try:
        for worker in workers:
            await worker.start().logged("agent aggie is up", within=30)
        async with connect(server.url, client_id="alice") as alice:
            lunch = alice.channels.get(channel)
            triggers = [await lunch.publish(f"@aggie question {i}") for i in range(5)]
            await settled(server.url, channel, count=5)
    finally:
        codes = [worker.stop() for worker in workers]
        outputs = [worker.output() for worker in workers]
        for worker in workers:
            worker.close()
    assert codes == [0, 0], outputs
    messages = await history(server.url, channel)
    assert sorted(x.extras["reply_to"] for x in answers(messages)) == triggers
    assert len(agent.requests_for(channel)) == 5  # one run per trigger, whoever claimed it
    said = [x.data for x in answers(messages)]
    assert said == ["Here."] * 5
