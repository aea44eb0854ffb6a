"""The scripted provider: replies from a TOML/JSON script, labelled as scripted."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from pathlib import Path

import pytest
from fake_llm import collect

from roomcast.agents.providers import (
    ProviderEvent,
    ProviderRequest,
    Script,
    ScriptedProvider,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    Turn,
    Usage,
)
from roomcast.agents.providers.scripted import LABEL, ScriptError, no_model_script

SCRIPT = """
delay_ms = 0

[[replies]]
when = "\\\\bpoll\\\\b"
text = "Let me set up a poll."
then = "The poll is open."
[[replies.tool_calls]]
name = "create_poll"
arguments = { question = "Lunch?", options = ["pizza", "sushi"] }

[[replies]]
text = "First plain reply."

[[replies]]
text = "Second plain reply."
"""


def ask(text: str, *more: Turn | ToolRound) -> ProviderRequest:
    return ProviderRequest(
        agent_name="bot", system_prompt="You are bot.", messages=(Turn("alice", text), *more)
    )


def text_of(events: list[ProviderEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, TextDelta))


@pytest.fixture
def provider(tmp_path: Path) -> ScriptedProvider:
    path = tmp_path / "script.toml"
    path.write_text(SCRIPT)
    return ScriptedProvider(Script.load(path))


async def test_text_replies_say_they_are_scripted_and_take_turns(
    provider: ScriptedProvider,
) -> None:
    first = await collect(provider, ask("hello"))
    second = await collect(provider, ask("hello again"))
    third = await collect(provider, ask("and again"))
    assert text_of(first) == "[scripted] First plain reply."
    assert text_of(second) == "[scripted] Second plain reply."
    assert text_of(third) == "[scripted] First plain reply."
    assert len([e for e in first if isinstance(e, TextDelta)]) == 4  # token by token
    assert isinstance(first[-1], Usage)
    assert first[-1].output_tokens == 4


async def test_a_matching_reply_calls_tools_then_answers_from_their_results(
    provider: ScriptedProvider,
) -> None:
    events = await collect(provider, ask("can we have a POLL please"))
    assert text_of(events) == "[scripted] Let me set up a poll."
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert calls == [
        ToolCall("scripted_1", "create_poll", {"question": "Lunch?", "options": ["pizza", "sushi"]})
    ]
    after = await collect(
        provider,
        ask("a poll please", ToolRound("Let me set up a poll.", (ToolResult(calls[0], "ok"),))),
    )
    assert text_of(after) == "The poll is open."  # the same answer goes on: labelled once
    assert not [e for e in after if isinstance(e, ToolCall)]


async def test_the_delay_is_between_tokens_and_the_first_comes_at_once() -> None:
    script = Script.from_mapping({"delay_ms": 300, "replies": [{"text": "one two three four"}]})
    started = time.monotonic()
    arrived: list[float] = []
    texts: list[str] = []
    async with contextlib.aclosing(ScriptedProvider(script).stream(ask("hi"))) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                arrived.append(time.monotonic() - started)
                texts.append(event.text)
    assert "".join(texts) == "[scripted] one two three four"
    assert arrived[0] < 0.15  # the label, at once
    gaps = [later - earlier for earlier, later in itertools.pairwise(arrived)]
    assert len(gaps) == 4 and min(gaps) >= 0.3 * 0.9


async def test_think_ms_holds_the_first_token_back() -> None:
    script = Script.from_mapping({"think_ms": 300, "replies": [{"text": "late"}]})
    started = time.monotonic()
    async with contextlib.aclosing(ScriptedProvider(script).stream(ask("hi"))) as events:
        first = await anext(events)
    assert isinstance(first, TextDelta) and first.text == "[scripted]"
    assert time.monotonic() - started >= 0.3 * 0.9


async def test_closing_stops_a_slow_reply_at_once() -> None:
    script = Script.from_mapping({"delay_ms": 1000, "replies": [{"text": "a b c d e f"}]})
    provider = ScriptedProvider(script)
    started = time.monotonic()

    async def consume() -> None:
        async with contextlib.aclosing(provider.stream(ask("hi"))) as events:
            async for _ in events:
                pass

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - started < 0.9  # the second token alone would take 1 s


async def test_json_scripts_work_too(tmp_path: Path) -> None:
    path = tmp_path / "script.json"
    path.write_text(json.dumps({"replies": [{"text": "From JSON."}]}))
    events = await collect(ScriptedProvider(Script.load(path)), ask("hi"))
    assert text_of(events) == "[scripted] From JSON."


async def test_the_no_model_script_says_how_to_configure_a_model() -> None:
    text = text_of(await collect(ScriptedProvider(no_model_script()), ask("@assistant hi")))
    assert text.startswith(LABEL)
    for hint in ("No language model is configured", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        assert hint in text
    assert "--agents" in text


async def test_the_no_model_script_names_the_cause_it_is_given() -> None:
    reason = "the openai package is not installed: pip install 'roomcast[openai]'"
    text = text_of(await collect(ScriptedProvider(no_model_script(reason)), ask("@assistant")))
    assert text.startswith(LABEL) and reason in text
    assert "No language model is configured" not in text


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ({"replies": []}, "`replies` must be a non-empty list"),
        ({"replies": [{"txt": "x"}]}, "replies #1: unknown key 'txt'"),
        ({"replies": [{"when": "("}]}, "replies #1: when is not a valid regular expression"),
        ({"replies": [{}]}, "replies #1: needs a text or tool_calls"),
        ({"replies": [{"tool_calls": [{"arguments": {}}]}]}, "tool_calls #1: name must be"),
        ({"delay_ms": -1, "replies": [{"text": "x"}]}, "delay_ms must be a number >= 0"),
        ({"think_ms": "soon", "replies": [{"text": "x"}]}, "think_ms must be a number >= 0"),
    ],
)
def test_bad_scripts_are_refused_with_the_entry_named(script: object, message: str) -> None:
    with pytest.raises(ScriptError, match=r"^script: ") as caught:
        Script.from_mapping(script)
    assert message in str(caught.value)


def test_an_unreadable_script_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.toml"
    path.write_text("replies = [")
    with pytest.raises(ScriptError, match=r"broken\.toml: not valid TOML"):
        Script.load(path)
