"""Agents in rooms, end to end: real servers, real worker processes, the scripted provider
(docs/protocol.md §4 presence, docs/agents.md)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from inproc_node import running_node
from polling import eventually
from roomcast.agents import runtime as runtime_module
from roomcast.agents.config import AgentConfig
from roomcast.agents.room import answered_by, message_at
from roomcast.agents.runtime import AgentRuntime, AgentWorker
from roomcast.client import AuthError, Forbidden, Message, connect
from roomcast.server.in_process import InProcessDialer
from roomcast.testing import ServerProcess

KEY = "workers:" + "w" * 32
ENV = {
    "ROOMCAST_PUBLISH_RATE": "0",
    "ROOMCAST_PRESENCE_GRACE_S": "2",
    "ROOMCAST_LOG_LEVEL": "info",
}


def room(prefix: str = "room") -> str:
    return f"{prefix}:{uuid.uuid4().hex[:8]}"


def write(path: Path, text: str) -> str:
    path.write_text(textwrap.dedent(text))
    return str(path)


async def history(url: str, channel: str) -> list[Message]:
    async with connect(url, client_id="reader") as client:
        async for page in client.channels.get(channel).history(limit=1000):
            return page.messages
    return []


async def wait_for(url: str, channel: str, check: Any, within: float = 20.0) -> list[Message]:
    """Poll history until ``check(messages)`` holds."""
    async with asyncio.timeout(within):
        while True:
            messages = await history(url, channel)
            if check(messages):
                return messages
            await asyncio.sleep(0.1)


def answers(messages: list[Message], by: str | None = None) -> list[Message]:
    return [
        m
        for m in messages
        if m.name == "text"
        and isinstance(m.extras.get("agent"), dict)
        and (by is None or m.client_id == by)
    ]


def finished(messages: list[Message]) -> bool:
    return all(m.status != "streaming" for m in messages)


@pytest.fixture(scope="module")
def default_server() -> Iterator[ServerProcess]:
    """``roomcast serve`` as a new user starts it: the default agent, no model keys."""
    env = {**ENV, "ROOMCAST_AGENTS": "", "OPENAI_API_KEY": "", "ANTHROPIC_API_KEY": ""}
    env["OPENAI_BASE_URL"] = ""
    with ServerProcess(store="memory://", env=env) as server:
        yield server


async def test_the_default_agent_streams_an_answer_to_a_mention(
    default_server: ServerProcess,
) -> None:
    channel = room()
    async with connect(default_server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        appends = 0
        seen: list[str] = []
        started: list[Any] = []  # what the answer's create holds

        def on_event(event: Any) -> None:
            nonlocal appends
            if event.type == "append":
                appends += 1
            if event.type == "create" and event.client_id == "assistant":
                started.append(event.data)
            seen.append(event.type)

        await lunch.subscribe(on_event)
        trigger = await lunch.publish("@assistant where should we eat?")
        messages = await wait_for(
            default_server.url,
            channel,
            lambda ms: answers(ms) and finished(ms) and answers(ms)[0].status == "complete",
        )
        [answer] = answers(messages)
        assert answer.client_id == "assistant"
        assert answer.extras["reply_to"] == trigger
        assert answer.extras["agent"]["depth"] == 1
        assert answer.extras["agent"]["provider"] == "scripted"
        assert isinstance(answer.data, str)
        assert answer.data.startswith("[scripted] No language model is configured")
        assert "OPENAI_API_KEY" in answer.data
        usage = answer.extras["usage"]
        assert usage["output_tokens"] > 0 and usage["cost_usd"] == 0
        assert appends >= 3  # it streamed, in pieces
        # The answer shows with its first words: no empty message waits for an append.
        assert started == ["[scripted]"]
        members = await lunch.presence.members()
        agent = [m for m in members if m.client_id == "assistant"]
        assert agent and agent[0].data["kind"] == "agent"
        assert agent[0].data["status"] in ("idle", "thinking", "streaming")


async def test_no_answer_without_a_mention_and_none_twice(default_server: ServerProcess) -> None:
    channel = room()
    async with connect(default_server.url, client_id="bob") as bob:
        await bob.channels.get(channel).publish("just chatting")
        await bob.channels.get(channel).publish("@assistant hi")
        messages = await wait_for(default_server.url, channel, lambda ms: answers(ms))
        await asyncio.sleep(1.0)
        messages = await history(default_server.url, channel)
        assert [a.extras["reply_to"] for a in answers(messages)] == [2]


async def test_nobody_may_take_an_agent_name(default_server: ServerProcess) -> None:
    with pytest.raises(AuthError, match=r"name of an agent|name belongs to an agent"):
        async with connect(default_server.url, client_id="assistant"):
            pass


async def test_agents_are_listed(default_server: ServerProcess) -> None:
    async with httpx.AsyncClient(base_url=default_server.url) as http:
        listed = (await http.get("/v1/agents")).json()
    assert listed == {
        "items": [
            {
                "name": "assistant",
                "provider": "scripted",
                "model": "scripted",
                "policy": "mention",
                "rooms": ["room:*"],
                "tools": listed["items"][0]["tools"],
            }
        ]
    }


async def test_the_answer_completes_after_the_asker_leaves(default_server: ServerProcess) -> None:
    channel = room()
    async with connect(default_server.url, client_id="carol") as carol:
        trigger = await carol.channels.get(channel).publish("@assistant tell me everything")
    # carol is gone; the answer goes on without her
    messages = await wait_for(default_server.url, channel, lambda ms: answers(ms) and finished(ms))
    [answer] = answers(messages)
    assert answer.status == "complete" and answer.extras["reply_to"] == trigger
    async with connect(default_server.url, client_id="carol") as carol:
        back = await carol.channels.get(channel).attach(rewind=10)
        assert isinstance(back.messages, list)
        assert [m.msg_serial for m in back.messages] == [trigger, answer.msg_serial]
        assert back.messages[-1].data == answer.data


# ----------------------------------------------------------------------------- configured agents

AGENTS = """
    [[agents]]
    name = "helper"
    provider = "scripted"
    model = "scripted"
    rooms = ["room:*"]
    policy = "mention"
    tools = ["builtin"]
    script = "{script}"

    [[agents]]
    name = "critic"
    provider = "scripted"
    model = "scripted"
    rooms = ["room:*"]
    policy = "mention"
    script = "{script}"

    [[agents]]
    name = "frugal"
    provider = "scripted"
    model = "scripted"
    rooms = ["budget:*"]
    budget_tokens = 5
    script = "{script}"

    [[agents]]
    name = "impatient"
    provider = "scripted"
    model = "scripted"
    rooms = ["rush:*"]
    concurrency = "interrupt"
    script = "{script}"

    [[agents]]
    name = "echo1"
    provider = "scripted"
    model = "scripted"
    rooms = ["loop:*"]
    policy = "always"
    script = "{script}"

    [[agents]]
    name = "echo2"
    provider = "scripted"
    model = "scripted"
    rooms = ["loop:*"]
    policy = "always"
    script = "{script}"
"""

SCRIPT = """
    delay_ms = 20

    [[replies]]
    when = "poll"
    text = "Let me set up a poll."
    then = "The poll is open and I voted."
    [[replies.tool_calls]]
    name = "create_poll"
    arguments = { question = "Lunch?", options = ["Tacos", "Ramen"] }
    [[replies.tool_calls]]
    name = "vote"
    arguments = { option = "Ramen" }

    [[replies]]
    when = "long"
    delay_ms = 150
    text = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen"

    [[replies]]
    text = "Sounds good to me."
"""


@pytest.fixture(scope="module")
def agents_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    folder = tmp_path_factory.mktemp("agents")
    script = write(folder / "script.toml", SCRIPT)
    return write(folder / "agents.toml", AGENTS.replace("{script}", script))


@pytest.fixture(scope="module")
def agents_server(agents_file: str) -> Iterator[ServerProcess]:
    env = {
        **ENV,
        "ROOMCAST_KEYS": KEY,
        "ROOMCAST_ALLOW_ANONYMOUS": "true",
        "ROOMCAST_STREAM_IDLE_TIMEOUT_S": "3",
    }
    with ServerProcess(store="memory://", env=env, args=["--agents", agents_file]) as server:
        yield server


async def test_mention_agents_answer_only_when_named(agents_server: ServerProcess) -> None:
    channel = room()
    async with connect(agents_server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        await lunch.publish("hello everyone")
        await lunch.publish("@critic what do you think?")
        await lunch.publish("helper and critic, both of you?")
        messages = await wait_for(
            agents_server.url, channel, lambda ms: len(answers(ms)) >= 3 and finished(ms)
        )
        await asyncio.sleep(1.0)
        messages = await history(agents_server.url, channel)
    got = sorted((a.client_id or "", a.extras["reply_to"]) for a in answers(messages))
    assert got == [("critic", 2), ("critic", 3), ("helper", 3)]


async def test_always_agents_stop_at_the_chain_cap(agents_server: ServerProcess) -> None:
    channel = room("loop")
    async with connect(agents_server.url, client_id="alice") as alice:
        await alice.channels.get(channel).publish("start talking")
        await asyncio.sleep(4.0)  # let them run out of depth
        messages = await wait_for(agents_server.url, channel, finished)
    replies = answers(messages)
    depths = sorted(a.extras["agent"]["depth"] for a in replies)
    # each answers the person (depth 1), then each other's answers, up to depth 3
    assert depths == [1, 1, 2, 2, 3, 3], depths
    for reply in replies:
        asked = next(m for m in messages if m.msg_serial == reply.extras["reply_to"])
        assert asked.client_id != reply.client_id


async def test_cancel_stops_the_answer(agents_server: ServerProcess) -> None:
    channel = room()
    async with (
        connect(agents_server.url, client_id="alice") as alice,
        connect(agents_server.url, client_id="bob") as bob,
    ):
        trigger = await alice.channels.get(channel).publish("@helper a long answer please")
        messages = await wait_for(agents_server.url, channel, lambda ms: answers(ms))
        answer = answers(messages)[0]
        # The asker may stop an answer to them (cancel-own); bob may not (no cancel-any).
        with pytest.raises(Forbidden):
            await bob.channels.get(channel).cancel(answer.msg_serial)
        await alice.channels.get(channel).cancel(answer.msg_serial, reason="enough")
        messages = await wait_for(
            agents_server.url, channel, lambda ms: answers(ms)[0].status != "streaming"
        )
    [answer] = answers(messages)
    assert answer.status == "cancelled" and answer.cancelled_by == "alice"
    assert answer.extras["reply_to"] == trigger
    assert len(str(answer.data).split()) < 15  # stopped well before the end


async def test_tools_make_a_poll_and_vote_visibly(agents_server: ServerProcess) -> None:
    channel = room()
    async with connect(agents_server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        await lunch.publish("@helper make a poll for lunch")
        messages = await wait_for(
            agents_server.url,
            channel,
            lambda ms: answers(ms, "helper") and finished(ms),
        )
        await lunch.objects.sync()
        [poll] = lunch.polls.list()
        assert poll.question == "Lunch?" and poll.created_by == "helper"
        assert poll.votes == {"helper": "opt-2"}
    tools = [m for m in messages if m.name == "tool"]
    assert [t.data["tool"] for t in tools] == ["create_poll", "vote"]
    assert all(t.client_id == "helper" and not t.data["error"] for t in tools)
    [answer] = answers(messages, "helper")
    # One label for the whole answer; each tool line says where in it the call was made.
    first = "[scripted] Let me set up a poll."
    assert answer.data == first + "\n\nThe poll is open and I voted."
    for tool in tools:
        assert tool.extras["answer"] == answer.msg_serial
        assert tool.extras["at"] == len(first)
        assert tool.extras["reply_to"] == answer.extras["reply_to"]


# ----------------------------------------------------------------------------- workers


class Worker:
    """``roomcast agents`` in a subprocess."""

    def __init__(self, server: ServerProcess, agents_file: str, log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "roomcast",
                "agents",
                "--agents",
                agents_file,
                "--server",
                server.url,
                "--key",
                KEY,
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "ROOMCAST_LOG_LEVEL": "info"},
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(20)
        self._out.close()
        return code


async def test_workers_and_the_server_answer_each_trigger_exactly_once(
    agents_server: ServerProcess, agents_file: str, tmp_path: Path
) -> None:
    workers = [Worker(agents_server, agents_file, tmp_path / f"w{i}.log") for i in range(2)]
    try:
        await asyncio.sleep(2.0)  # the workers are up
        channel = room()
        async with connect(agents_server.url, client_id="alice") as alice:
            lunch = alice.channels.get(channel)
            triggers = [await lunch.publish(f"@helper question {i}") for i in range(50)]
            messages = await wait_for(
                agents_server.url,
                channel,
                lambda ms: len(answers(ms)) >= 50 and finished(ms),
                within=60,
            )
            await asyncio.sleep(1.0)
            messages = await history(agents_server.url, channel)
        replies = answers(messages, "helper")
        assert sorted(a.extras["reply_to"] for a in replies) == triggers
        assert all(a.status == "complete" for a in replies)
    finally:
        for worker in workers:
            assert worker.stop() == 0, worker.output()


async def test_a_killed_worker_leaves_its_answer_to_the_sweeper(
    agents_file: str, tmp_path: Path
) -> None:
    env = {
        **ENV,
        "ROOMCAST_KEYS": KEY,
        "ROOMCAST_ALLOW_ANONYMOUS": "true",
        "ROOMCAST_STREAM_IDLE_TIMEOUT_S": "2",
    }
    with ServerProcess(store="memory://", env=env, args=["--agents", "none"]) as server:
        workers = [Worker(server, agents_file, tmp_path / f"w{i}.log") for i in range(2)]
        try:
            await asyncio.sleep(2.0)
            channel = room()
            async with connect(server.url, client_id="alice") as alice:
                lunch = alice.channels.get(channel)
                first = await lunch.publish("@helper a long answer please")
                await wait_for(server.url, channel, lambda ms: answers(ms))
                [busy] = [w for w in workers if f"answers {channel} #{first}" in w.output()]
                busy.proc.kill()
                busy.proc.wait()
                messages = await wait_for(
                    server.url, channel, lambda ms: answers(ms)[0].status == "failed", within=15
                )
                assert answers(messages)[0].extras["failure"] == "abandoned"
                second = await lunch.publish("@helper and now?")
                messages = await wait_for(
                    server.url,
                    channel,
                    lambda ms: (
                        any(a.extras["reply_to"] == second for a in answers(ms)) and finished(ms)
                    ),
                )
                await asyncio.sleep(1.0)
                messages = await history(server.url, channel)
            replied = sorted(a.extras["reply_to"] for a in answers(messages))
            assert replied == [first, second]  # the first is never answered twice
        finally:
            for worker in workers:
                worker.stop()


async def test_an_exhausted_budget_gets_a_visible_refusal(agents_server: ServerProcess) -> None:
    channel = room("budget")
    async with connect(agents_server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        await lunch.publish("@frugal hello")
        await wait_for(agents_server.url, channel, lambda ms: answers(ms) and finished(ms))
        second = await lunch.publish("@frugal and again")
        messages = await wait_for(
            agents_server.url, channel, lambda ms: len(answers(ms)) == 2 and finished(ms)
        )
    first, refusal = answers(messages)
    used = first.extras["usage"]
    assert used["input_tokens"] + used["output_tokens"] > 5  # the budget is spent
    assert refusal.extras["reply_to"] == second and refusal.extras["budget_exhausted"] is True
    assert "budget" in str(refusal.data)


async def test_a_streamed_message_triggers_when_it_completes(
    agents_server: ServerProcess,
) -> None:
    channel = room()
    async with connect(agents_server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        async with lunch.stream() as question:
            await question.append("@helper ")
            await asyncio.sleep(1.0)
            assert answers(await history(agents_server.url, channel)) == []
            await question.append("what about dinner?")
        messages = await wait_for(
            agents_server.url, channel, lambda ms: answers(ms) and finished(ms)
        )
    [answer] = answers(messages)
    assert answer.extras["reply_to"] == question.msg_serial


async def test_the_agent_reads_back_streamed_messages_of_others_not_its_own_answers(
    agents_server: ServerProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    read: list[int] = []

    async def recording(channel: Any, msg_serial: int) -> Any:
        read.append(msg_serial)
        return await message_at(channel, msg_serial)

    monkeypatch.setattr(runtime_module, "message_at", recording)
    channel = f"own:{uuid.uuid4().hex[:8]}"
    config = AgentConfig(name="reader", provider="scripted", model="scripted", rooms=(channel,))
    async with AgentRuntime(agents_server.url, [config], key=KEY, environ={}) as runtime:
        async with connect(agents_server.url, client_id="alice") as alice:
            lunch = alice.channels.get(channel)
            await lunch.publish("hello")  # the agent attaches the room: then the question
            [worker] = runtime.workers
            await eventually(
                lambda: channel in worker.rooms and worker.rooms[channel].recent.serial is not None,
                what="the room attached",
            )
            async with lunch.stream() as question:
                await question.append("@reader what about dinner?")
            messages = await wait_for(
                agents_server.url, channel, lambda ms: answers(ms) and finished(ms)
            )
            await lunch.publish("thanks")  # after the answer's end: it has been seen
            await asyncio.sleep(0.5)
    [answer] = answers(messages)
    assert answer.extras["reply_to"] == question.msg_serial
    # The question's text, once (a room attached after it ended has it in the attach's
    # latest messages), and never the agent's own answer.
    assert read == [question.msg_serial]


async def test_root_agents_decides_who_is_in_the_room(agents_server: ServerProcess) -> None:
    channel = room()
    async with connect(agents_server.url, client_id="alice") as alice:
        lunch = alice.channels.get(channel)
        root = await lunch.objects.root()
        members = await lunch.objects.create_map({"critic": {"added_by": "alice", "ts": 1}})
        await root.set("agents", members)
        await lunch.publish("@helper are you there?")
        await lunch.publish("@critic are you?")
        messages = await wait_for(
            agents_server.url, channel, lambda ms: answers(ms) and finished(ms)
        )
        await asyncio.sleep(1.0)
        messages = await history(agents_server.url, channel)
        assert [a.client_id for a in answers(messages)] == ["critic"]
        await members.set("helper", {"added_by": "alice", "ts": 2})
        third = await lunch.publish("@helper now?")
        messages = await wait_for(
            agents_server.url,
            channel,
            lambda ms: any(a.extras["reply_to"] == third for a in answers(ms)) and finished(ms),
        )


async def test_shutdown_lets_answers_finish_then_fails_the_rest(tmp_path: Path) -> None:
    story = " ".join(f"w{i}" for i in range(60))
    script = write(
        tmp_path / "slow.toml",
        """
        delay_ms = 200
        [[replies]]
        text = "STORY"
    """.replace("STORY", story),
    )
    agents = write(
        tmp_path / "agents.toml",
        f"""
        [[agents]]
        name = "slow"
        provider = "scripted"
        model = "scripted"
        script = "{script}"
    """,
    )
    server = ServerProcess(env=ENV, args=["--agents", agents]).start()
    try:
        channel = room()
        async with connect(server.url, client_id="alice") as alice:
            await alice.channels.get(channel).publish("@slow tell me a long story")
            await wait_for(server.url, channel, lambda ms: answers(ms))
        started = asyncio.get_running_loop().time()
        assert server.stop() == 0
        took = asyncio.get_running_loop().time() - started
        assert 4.0 < took < 12.0, took  # about 5 s of grace for the answer, then the end
        server.args = ["--agents", "none"]
        server.start()
        [answer] = answers(await history(server.url, channel))
        assert answer.status == "failed" and answer.extras["failure"] == "server shutting down"
        assert 0 < len(str(answer.data).split()) < 60
    finally:
        server.close()


async def test_interrupt_cancels_the_running_answer_for_a_newer_message(
    agents_server: ServerProcess,
) -> None:
    channel = room("rush")
    async with connect(agents_server.url, client_id="alice") as alice:
        rush = alice.channels.get(channel)
        first = await rush.publish("@impatient a long answer please")
        await wait_for(agents_server.url, channel, lambda ms: answers(ms))
        second = await rush.publish("@impatient actually, something short")
        messages = await wait_for(
            agents_server.url, channel, lambda ms: len(answers(ms)) == 2 and finished(ms)
        )
    by_trigger = {a.extras["reply_to"]: a for a in answers(messages)}
    assert by_trigger[first].status == "cancelled"
    assert by_trigger[first].cancelled_by == "impatient"  # it stopped itself
    assert by_trigger[second].status == "complete"


URL_IN_PROCESS = "http://in-process.invalid"  # never reached: the dial stays in this process


def bot_created(seen: list[Any], channel: str) -> bool:
    return any(e.type == "create" and e.channel == channel and e.client_id == "bot" for e in seen)


def in_process_worker(node: Any, config: AgentConfig) -> AgentWorker:
    """The agent ``bot`` on ``node``, its frames in memory."""
    return AgentWorker(
        config,
        URL_IN_PROCESS,
        key=KEY,
        agent_names=frozenset({"bot"}),
        environ={},
        dial=InProcessDialer(node),
    )


async def no_rooms_yet(server: str, pattern: str, key: str | None) -> Any:
    """No room to list at start (the agent finds new rooms on ``meta:channels``)."""
    return
    yield


async def test_a_claim_does_not_wait_behind_another_rooms_stream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replies on one connection come in order. While the agent's answer in one room waits
    for the store to take its appends, a mention in another room is still claimed and
    answered: claims and context reads have a connection of their own."""
    monkeypatch.setattr("roomcast.agents.rooms._matching", no_rooms_yet)  # no HTTP here
    script = write(tmp_path / "script.toml", '[[replies]]\ntext = "one two three four"\n')
    held_room, other_room = room(), room()
    gate = asyncio.Event()
    async with running_node(keys=(KEY,), publish_rate=0) as node:
        submit = node.store.submit

        def holding_submit(event: Any, **kwargs: Any) -> Any:
            if event.channel == held_room and event.type == "append":

                async def held() -> Any:
                    await gate.wait()
                    return await submit(event, **kwargs)

                return asyncio.ensure_future(held())
            return submit(event, **kwargs)

        node.store.submit = holding_submit  # type: ignore[method-assign]
        config = AgentConfig(
            name="bot", provider="scripted", model="scripted", rooms=("room:*",), script=script
        )
        worker = in_process_worker(node, config)
        await worker.start()
        dial = InProcessDialer(node)
        try:
            async with connect(URL_IN_PROCESS, client_id="ana", key=KEY, dial=dial) as ana:
                seen: list[Any] = []
                for name in (held_room, other_room):
                    await ana.channels.get(name).subscribe(seen.append)
                    await ana.channels.get(name).publish("hello")  # the agent attaches it
                    await eventually(lambda name=name: name in worker.rooms, what="attached")
                await ana.channels.get(held_room).publish("@bot first question")
                await eventually(lambda: bot_created(seen, held_room), what="the first answer")
                await asyncio.sleep(0.2)  # its appends are held: their acknowledgements wait
                await ana.channels.get(other_room).publish("@bot second question")
                await eventually(
                    lambda: bot_created(seen, other_room),
                    what="the answer in the second room, while the first one's appends wait",
                )
                gate.set()
                for name in (held_room, other_room):
                    await eventually(
                        lambda name=name: any(
                            e.type == "update" and e.channel == name and e.status == "complete"
                            for e in seen
                        ),
                        what=f"the answer in {name} complete",
                    )
        finally:
            gate.set()
            await worker.aclose()


async def test_a_live_trigger_whose_claim_comes_late_is_not_read_back_as_old(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trigger found on start is checked against the history (was it answered before?);
    one seen live is not. A loaded store that answers the claim late does not make a live
    trigger old: that extra history read would load the store more still."""
    monkeypatch.setattr("roomcast.agents.rooms._matching", no_rooms_yet)  # no HTTP here
    monkeypatch.setattr(runtime_module, "LIVE_TRIGGER_MS", 300)
    checked: list[int] = []

    async def recording(channel: Any, name: str, trigger: Message) -> bool:
        checked.append(trigger.msg_serial)
        return await answered_by(channel, name, trigger)

    monkeypatch.setattr(runtime_module, "answered_by", recording)
    script = write(tmp_path / "script.toml", '[[replies]]\ntext = "late but live"\n')
    name = room()
    async with running_node(keys=(KEY,), publish_rate=0) as node:
        claim = node.store.claim

        async def late_claim(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0.6)  # twice LIVE_TRIGGER_MS
            return await claim(*args, **kwargs)

        node.store.claim = late_claim  # type: ignore[method-assign]
        config = AgentConfig(
            name="bot", provider="scripted", model="scripted", rooms=("room:*",), script=script
        )
        worker = in_process_worker(node, config)
        await worker.start()
        try:
            async with connect(
                URL_IN_PROCESS, client_id="ana", key=KEY, dial=InProcessDialer(node)
            ) as ana:
                seen: list[Any] = []
                lunch = ana.channels.get(name)
                await lunch.subscribe(seen.append)
                await lunch.publish("hello")  # the agent attaches it
                await eventually(lambda: name in worker.rooms, what="attached")
                await lunch.publish("@bot are you there?")
                await eventually(
                    lambda: any(e.type == "update" and e.status == "complete" for e in seen),
                    what="the answer complete",
                )
        finally:
            await worker.aclose()
    assert checked == []


async def test_claims_and_reads_are_spread_over_connections_a_room_on_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Context reads wait for their turn on a connection: the rooms' claims and reads are
    spread over several connections, each room's always on the same one (its claim and
    its read keep their order)."""
    monkeypatch.setattr("roomcast.agents.rooms._matching", no_rooms_yet)  # no HTTP here
    async with running_node(keys=(KEY,), publish_rate=0) as node:
        config = AgentConfig(name="bot", provider="scripted", model="scripted", rooms=("room:*",))
        worker = in_process_worker(node, config)
        await worker.start()
        try:
            assert len(worker.coordination) == runtime_module.COORDINATION_CONNECTIONS > 1
            names = [f"room:r{k}" for k in range(64)]
            rooms = [SimpleNamespace(channel=SimpleNamespace(name=name)) for name in names]
            used = {id(worker._reads(r)._client) for r in rooms}
            assert len(used) == len(worker.coordination)
            again = [worker._reads(r) for r in rooms]
            assert [worker._reads(r) for r in rooms] == again
            assert all(channel.name == name for channel, name in zip(again, names, strict=True))
        finally:
            await worker.aclose()
