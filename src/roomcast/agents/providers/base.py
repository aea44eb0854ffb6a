"""What every model provider takes and gives: a request in, a stream of events out.

A provider turns one :class:`ProviderRequest` (system prompt, the conversation so far with
speaker names, tool specs, limits, and the room's shared state) into an async iterator of
:class:`ProviderEvent`: ``TextDelta`` as tokens arrive, ``ToolCall`` once a call's arguments
are complete, and at most one ``Usage`` at the end. An agent that runs tools of its own and
keeps state (an AG-UI agent) also reports a ``ToolResult`` for each call it ran itself (shown
in the room, not run again) and a ``StateChange`` for each change it made to the shared state.
Everything that goes wrong is a :class:`ProviderError` with a message a person can read (the
runtime shows it as the answer's ``extras.failure``).

Consumers close the iterator when they stop early (``contextlib.aclosing``): providers close
the underlying HTTP stream right then, so a cancelled answer stops costing tokens at once.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True, slots=True)
class ToolSpec:
    """A tool the model may call: ``parameters`` is a JSON schema of its arguments object."""

    name: str
    description: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})


@dataclass(frozen=True, slots=True)
class Turn:
    """One message of the room: who said it and what.

    Turns whose ``speaker`` is the request's ``agent_name`` are the agent's own earlier answers
    (the model's ``assistant`` role); everything else reaches the model as ``speaker: text``.
    """

    speaker: str
    text: str


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the answer's text."""

    text: str


@dataclass(frozen=True, slots=True)
class ToolCall:
    """A complete tool call: emitted once its arguments have fully arrived and parsed."""

    id: str
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Usage:
    """Tokens the service counted for one call (emitted at most once, at the end)."""

    input_tokens: int
    output_tokens: int


@dataclass(frozen=True, slots=True)
class ToolResult:
    """What running one tool call gave back.

    As a provider event: a call the agent ran itself, with its result; the runtime shows it
    in the room as a tool line and does not run it.
    """

    call: ToolCall
    output: str
    is_error: bool = False


@dataclass(frozen=True, slots=True)
class ToolRound:
    """One of the agent's own steps that called tools, with the results of those calls.

    ``text`` is what the model said before calling (may be empty). A request that ends with a
    ``ToolRound`` asks the model to go on from the results.
    """

    text: str
    results: tuple[ToolResult, ...]


@dataclass(frozen=True, slots=True)
class StateChange:
    """The agent changed the room's shared state (:attr:`ProviderRequest.state`).

    Exactly one of the two is set: ``patch``, a JSON Patch (RFC 6902) over the state as it
    is now, or ``snapshot``, the whole state as the agent wants it, read against the state the
    request carried (what the agent changed there is what changes). The runtime turns either
    into live-object operations (docs/agents.md, "Shared state").
    """

    patch: tuple[dict[str, Any], ...] | None = None
    snapshot: Any = None


ProviderEvent = TextDelta | ToolCall | ToolResult | StateChange | Usage
Message = Turn | ToolRound


@dataclass(frozen=True, slots=True)
class ProviderRequest:
    """Everything a provider needs for one answer (the model is the provider's own)."""

    agent_name: str
    system_prompt: str
    messages: tuple[Message, ...]
    tools: tuple[ToolSpec, ...] = ()
    max_tokens: int = 1024
    temperature: float | None = None
    room: str = ""
    """The channel the answer is for (empty outside a room, e.g. for the ``auto`` judge)."""
    state: dict[str, Any] | None = None
    """The room's live objects, ``{object_id: state}``: a map's entries (a reference stays
    ``{"object_id": id}``), a counter's value; None when the runtime did not read them."""


class ProviderError(Exception):
    """A provider call failed.

    Attributes:
        message: what happened, readable as is (no stack trace needed).
        status: the HTTP status, when the service answered with one.
        retryable: whether the same call may succeed later (rate limits, timeouts, 5xx).
        retry_after_s: the service's own hint, when it gave one.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        retryable: bool = False,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s

    def __repr__(self) -> str:
        return (
            f"ProviderError({self.message!r}, status={self.status!r}, retryable={self.retryable!r})"
        )


@runtime_checkable
class Provider(Protocol):
    """A model behind one agent."""

    def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        """Stream the answer to ``request``; close the iterator to stop it at once."""
        ...

    async def aclose(self) -> None:
        """Release the provider's connections."""
        ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how patiently a rate-limited call is tried again.

    Only a 429 that comes before the first event is retried: once text has reached the room,
    starting over would repeat it.
    """

    attempts: int = 3
    base_delay_s: float = 0.5
    max_delay_s: float = 8.0

    def delay_s(self, failed_attempts: int, retry_after_s: float | None = None) -> float:
        """The pause before the next attempt: the service's hint if it gave one, else
        exponential with jitter; never more than ``max_delay_s``."""
        if retry_after_s is not None and retry_after_s >= 0:
            return min(retry_after_s, self.max_delay_s)
        exp = self.base_delay_s * 2.0 ** (failed_attempts - 1)
        return min(exp * (0.5 + random.random() / 2), self.max_delay_s)


async def retry_rate_limited(
    attempt: Callable[[], AsyncGenerator[ProviderEvent, None]], policy: RetryPolicy
) -> AsyncGenerator[ProviderEvent, None]:
    """Run ``attempt``; while it fails with a 429 before its first event, wait and run it again,
    at most ``policy.attempts`` times in all."""
    failed = 0
    while True:
        started = False
        events = attempt()
        try:
            async for event in events:
                started = True
                yield event
            return
        except ProviderError as exc:
            failed += 1
            if started or exc.status != 429 or failed >= policy.attempts:
                if exc.status == 429 and failed > 1:
                    exc.message = f"{exc.message} (gave up after {failed} attempts)"
                    exc.args = (exc.message,)
                raise
            delay = policy.delay_s(failed, exc.retry_after_s)
        finally:
            await events.aclose()
        await asyncio.sleep(delay)


def cost_usd(usage: Usage, price_per_mtok_in: float, price_per_mtok_out: float) -> float:
    """USD for ``usage`` at the given prices (USD per million input / output tokens)."""
    return (
        usage.input_tokens * price_per_mtok_in + usage.output_tokens * price_per_mtok_out
    ) / 1_000_000


def parse_retry_after(value: str | None) -> float | None:
    """Seconds from a ``Retry-After`` header given in seconds (dates are ignored)."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def speaker_line(turn: Turn) -> str:
    """How another participant's message reads to the model: ``speaker: text``."""
    return f"{turn.speaker}: {turn.text}"


def error_detail(body: object) -> str | None:
    """The human part of an error body such as ``{"error": {"message": ...}}``."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return str(inner["message"])
        if isinstance(inner, str):
            return inner
        if isinstance(body.get("message"), str):
            return str(body["message"])
    if isinstance(body, str) and body.strip():
        return body.strip()[:300]
    return None


def status_error(
    where: str, status: int, detail: str | None, *, key_env: str | None, retry_after_s: float | None
) -> ProviderError:
    """A readable :class:`ProviderError` for an HTTP error status."""
    text = f"{where}: HTTP {status}"
    if detail:
        text += f": {detail}"
    if status in (401, 403):
        hint = f"check the API key in ${key_env}" if key_env else "check the API key"
        text += f" ({hint})"
    elif status == 404:
        text += " (check the model name and the base URL)"
    retryable = status in (408, 409, 429) or status >= 500
    return ProviderError(text, status=status, retryable=retryable, retry_after_s=retry_after_s)


def tool_call(call_id: str, name: str, raw: str, what: str = "arguments") -> ToolCall:
    """A complete tool call from its streamed JSON ``raw`` (empty means no arguments).

    Raises:
        ValueError: ``raw`` is not a JSON object (the stream is then malformed).
    """
    try:
        arguments = json.loads(raw) if raw.strip() else {}
    except ValueError:
        raise ValueError(
            f"tool call {name!r} has {what} that are not JSON: {raw[:200]!r}"
        ) from None
    if not isinstance(arguments, dict):
        raise ValueError(f"tool call {name!r} has {what} that are not an object")
    return ToolCall(call_id, name, arguments)
