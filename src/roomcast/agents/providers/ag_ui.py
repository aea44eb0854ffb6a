"""Any AG-UI agent as a member of rooms: LangGraph, CrewAI, Mastra, Pydantic AI, ... behind
an AG-UI endpoint (docs/agents.md, "AG-UI agents").

For each round of an answer the provider POSTs a ``RunAgentInput`` to the agent's URL: the
room as ``threadId``, a fresh ``runId``, the room's turns as AG-UI messages, the system prompt
roomcast builds as one ``context`` entry, the agent's roomcast tools, and the room's live
objects as ``state``. It reads the agent's events from the SSE answer with ag-ui-protocol's
own models and turns them into provider events (:class:`RunReader`, no I/O):

- ``TEXT_MESSAGE_*`` of the assistant → :class:`TextDelta` (several messages of one run are
  joined as paragraphs);
- a tool call that the agent leaves to its client (no ``TOOL_CALL_RESULT`` by the end of the
  run) → :class:`ToolCall`, which the runtime runs and answers in the next POST;
- a tool call with its ``TOOL_CALL_RESULT`` (the agent ran it) → :class:`ToolResult`;
- ``STATE_SNAPSHOT`` / ``STATE_DELTA`` → :class:`StateChange`;
- ``RUN_FINISHED``'s ``usage`` → :class:`Usage`; ``RUN_ERROR`` → :class:`ProviderError`.

Closing the stream (``aclosing``) closes the HTTP response at once: the agent sees its
client leave.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from ag_ui.core import (
    AssistantMessage,
    Context,
    Event,
    EventType,
    FunctionCall,
    Message,
    RunAgentInput,
    RunErrorEvent,
    RunFinishedEvent,
    RunFinishedInterruptOutcome,
    StateDeltaEvent,
    StateSnapshotEvent,
    TextMessageChunkEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    Tool,
    ToolCallArgsEvent,
    ToolCallChunkEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
    ToolMessage,
    UserMessage,
)
from ag_ui.core import ToolCall as AGUIToolCall
from pydantic import TypeAdapter, ValidationError

from roomcast.agents.providers.base import (
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    RetryPolicy,
    StateChange,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    Usage,
    parse_retry_after,
    retry_rate_limited,
    speaker_line,
    tool_call,
)

EVENT: TypeAdapter[Event] = TypeAdapter(Event)
KNOWN_TYPES = frozenset(kind.value for kind in EventType)
CONTEXT_DESCRIPTION = "roomcast: who you are in this group chat and how to answer"
ERROR_BODY_BYTES = 4096
MAX_REDIRECTS = 5  # 307 / 308 hops followed before the redirect itself is the answer
KEEPS_THE_POST = frozenset({307, 308})  # 301-303 would turn the run's POST into a GET
TITLE = re.compile(r"<title[^>]*>(.*?)</title", re.IGNORECASE | re.DOTALL)


def public_url(url: str) -> str:
    """``url`` as errors may show it: without credentials, query or fragment."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{host}:{parts.port}" if parts.port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


# ----------------------------------------------------------------------------- the request


def run_input(request: ProviderRequest, run_id: str) -> RunAgentInput:
    """The ``RunAgentInput`` of one run for ``request``."""
    return RunAgentInput(
        thread_id=request.room or request.agent_name,
        run_id=run_id,
        messages=messages_of(request),
        tools=[
            Tool(name=spec.name, description=spec.description, parameters=spec.parameters)
            for spec in request.tools
        ],
        context=(
            [Context(description=CONTEXT_DESCRIPTION, value=request.system_prompt)]
            if request.system_prompt
            else []
        ),
        state=request.state,
        forwarded_props={},
    )


def messages_of(request: ProviderRequest) -> list[Message]:
    """The room as AG-UI messages: other speakers as ``user`` messages named after them
    (the text also starts with the name, for agents that drop ``name``), the agent's own
    answers as ``assistant``, and each tool round as an assistant message with its
    ``toolCalls`` followed by one ``tool`` message per result.

    Ids come from the content, so a message keeps its id from one run to the next.
    """
    ids = _Ids()
    messages: list[Message] = []
    for message in request.messages:
        if isinstance(message, ToolRound):
            calls = [
                AGUIToolCall(
                    id=result.call.id,
                    function=FunctionCall(
                        name=result.call.name, arguments=json.dumps(result.call.arguments)
                    ),
                )
                for result in message.results
            ]
            messages.append(
                AssistantMessage(
                    id=ids.next("calls", *(call.id for call in calls)),
                    content=message.text or None,
                    tool_calls=calls,
                )
            )
            for result in message.results:
                messages.append(
                    ToolMessage(
                        id=ids.next("result", result.call.id),
                        tool_call_id=result.call.id,
                        content=f"error: {result.output}" if result.is_error else result.output,
                        error=result.output if result.is_error else None,
                    )
                )
        elif message.speaker == request.agent_name:
            messages.append(
                AssistantMessage(id=ids.next("assistant", message.text), content=message.text)
            )
        else:
            messages.append(
                UserMessage(
                    id=ids.next("user", message.speaker, message.text),
                    content=speaker_line(message),
                    name=message.speaker,
                )
            )
    return messages


class _Ids:
    """Message ids from their content, numbered when the same content comes again."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def next(self, kind: str, *parts: str) -> str:
        digest = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
        base = f"{kind}-{digest}"
        count = self.seen[base] = self.seen.get(base, 0) + 1
        return base if count == 1 else f"{base}-{count}"


# ----------------------------------------------------------------------------- the answer


class SseLines:
    """Server-sent events from lines (no I/O): :meth:`feed` one line (without its end of
    line) and get the ``data`` of each event it completes."""

    def __init__(self) -> None:
        self._data: list[str] = []

    def feed(self, line: str) -> str | None:
        if not line:
            if not self._data:
                return None
            data, self._data = "\n".join(self._data), []
            return data
        name, _, value = line.partition(":")
        if name == "data":
            self._data.append(value.removeprefix(" "))
        return None  # comments, `event:`, `id:` and `retry:` say nothing AG-UI needs


def parse_event(data: str) -> Event | None:
    """One AG-UI event from its JSON; None for an event type this version does not know.

    Raises:
        ValueError: not JSON, or not a valid event of its type.
    """
    try:
        raw = json.loads(data)
    except ValueError:
        raise ValueError(f"an event is not JSON: {data[:200]!r}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("type"), str):
        raise ValueError(f"an event has no type: {data[:200]!r}")
    if raw["type"] not in KNOWN_TYPES:
        return None  # a newer protocol's event: not ours to judge
    try:
        return EVENT.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"][1:])
        raise ValueError(f"a {raw['type']} event is not valid: {where}: {first['msg']}") from None


class RunFailed(Exception):
    """The agent ended its run with an error (RUN_ERROR) or a question for a person."""


@dataclass
class _Call:
    id: str
    name: str
    arguments: str = ""
    done: ToolCall | None = None


@dataclass
class RunReader:
    """Turns one run's AG-UI events into provider events (no I/O).

    Attributes:
        finished: RUN_FINISHED came: nothing after it counts.
    """

    finished: bool = False
    _roles: dict[str, str] = field(default_factory=dict)
    _open_text: str | None = None  # the message a TEXT_MESSAGE_CHUNK without id continues
    _last_text: str | None = None  # the message the last text came from
    _said: str = ""
    _calls: dict[str, _Call] = field(default_factory=dict)
    _answered: set[str] = field(default_factory=set)  # calls that got their result
    _open_chunk: str | None = None  # the call a TOOL_CALL_CHUNK without id continues
    _usage: Usage | None = None

    def feed(self, event: Event) -> list[ProviderEvent]:
        """The provider events ``event`` makes.

        Raises:
            ValueError: the event does not fit the run (a call's arguments are not a JSON
                object, arguments of a call that never started or already ended, a
                TEXT_MESSAGE_CHUNK without ``messageId`` when no message is open).
            RunFailed: RUN_ERROR (with the agent's message), or an interrupt that asks for a
                person's answer.
        """
        if self.finished:
            return []
        if self._open_chunk is not None and not isinstance(event, ToolCallChunkEvent):
            self._end_call(self._open_chunk)
            self._open_chunk = None
        if isinstance(
            event, TextMessageStartEvent | TextMessageContentEvent | TextMessageChunkEvent
        ):
            return self._text(event)
        if isinstance(event, TextMessageEndEvent):
            if event.message_id == self._open_text:
                self._open_text = None
            return []
        if isinstance(
            event, ToolCallStartEvent | ToolCallArgsEvent | ToolCallEndEvent | ToolCallChunkEvent
        ):
            self._call(event)
            return []
        if isinstance(event, ToolCallResultEvent):
            return self._result(event)
        if isinstance(event, StateSnapshotEvent):
            return [StateChange(snapshot=event.snapshot)]
        if isinstance(event, StateDeltaEvent):
            patch = tuple(op.model_dump(mode="json", by_alias=True) for op in event.delta)
            return [StateChange(patch=patch)] if patch else []
        if isinstance(event, RunErrorEvent):
            code = f" ({event.code})" if event.code else ""
            raise RunFailed(f"{event.message}{code}")
        if isinstance(event, RunFinishedEvent):
            return self._finish(event)
        return []  # lifecycle steps, reasoning, activity, custom and raw events

    def finish(self) -> list[ProviderEvent]:
        """The last events, once the stream has ended.

        Raises:
            ValueError: the stream ended before RUN_FINISHED.
        """
        if not self.finished:
            raise ValueError("the stream ended before RUN_FINISHED")
        return []

    # -- text

    def _text(
        self, event: TextMessageStartEvent | TextMessageContentEvent | TextMessageChunkEvent
    ) -> list[ProviderEvent]:
        message_id = event.message_id or self._open_text
        if isinstance(event, TextMessageChunkEvent) and message_id is None:
            # ag-ui-protocol: "Absent continues the message already open"; there is none.
            raise ValueError("a TEXT_MESSAGE_CHUNK without messageId, and no message is open")
        if isinstance(event, TextMessageStartEvent | TextMessageChunkEvent):
            if event.message_id is not None and event.message_id not in self._roles:
                self._roles[event.message_id] = event.role or "assistant"
            self._open_text = message_id
        if isinstance(event, TextMessageStartEvent) or not event.delta or message_id is None:
            return []
        if self._roles.get(message_id, "assistant") != "assistant":
            return []  # the agent echoing a user, system or developer message
        delta = event.delta
        if self._last_text not in (None, message_id) and not self._said[-1:].isspace():
            delta = "\n\n" + delta  # a new message of the same answer: a new paragraph
        self._last_text = message_id
        self._said += delta
        return [TextDelta(delta)]

    # -- tool calls

    def _call(
        self, event: ToolCallStartEvent | ToolCallArgsEvent | ToolCallEndEvent | ToolCallChunkEvent
    ) -> None:
        if isinstance(event, ToolCallStartEvent):
            self._calls[event.tool_call_id] = _Call(event.tool_call_id, event.tool_call_name)
        elif isinstance(event, ToolCallArgsEvent):
            self._open_call(event.tool_call_id).arguments += event.delta
        elif isinstance(event, ToolCallEndEvent):
            if event.tool_call_id not in self._answered:  # END after RESULT: already done
                self._end_call(event.tool_call_id)
        else:
            call_id = event.tool_call_id or self._open_chunk
            if call_id is None:
                raise ValueError("a TOOL_CALL_CHUNK continues no call")
            if call_id != self._open_chunk:
                if self._open_chunk is not None:
                    self._end_call(self._open_chunk)
                if call_id not in self._answered:
                    self._calls.setdefault(call_id, _Call(call_id, event.tool_call_name or ""))
                self._open_chunk = call_id
            self._open_call(call_id).arguments += event.delta or ""

    def _known(self, call_id: str) -> _Call:
        found = self._calls.get(call_id)
        if found is None:
            raise ValueError(f"tool call {call_id!r} was never started")
        return found

    def _open_call(self, call_id: str) -> _Call:
        """The call ``call_id`` while its arguments may still come."""
        # Chunks of two calls interleaved come here too: the first call ended when the
        # second one's chunk came (the reference client refuses them as well).
        if call_id in self._answered or self._known(call_id).done is not None:
            raise ValueError(f"arguments of tool call {call_id!r} after it ended")
        return self._calls[call_id]

    def _end_call(self, call_id: str) -> ToolCall:
        call = self._known(call_id)
        if call.done is None:
            if not call.name:
                raise ValueError(f"tool call {call_id!r} has no name")
            call.done = tool_call(call.id, call.name, call.arguments)
        return call.done

    def _result(self, event: ToolCallResultEvent) -> list[ProviderEvent]:
        if event.tool_call_id not in self._calls:
            return []  # a result of a call this run never showed: nothing to show it with
        done = self._end_call(event.tool_call_id)
        del self._calls[event.tool_call_id]
        self._answered.add(event.tool_call_id)
        return [ToolResult(done, _content_text(event.content))]

    # -- the end

    def _finish(self, event: RunFinishedEvent) -> list[ProviderEvent]:
        if isinstance(event.outcome, RunFinishedInterruptOutcome):
            reasons = "; ".join(i.message or i.reason for i in event.outcome.interrupts)
            raise RunFailed(
                f"the agent stopped to ask for a person's input, which roomcast does not "
                f"give: {reasons}"
            )
        self.finished = True
        # Calls without a result are left to the client: roomcast runs them.
        events: list[ProviderEvent] = [self._end_call(call_id) for call_id in list(self._calls)]
        self._calls.clear()
        if event.usage:
            events.append(
                Usage(
                    sum(entry.input_tokens or 0 for entry in event.usage),
                    sum(entry.output_tokens or 0 for entry in event.usage),
                )
            )
        return events


def _content_text(content: Any) -> str:
    """A tool result's content as text: its text parts, other parts by their type."""
    if isinstance(content, str):
        return content
    pieces = [
        part.text if getattr(part, "type", None) == "text" else f"[{getattr(part, 'type', '?')}]"
        for part in content
    ]
    return "\n".join(pieces)


# ----------------------------------------------------------------------------- the provider


class AGUIProvider:
    """An agent behind an AG-UI endpoint (``provider = "ag-ui"`` in agents.toml).

    Args:
        url: The agent's endpoint, POSTed once per round of an answer.
        headers: Sent with each request (credentials from ``headers_env``).
        timeout_s: How long to wait to connect, and for each piece of the stream (a whole
            run has no limit).
        retry: How a 429 before the first event is tried again.
        model: What people see as the agent's model (a label; nothing is sent).
    """

    def __init__(
        self,
        *,
        url: str,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 60.0,
        retry: RetryPolicy | None = None,
        model: str = "agent",
    ) -> None:
        self.url = url
        self.model = model
        self._timeout_s = timeout_s
        self._retry = retry or RetryPolicy()
        self._where = f"AG-UI agent at {public_url(url)}"
        self._client = httpx.AsyncClient(
            headers={**(headers or {}), "accept": "text/event-stream"},
            timeout=httpx.Timeout(timeout_s),
        )

    def stream(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        return retry_rate_limited(lambda: self._attempt(request), self._retry)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _attempt(self, request: ProviderRequest) -> AsyncGenerator[ProviderEvent, None]:
        body = run_input(request, uuid.uuid4().hex).model_dump_json(by_alias=True)
        try:
            async with self._post(body) as r:
                await self._check(r)
                reader, lines = RunReader(), SseLines()
                async for line in r.aiter_lines():
                    data = lines.feed(line)
                    event = parse_event(data) if data is not None else None
                    for provided in reader.feed(event) if event is not None else ():
                        yield provided
                    if reader.finished:
                        break  # nothing after RUN_FINISHED counts: let the agent go
                for provided in reader.finish():
                    yield provided
        except RunFailed as exc:
            raise ProviderError(f"{self._where}: {exc}") from None
        except ValueError as exc:
            raise ProviderError(f"{self._where}: malformed stream: {exc}") from None
        except httpx.TimeoutException:
            raise ProviderError(
                f"{self._where}: no answer within {self._timeout_s:g} s", retryable=True
            ) from None
        except httpx.ConnectError as exc:
            raise ProviderError(
                f"{self._where}: cannot connect: {_cause(exc)}", retryable=True
            ) from None
        except httpx.HTTPError as exc:
            raise ProviderError(f"{self._where}: the stream broke off: {_cause(exc)}") from None

    @contextlib.asynccontextmanager
    async def _post(self, body: str) -> AsyncIterator[httpx.Response]:
        """The answer to POSTing ``body``, after at most :data:`MAX_REDIRECTS` hops of 307
        or 308 (which keep the POST and its body; httpx drops an ``Authorization`` header
        that would go to another origin)."""
        headers = {"content-type": "application/json"}
        request = self._client.build_request("POST", self.url, content=body, headers=headers)
        response = await self._client.send(request, stream=True)
        try:
            for _ in range(MAX_REDIRECTS):
                after = response.next_request
                if response.status_code not in KEEPS_THE_POST or after is None:
                    break
                await response.aclose()
                response = await self._client.send(after, stream=True)
            yield response
        finally:
            await response.aclose()

    async def _check(self, response: httpx.Response) -> None:
        """Raise a readable :class:`ProviderError` unless ``response`` is an event stream."""
        status = response.status_code
        if 300 <= status < 400:
            after = response.next_request
            where = public_url(str(after.url)) if after is not None else "nowhere (no Location)"
            text = f"{self._where}: HTTP {status}: redirected to {where}"
            if after is not None and status in KEEPS_THE_POST:
                text += f" (still, after {MAX_REDIRECTS} redirects)"
            elif after is not None:
                text += " (not followed: only a 307 or 308 keeps the POST of a run)"
            raise ProviderError(text, status=status)
        if response.status_code >= 400:
            body = b""
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) >= ERROR_BODY_BYTES:
                    break
            text = f"{self._where}: HTTP {response.status_code}"
            said = body.decode("utf-8", "replace")
            first = _html_title(said) if _media_type(response) == "text/html" else _first_line(said)
            if first:
                text += f": {first}"
            if response.status_code in (401, 403):
                text += " (check the headers set by headers_env)"
            raise ProviderError(
                text,
                status=response.status_code,
                retryable=response.status_code in (408, 409, 429) or response.status_code >= 500,
                retry_after_s=parse_retry_after(response.headers.get("retry-after")),
            )
        if _media_type(response) != "text/event-stream":
            kind = response.headers.get("content-type", "")
            raise ProviderError(
                f"{self._where}: HTTP {status}: answered with {kind or 'no content type'}, "
                "not an event stream (text/event-stream)",
                status=status,
            )


def _media_type(response: httpx.Response) -> str:
    """The response's media type, lower-cased, without parameters (RFC 9110: the type and
    subtype are case-insensitive)."""
    kind: str = response.headers.get("content-type", "")
    return kind.partition(";")[0].strip().lower()


def _html_title(page: str) -> str:
    """What an HTML error page says in its ``<title>``, or that it is one."""
    found = TITLE.search(page)
    title = " ".join(html.unescape(found.group(1)).split()) if found else ""
    return title[:300] or "(an HTML page)"


def _first_line(text: str) -> str:
    for line in text.splitlines():
        if line.strip():
            return line.strip()[:300]
    return ""


def _cause(exc: BaseException) -> str:
    """The most telling message in ``exc``'s chain (httpx often wraps the OS's)."""
    messages: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(messages) < 5:
        text = str(current)
        if text and text not in messages:
            messages.append(text)
        current = current.__cause__ or current.__context__
    return messages[-1] if messages else type(exc).__name__


__all__ = [
    "AGUIProvider",
    "RunFailed",
    "RunReader",
    "SseLines",
    "messages_of",
    "parse_event",
    "public_url",
    "run_input",
]
