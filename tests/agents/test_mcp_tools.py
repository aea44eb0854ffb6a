"""MCP servers' tools for agents (``[[mcp_servers]]``, ``tools = ["mcp:NAME"]``), with real
MCP servers (tests/agents/mcp_test_servers.py) over stdio and Streamable HTTP, the agent
runtime on a real roomcast server, and the scripted provider or the OpenAI-format fake."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_llm import FakeLLMServer, Reply, openai_chunk, openai_text, openai_tool_call_deltas, sse

from roomcast.agents.config import AgentConfig, AgentConfigError, McpServerConfig, load_agents
from roomcast.agents.mcp import McpServerConnection, McpToolbox, exposed_name, offered
from roomcast.agents.runtime import AgentRuntime
from roomcast.client import Message, connect
from roomcast.testing import AgentsProcess, ServerProcess, free_port

KEY = "workers:" + "m" * 32
SERVERS = str(Path(__file__).with_name("mcp_test_servers.py"))


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


@pytest.fixture
def channel() -> str:
    return f"room:{uuid.uuid4().hex[:8]}"


@pytest.fixture
def events(tmp_path: Path) -> Path:
    path = tmp_path / "events.txt"
    path.touch()
    return path


async def event_line(events: Path, start: str, *, after: int = 0, within: float = 20) -> str:
    """The first line of ``events`` from line ``after`` on that starts with ``start`` (the
    server writes the file from another process: it is read again until the line is there)."""
    async with asyncio.timeout(within):
        while True:
            lines = lines_read(events)[after:]
            for line in lines:
                if line.startswith(start):
                    return line
            await asyncio.sleep(0.05)


def lines_read(events: Path) -> list[str]:
    return events.read_text(encoding="utf-8").splitlines()


def lines_of(events: Path) -> int:
    return len(lines_read(events))


@contextlib.contextmanager
def http_mcp_server(events: Path, port: int) -> Iterator[subprocess.Popen[bytes]]:
    """The test MCP server over Streamable HTTP on ``port``, stopped after."""
    proc = subprocess.Popen(
        [sys.executable, SERVERS, "http", str(events), str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(10)


async def listening(port: int, within: float = 20) -> None:
    async with asyncio.timeout(within):
        while True:
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.05)
                continue
            writer.close()
            return


def agents_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agents.toml"
    path.write_text(text, encoding="utf-8")
    return path


def stdio_server(events: Path, extra: str = "") -> str:
    return f"""
[[mcp_servers]]
name = "tools"
command = {json.dumps(sys.executable)}
args = [{json.dumps(SERVERS)}, "stdio", {json.dumps(str(events))}]
ping_interval_s = 0.2
{extra}
"""


def http_server(port: int, extra: str = "") -> str:
    return f"""
[[mcp_servers]]
name = "web"
url = "http://127.0.0.1:{port}/mcp"
ping_interval_s = 0.2
{extra}
"""


@contextlib.asynccontextmanager
async def running(
    server: ServerProcess, config: AgentConfig, environ: dict[str, str] | None = None
) -> AsyncIterator[AgentRuntime]:
    runtime = AgentRuntime(server.url, [config], key=KEY, environ=environ or {"FAKE_KEY": "sk"})
    await runtime.start()
    try:
        yield runtime
    finally:
        await runtime.aclose()


async def room_messages(url: str, channel: str) -> list[Message]:
    async with connect(url, client_id="reader") as client:
        async for page in client.channels.get(channel).history(limit=100):
            return list(page.messages)
    return []


async def settled(url: str, channel: str, count: int = 1, within: float = 20) -> list[Message]:
    """The agent's ``count`` answers once none is streaming."""
    async with asyncio.timeout(within):
        while True:
            found = [
                m
                for m in await room_messages(url, channel)
                if m.client_id == "helper" and m.name == "text"
            ]
            if len(found) >= count and all(m.status != "streaming" for m in found):
                return found
            await asyncio.sleep(0.05)


async def tool_lines(url: str, channel: str) -> list[dict[str, Any]]:
    return [
        m.data
        for m in await room_messages(url, channel)
        if m.name == "tool" and isinstance(m.data, dict)
    ]


async def ask(server: ServerProcess, channel: str, text: str) -> int:
    async with connect(server.url, client_id="alice") as alice:
        return await alice.channels.get(channel).publish(text)


async def logged(caplog: pytest.LogCaptureFixture, *parts: str, within: float = 20) -> None:
    """Wait for a log record holding every one of ``parts`` (logging has no event to await)."""
    async with asyncio.timeout(within):
        while True:
            if any(all(p in r.getMessage() for p in parts) for r in caplog.records):
                return
            await asyncio.sleep(0.05)


def offered_names(body: Any) -> list[str]:
    return [tool["function"]["name"] for tool in body.get("tools", [])]


def openai_tool_call(call_id: str, name: str, arguments: dict[str, Any]) -> list[str]:
    return [
        openai_chunk({"role": "assistant", "content": ""}),
        *openai_tool_call_deltas(0, call_id, name, [json.dumps(arguments)]),
        openai_chunk(finish_reason="tool_calls"),
        sse("[DONE]"),
    ]


# ----------------------------------------------------------------------------- config


def test_mcp_servers_are_read_and_named_by_agents(tmp_path: Path, events: Path) -> None:
    path = agents_file(
        tmp_path,
        stdio_server(events, 'tools_deny = ["secret*"]')
        + http_server(8999, 'headers_env = { Authorization = "WEB_AUTH" }')
        + """
[[agents]]
name = "helper"
provider = "scripted"
tools = ["builtin", "mcp:tools", "mcp:web"]

[[agents]]
name = "plain"
provider = "scripted"
""",
    )
    helper, plain = load_agents(path)
    tools, web = helper.mcp_servers
    assert tools.command == sys.executable and tools.args[1:2] == ("stdio",)
    assert tools.tools_deny == ("secret*",) and tools.tools_allow == ("*",)
    assert web.url == "http://127.0.0.1:8999/mcp"
    assert web.headers_env == (("Authorization", "WEB_AUTH"),)
    assert plain.mcp_servers == ()


@pytest.mark.parametrize(
    ("server", "agent_tools", "says"),
    [
        ('name = "x"', '["mcp:x"]', "#1 ('x'): command: missing"),
        ('name = "x"\ncommand = "a"\nurl = "http://h/mcp"', '["mcp:x"]', "not both"),
        ('name = "x"\nurl = "ftp://h"', '["mcp:x"]', "url: must be an http"),
        ('name = "x_y"\ncommand = "a"', "[]", "name: 'x_y' is not a usable name"),
        ('name = "x"\ncommand = "a"\nheaders_env = { A = "B" }', "[]", "headers_env: only"),
        ('name = "x"\ncommand = "a"\nport = 3', "[]", "unknown key 'port'"),
        ('name = "x"\ncommand = "a"', '["mcp:nope"]', "('helper'): tools: 'mcp:nope' names no"),
    ],
)
def test_bad_mcp_entries_fail_naming_file_entry_and_key(
    tmp_path: Path, server: str, agent_tools: str, says: str
) -> None:
    path = agents_file(
        tmp_path,
        f'[[mcp_servers]]\n{server}\n\n[[agents]]\nname = "helper"\nprovider = "scripted"\n'
        f"tools = {agent_tools}\n",
    )
    with pytest.raises(AgentConfigError) as caught:
        load_agents(path)
    assert str(path) in str(caught.value) and says in str(caught.value), str(caught.value)


def test_a_header_variable_not_set_stops_the_agent(tmp_path: Path) -> None:
    path = agents_file(
        tmp_path,
        http_server(9, 'headers_env = { Authorization = "WEB_AUTH" }')
        + '[[agents]]\nname = "helper"\nprovider = "scripted"\ntools = ["mcp:web"]\n',
    )
    [helper] = load_agents(path)
    with pytest.raises(AgentConfigError) as caught:
        AgentRuntime("http://127.0.0.1:9", [helper], key=KEY, environ={})
    text = str(caught.value)
    assert str(path) in text and "('helper')" in text and "[[mcp_servers]] #1 ('web')" in text
    assert "headers_env: Authorization" in text and "WEB_AUTH is not set" in text


def test_tool_names_fit_every_provider_and_allow_deny_filter() -> None:
    assert exposed_name("files", "read") == "files__read"
    assert exposed_name("files", "secret.read/all") == "files__secret_read_all"
    assert len(exposed_name("s", "x" * 100)) == 64
    config = McpServerConfig(
        "s", command="c", tools_allow=("echo", "secret*"), tools_deny=("*.read",)
    )
    assert [t for t in ("echo", "add", "secret.read", "secret_x") if offered(config, t)] == [
        "echo",
        "secret_x",
    ]


# ----------------------------------------------------------------------------- real servers


async def test_allow_and_deny_filter_a_real_servers_tools(events: Path) -> None:
    config = McpServerConfig(
        "tools",
        command=sys.executable,
        args=(SERVERS, "stdio", str(events)),
        tools_allow=("echo", "add", "secret*"),
        tools_deny=("secret.*",),
    )
    toolbox = McpToolbox((config,), {}, "helper")
    await toolbox.start()
    try:
        assert sorted(toolbox.tools()) == ["tools__add", "tools__echo"]
        echo = toolbox.tools()["tools__echo"]
        assert echo.spec.parameters["properties"]["text"]["type"] == "string"
        assert await toolbox.connections[0].call("echo", {"text": "hi"}) == "echo: hi"
    finally:
        await toolbox.aclose()


async def test_an_http_server_gets_the_headers_from_the_environment(events: Path) -> None:
    port = free_port()
    config = McpServerConfig(
        "web",
        url=f"http://127.0.0.1:{port}/mcp",
        headers_env=(("Authorization", "WEB_AUTH"),),
    )
    with http_mcp_server(events, port):
        await listening(port)
        toolbox = McpToolbox((config,), {"WEB_AUTH": "Bearer web-secret"}, "helper")
        await toolbox.start()
        try:
            assert "web__whoami" in toolbox.tools()
            said = await toolbox.connections[0].call("whoami", {})
        finally:
            await toolbox.aclose()
    assert said == "Bearer web-secret"
    assert await event_line(events, "auth ") == "auth Bearer web-secret"


async def test_scripted_agent_calls_a_stdio_mcp_tool(
    server: ServerProcess, channel: str, tmp_path: Path, events: Path
) -> None:
    (tmp_path / "script.toml").write_text(
        """
[[replies]]
text = "Let me ask the tools."
then = "The tools have spoken."
[[replies.tool_calls]]
name = "tools__echo"
arguments = { text = "hello" }
[[replies.tool_calls]]
name = "tools__fail"
arguments = { reason = "no luck" }
""",
        encoding="utf-8",
    )
    path = agents_file(
        tmp_path,
        stdio_server(events)
        + f'[[agents]]\nname = "helper"\nprovider = "scripted"\nscript = "script.toml"\n'
        f'rooms = ["{channel}"]\ntools = ["mcp:tools"]\n',
    )
    [config] = load_agents(path)
    async with running(server, config):
        await ask(server, channel, "@helper go")
        [answer] = await settled(server.url, channel)
    assert answer.status == "complete"
    assert answer.data == "[scripted] Let me ask the tools.\n\nThe tools have spoken."
    echo, fail = await tool_lines(server.url, channel)
    assert echo == {
        "tool": "tools__echo",
        "arguments": {"text": "hello"},
        "result": "echo: hello",
        "error": False,
    }
    assert fail["tool"] == "tools__fail" and fail["error"] is True
    assert "no luck" in fail["result"]


async def test_openai_model_calls_an_http_mcp_tool(
    server: ServerProcess, channel: str, tmp_path: Path, events: Path
) -> None:
    port = free_port()
    replies = [
        Reply(events=openai_tool_call("call_1", "web__add", {"a": 2, "b": 3})),
        Reply(events=openai_text(["It is 5."])),
    ]
    with http_mcp_server(events, port):
        await listening(port)
        async with FakeLLMServer(replies) as fake:
            path = agents_file(
                tmp_path,
                http_server(port, 'headers_env = { Authorization = "WEB_AUTH" }')
                + f"""
[[agents]]
name = "helper"
provider = "openai"
model = "fake-model"
base_url = "{fake.url}/v1"
api_key_env = "FAKE_KEY"
rooms = ["{channel}"]
tools = ["builtin", "mcp:web"]
""",
            )
            [config] = load_agents(path)
            environ = {"FAKE_KEY": "sk", "WEB_AUTH": "Bearer web-secret"}
            async with running(server, config, environ):
                await ask(server, channel, "@helper add 2 and 3")
                [answer] = await settled(server.url, channel)
    assert answer.status == "complete" and answer.data == "It is 5."
    first, second = fake.requests
    names = offered_names(first.body)
    assert "web__add" in names and "create_poll" in names
    [add] = [t["function"] for t in first.body["tools"] if t["function"]["name"] == "web__add"]
    assert set(add["parameters"]["properties"]) == {"a", "b"}
    [result] = [m for m in second.body["messages"] if m.get("role") == "tool"]
    assert result["tool_call_id"] == "call_1" and json.loads(result["content"]) == {"sum": 5}
    [line] = await tool_lines(server.url, channel)
    assert line["tool"] == "web__add" and line["arguments"] == {"a": 2, "b": 3}
    assert json.loads(line["result"]) == {"sum": 5} and line["error"] is False


async def test_a_stopped_http_server_is_withdrawn_and_comes_back(
    server: ServerProcess,
    channel: str,
    tmp_path: Path,
    events: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="roomcast.agents")
    port = free_port()
    replies = [Reply(events=openai_text([f"Answer {n}."])) for n in range(3)]
    async with FakeLLMServer(replies) as fake:
        path = agents_file(
            tmp_path,
            http_server(port) + f'[[agents]]\nname = "helper"\nprovider = "openai"\nmodel = "m"\n'
            f'base_url = "{fake.url}/v1"\napi_key_env = "FAKE_KEY"\nrooms = ["{channel}"]\n'
            'tools = ["mcp:web"]\n',
        )
        [config] = load_agents(path)
        with http_mcp_server(events, port) as first:
            await listening(port)
            async with running(server, config):
                await ask(server, channel, "@helper one")
                await settled(server.url, channel, 1)
                assert "web__echo" in offered_names(fake.requests[0].body)
                caplog.clear()
                first.kill()
                await logged(caplog, "MCP server web is unavailable")
                await ask(server, channel, "@helper two")
                await settled(server.url, channel, 2)
                assert not any(n.startswith("web__") for n in offered_names(fake.requests[1].body))
                with http_mcp_server(events, port):
                    await logged(caplog, "MCP server web is connected", within=30)
                    await ask(server, channel, "@helper three")
                    answers = await settled(server.url, channel, 3)
                    assert "web__echo" in offered_names(fake.requests[2].body)
    assert [a.status for a in answers] == ["complete"] * 3
    down = [r for r in caplog.records if "is unavailable" in r.getMessage()]
    assert len(down) == 1 and "MCP server web" in down[0].getMessage()


async def test_closing_while_it_reconnects_always_returns() -> None:
    """A server that is down: the connection retries with backoff. Closed at random
    moments of that (in a connect, in the MCP client's teardown, in the wait), it ends
    every time; a cancel swallowed on the way once left the close waiting for ever (here
    until the 10 s bound cancels it again; a close takes milliseconds)."""
    loop = asyncio.get_running_loop()
    slow = []
    for _ in range(120):
        config = McpServerConfig(name="web", url=f"http://127.0.0.1:{free_port()}/mcp")
        connection = McpServerConnection(config, {}, "helper")
        connection.start()
        await asyncio.sleep(random.uniform(0, 0.3))
        started = loop.time()
        await asyncio.wait_for(connection.aclose(), 10)
        if loop.time() - started > 5:
            slow.append(round(loop.time() - started, 1))
    assert slow == []


async def test_a_killed_stdio_server_is_withdrawn_then_restarted(
    server: ServerProcess,
    channel: str,
    tmp_path: Path,
    events: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="roomcast.agents")
    replies = [Reply(events=openai_text([f"Answer {n}."])) for n in range(3)]
    async with FakeLLMServer(replies) as fake:
        path = agents_file(
            tmp_path,
            stdio_server(events)
            + f'[[agents]]\nname = "helper"\nprovider = "openai"\nmodel = "m"\n'
            f'base_url = "{fake.url}/v1"\napi_key_env = "FAKE_KEY"\nrooms = ["{channel}"]\n'
            'tools = ["mcp:tools"]\n',
        )
        [config] = load_agents(path)
        async with running(server, config):
            pid = int((await event_line(events, "up ")).split()[1])
            await ask(server, channel, "@helper one")
            await settled(server.url, channel, 1)
            assert "tools__echo" in offered_names(fake.requests[0].body)
            mark = lines_of(events)
            caplog.clear()
            os.kill(pid, signal.SIGKILL)
            await logged(caplog, "MCP server tools is unavailable")
            await ask(server, channel, "@helper two")
            await settled(server.url, channel, 2)
            assert not any(n.startswith("tools__") for n in offered_names(fake.requests[1].body))
            await event_line(events, "up ", after=mark)  # started again by the backoff
            await logged(caplog, "MCP server tools is connected")
            await ask(server, channel, "@helper three")
            answers = await settled(server.url, channel, 3)
            assert "tools__echo" in offered_names(fake.requests[2].body)
    assert [a.status for a in answers] == ["complete"] * 3
    down = [r for r in caplog.records if "is unavailable" in r.getMessage()]
    assert len(down) == 1 and "agent helper" in down[0].getMessage()


async def test_a_cancel_during_a_slow_mcp_call_cancels_it(
    server: ServerProcess, channel: str, tmp_path: Path, events: Path
) -> None:
    (tmp_path / "script.toml").write_text(
        """
[[replies]]
text = "This takes a while."
then = "Never said."
[[replies.tool_calls]]
name = "tools__slow"
arguments = { seconds = 60 }
""",
        encoding="utf-8",
    )
    path = agents_file(
        tmp_path,
        stdio_server(events)
        + f'[[agents]]\nname = "helper"\nprovider = "scripted"\nscript = "script.toml"\n'
        f'rooms = ["{channel}"]\ntools = ["mcp:tools"]\n',
    )
    [config] = load_agents(path)
    async with running(server, config):
        async with connect(server.url, client_id="alice") as alice:
            room = alice.channels.get(channel)
            await room.publish("@helper take your time")
            await event_line(events, "slow started")
            [streaming] = [
                m for m in await room_messages(server.url, channel) if m.client_id == "helper"
            ]
            await room.cancel(streaming.msg_serial, reason="enough")
            await event_line(events, "slow cancelled")
            [answer] = await settled(server.url, channel)
    assert answer.status == "cancelled" and answer.cancelled_by == "alice"
    assert answer.data == "[scripted] This takes a while."
    [line] = await tool_lines(server.url, channel)
    assert line["tool"] == "tools__slow" and line["error"] is True


def adding_agent(tmp_path: Path, events: Path, a: int, b: int) -> Path:
    """An agents file: the stdio server, and a scripted ``helper`` that calls its ``add``
    with ``a`` and ``b``, then says "Done."."""
    (tmp_path / "script.toml").write_text(
        '[[replies]]\ntext = "Asking."\nthen = "Done."\n'
        f'[[replies.tool_calls]]\nname = "tools__add"\narguments = {{ a = {a}, b = {b} }}\n',
        encoding="utf-8",
    )
    return agents_file(
        tmp_path,
        stdio_server(events)
        + '[[agents]]\nname = "helper"\nprovider = "scripted"\nscript = "script.toml"\n'
        'rooms = ["room:*"]\ntools = ["mcp:tools"]\n',
    )


async def test_roomcast_serve_runs_an_agent_with_an_mcp_server(
    tmp_path: Path, events: Path, channel: str
) -> None:
    path = adding_agent(tmp_path, events, 20, 22)
    env = {"ROOMCAST_ALLOW_ANONYMOUS": "true", "ROOMCAST_LOG_LEVEL": "info"}
    with ServerProcess(store="memory://", env=env, args=["--agents", str(path)]) as proc:
        await event_line(events, "up ")
        await ask(proc, channel, "@helper add")
        [answer] = await settled(proc.url, channel)
        [line] = await tool_lines(proc.url, channel)
        log = proc.log_path.read_text(encoding="utf-8")
    assert answer.status == "complete" and answer.data == "[scripted] Asking.\n\nDone."
    assert line["tool"] == "tools__add" and json.loads(line["result"]) == {"sum": 42}
    assert "MCP server tools is connected (6 tools offered)" in log


async def test_a_roomcast_agents_worker_runs_an_agent_with_an_mcp_server(
    server: ServerProcess, tmp_path: Path, events: Path, channel: str
) -> None:
    path = adding_agent(tmp_path, events, 1, 2)
    with AgentsProcess(server.url, path, KEY) as worker:
        await event_line(events, "up ")
        await worker.logged("agent helper is up", within=30)
        await ask(server, channel, "@helper add")
        [answer] = await settled(server.url, channel)
        [line] = await tool_lines(server.url, channel)
        code = worker.stop()
        output = worker.output()
    assert code == 0, output
    assert answer.status == "complete" and answer.data == "[scripted] Asking.\n\nDone."
    assert line["tool"] == "tools__add" and json.loads(line["result"]) == {"sum": 3}
    assert "MCP server tools is connected" in output and "Traceback" not in output
