"""A provider that answers from a script: for tests and the offline demo.

Every answer starts with ``[scripted]`` so nobody mistakes it for a model (once: what it
says after its tool calls continues the same answer). A script is a TOML or
JSON file::

    delay_ms = 30                  # between tokens (optional, default 0)
    think_ms = 500                 # before the first token of each call (optional, default 0)

    [[replies]]
    when = "poll"                  # optional: regex searched (case-insensitive) in the last message
    text = "Let me set up a poll."
    then = "The poll is open."     # optional: said after the tool results come back
    [[replies.tool_calls]]
    name = "create_poll"
    arguments = { question = "Lunch?", options = ["pizza", "sushi"] }

    [[replies]]
    text = "Replies without `when` take turns."

A reply with a matching ``when`` wins; otherwise the replies without ``when`` are used in turn.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import tomllib
from collections.abc import AsyncGenerator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from roomcast.agents.providers.base import (
    ProviderEvent,
    ProviderRequest,
    TextDelta,
    ToolCall,
    ToolRound,
    Turn,
    Usage,
)

LABEL = "[scripted] "
"""Starts every scripted answer."""

_TOKEN = re.compile(r"\s*\S+|\s+")


class ScriptError(ValueError):
    """A script file that cannot be used; the message names the file and the entry."""


@dataclass(frozen=True, slots=True)
class ScriptedToolCall:
    name: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    text: str = ""
    when: re.Pattern[str] | None = None
    tool_calls: tuple[ScriptedToolCall, ...] = ()
    then: str | None = None
    delay_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Script:
    replies: tuple[ScriptedReply, ...]
    delay_ms: float = 0.0
    think_ms: float = 0.0

    @classmethod
    def load(cls, path: str | Path) -> Script:
        """Read a ``.json`` file as JSON and anything else as TOML."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
            raw = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except OSError as exc:
            raise ScriptError(f"{path}: cannot read the script: {exc.strerror or exc}") from None
        except ValueError as exc:
            kind = "JSON" if path.suffix == ".json" else "TOML"
            raise ScriptError(f"{path}: not valid {kind}: {exc}") from None
        return cls.from_mapping(raw, source=str(path))

    @classmethod
    def from_mapping(cls, raw: object, *, source: str = "script") -> Script:
        if not isinstance(raw, Mapping):
            raise ScriptError(f"{source}: a script is a table with `replies`")
        _only_keys(raw, {"delay_ms", "replies", "think_ms"}, source)
        entries = raw.get("replies")
        if not isinstance(entries, list) or not entries:
            raise ScriptError(f"{source}: `replies` must be a non-empty list of tables")
        replies = tuple(
            _reply(entry, f"{source}: replies #{number}")
            for number, entry in enumerate(entries, start=1)
        )
        delay = _delay(raw.get("delay_ms", 0), source)
        return cls(replies, delay, _delay(raw.get("think_ms", 0), source, "think_ms"))

    def choose(self, text: str, turn: int) -> ScriptedReply | None:
        """The reply for a last message ``text``; ``turn`` picks among the ones without ``when``."""
        for reply in self.replies:
            if reply.when is not None and reply.when.search(text):
                return reply
        plain = [reply for reply in self.replies if reply.when is None]
        return plain[turn % len(plain)] if plain else None


def _only_keys(raw: Mapping[str, object], allowed: set[str], where: str) -> None:
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise ScriptError(
            f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(allowed))})"
        )


def _delay(value: object, where: str, name: str = "delay_ms") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ScriptError(f"{where}: {name} must be a number >= 0")
    return float(value)


def _text(value: object, where: str, key: str) -> str:
    if not isinstance(value, str):
        raise ScriptError(f"{where}: {key} must be a string")
    return value


def _reply(entry: object, where: str) -> ScriptedReply:
    if not isinstance(entry, Mapping):
        raise ScriptError(f"{where}: must be a table")
    _only_keys(entry, {"text", "when", "tool_calls", "then", "delay_ms"}, where)
    when = None
    if "when" in entry:
        try:
            when = re.compile(_text(entry["when"], where, "when"), re.IGNORECASE)
        except re.error as exc:
            raise ScriptError(f"{where}: when is not a valid regular expression: {exc}") from None
    calls = entry.get("tool_calls", [])
    if not isinstance(calls, list):
        raise ScriptError(f"{where}: tool_calls must be a list of tables")
    tool_calls = []
    for number, call in enumerate(calls, start=1):
        call_where = f"{where}: tool_calls #{number}"
        if not isinstance(call, Mapping):
            raise ScriptError(f"{call_where}: must be a table")
        _only_keys(call, {"name", "arguments"}, call_where)
        name = _text(call.get("name"), call_where, "name")
        arguments = call.get("arguments", {})
        if not isinstance(arguments, Mapping):
            raise ScriptError(f"{call_where}: arguments must be a table")
        tool_calls.append(ScriptedToolCall(name, dict(arguments)))
    text = _text(entry.get("text", ""), where, "text")
    if not text and not tool_calls:
        raise ScriptError(f"{where}: needs a text or tool_calls")
    then = _text(entry["then"], where, "then") if "then" in entry else None
    delay = _delay(entry["delay_ms"], where) if "delay_ms" in entry else None
    return ScriptedReply(text, when, tuple(tool_calls), then, delay)


def no_model_script(reason: str | None = None) -> Script:
    """What the default agent says when no model is configured, or, with ``reason``, why
    the model it was configured with cannot run (``the openai package is not installed:
    pip install 'roomcast[openai]'``)."""
    if reason is None:
        text = (
            "No language model is configured, so this answer comes from a script. "
            "To use a real model, set OPENAI_API_KEY (and ROOMCAST_MODEL to pick the model; "
            "OPENAI_BASE_URL for Ollama, vLLM or another OpenAI-compatible server) or "
            "ANTHROPIC_API_KEY, or describe your agents in a TOML file and start "
            "`roomcast serve --agents FILE` (see docs/agents.md)."
        )
    else:
        text = (
            f"A language model is configured but cannot run: {reason}, then restart "
            "`roomcast serve`. Until then this answer comes from a script."
        )
    return Script((ScriptedReply(text),), delay_ms=15.0)


def tokens(text: str) -> list[str]:
    """Word-sized pieces of ``text`` that join back to it."""
    return _TOKEN.findall(text)


class ScriptedProvider:
    """Answers from a :class:`Script`, token by token, with the script's delay."""

    model = "scripted"

    def __init__(self, script: Script) -> None:
        self.script = script
        self._turns = itertools.count()

    async def aclose(self) -> None:
        return None

    async def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        last = request.messages[-1] if request.messages else None
        input_tokens = len(tokens(request.system_prompt)) + sum(
            len(tokens(m.text)) for m in request.messages if isinstance(m, Turn)
        )
        if isinstance(last, ToolRound):
            text, calls, delay = self._after_tools(last)
        else:
            reply = self.script.choose(last.text if last else "", next(self._turns))
            if reply is None:
                text, calls, delay = "I have no scripted reply for that.", (), None
            else:
                text, calls, delay = reply.text, reply.tool_calls, reply.delay_ms
        delay_s = (self.script.delay_ms if delay is None else delay) / 1000
        output_tokens = 0
        if self.script.think_ms:  # a model that thinks before it says anything
            await asyncio.sleep(self.script.think_ms / 1000)
        # Only the answer's first round is labelled: what follows tool calls continues it.
        shown = text if isinstance(last, ToolRound) else LABEL + text
        for piece in tokens(shown) if text else ():
            if delay_s and output_tokens:  # between tokens: the first comes at once
                await asyncio.sleep(delay_s)
            output_tokens += 1
            yield TextDelta(piece)
        for number, call in enumerate(calls, start=1):
            output_tokens += 1
            yield ToolCall(f"scripted_{number}", call.name, dict(call.arguments))
        yield Usage(input_tokens, output_tokens)

    def _after_tools(
        self, round_: ToolRound
    ) -> tuple[str, tuple[ScriptedToolCall, ...], float | None]:
        names = [result.call.name for result in round_.results]
        for reply in self.script.replies:
            if [call.name for call in reply.tool_calls] == names and reply.then is not None:
                return reply.then, (), reply.delay_ms
        return f"Done: {', '.join(names)}.", (), None
