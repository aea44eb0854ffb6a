"""Local stand-ins for LLM services that speak their real streaming wire formats.

:class:`FakeLLMServer` is a tiny HTTP/1.1 server on 127.0.0.1 running in the test's own event
loop. Each request gets the next queued :class:`Reply` (the last one repeats); every request is
recorded, and a client that goes away in the middle of a streamed reply is noticed
(:attr:`FakeLLMServer.disconnected`). The builders below make OpenAI chat-completions chunks and
Anthropic Messages events as the real services send them; :func:`collect` reads a
provider's whole answer, and :data:`FAST_RETRY` keeps retries short.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from roomcast.agents.providers import Provider, ProviderEvent, ProviderRequest, RetryPolicy

_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 429: "Too Many Requests"}


@dataclass
class Reply:
    """One scripted HTTP answer.

    ``events`` are SSE frames written one by one (``pause_s`` apart) as a chunked
    ``text/event-stream``; with ``hold`` the stream then stays open until the client leaves.
    Without ``events`` the reply is ``status`` with the JSON ``body``. ``stall_s`` waits that
    long before answering at all.
    """

    status: int = 200
    events: Sequence[str] = ()
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    pause_s: float = 0.0
    hold: bool = False
    stall_s: float = 0.0


@dataclass
class Recorded:
    """A request as the server saw it."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any


class FakeLLMServer:
    """``async with FakeLLMServer([Reply(...), ...]) as server:`` → ``server.url``."""

    def __init__(self, replies: Sequence[Reply]) -> None:
        self.replies = list(replies)
        self.requests: list[Recorded] = []
        self.disconnected = asyncio.Event()
        self.completed = 0  # streamed replies written to the end
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        assert self._server is not None
        host, port = self._server.sockets[0].getsockname()[:2]
        return f"http://{host}:{port}"

    async def __aenter__(self) -> FakeLLMServer:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            method, path, _ = lines[0].split(" ", 2)
            headers = {}
            for line in lines[1:]:
                if ":" in line:
                    name, value = line.split(":", 1)
                    headers[name.strip().lower()] = value.strip()
            raw = await reader.readexactly(int(headers.get("content-length", "0")))
            body = json.loads(raw) if raw else None
            self.requests.append(Recorded(method, path, headers, body))
            reply = self.replies[min(len(self.requests), len(self.replies)) - 1]
            await self._answer(reply, reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(
        self, reply: Reply, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        if reply.stall_s:
            await asyncio.sleep(reply.stall_s)
        status_line = f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}\r\n"
        extra = "".join(f"{name}: {value}\r\n" for name, value in reply.headers.items())
        if not reply.events:
            data = json.dumps(reply.body).encode()
            writer.write(
                (
                    f"{status_line}content-type: application/json\r\n"
                    f"content-length: {len(data)}\r\n{extra}connection: close\r\n\r\n"
                ).encode()
                + data
            )
            await writer.drain()
            return
        writer.write(
            (
                f"{status_line}content-type: text/event-stream\r\n"
                f"transfer-encoding: chunked\r\n{extra}connection: close\r\n\r\n"
            ).encode()
        )
        # The client sends nothing more on this connection: EOF means it went away.
        gone = asyncio.ensure_future(reader.read(1))
        try:
            for frame in reply.events:
                if gone.done():
                    break
                data = frame.encode()
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                await writer.drain()
                if reply.pause_s:
                    await asyncio.wait({gone}, timeout=reply.pause_s)
            if reply.hold and not gone.done():
                await asyncio.wait({gone}, timeout=60)
            if gone.done():
                self.disconnected.set()
                return
            writer.write(b"0\r\n\r\n")
            await writer.drain()
            self.completed += 1
        except ConnectionError:
            self.disconnected.set()
        finally:
            gone.cancel()


# -- OpenAI chat completions -------------------------------------------------------------------


def sse(data: Any, event: str | None = None) -> str:
    """One SSE frame; ``data`` is JSON-encoded unless it is already a string."""
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "") + f"data: {text}\n\n"


def openai_chunk(
    delta: dict[str, Any] | None = None,
    *,
    finish_reason: str | None = None,
    usage: tuple[int, int] | None = None,
    model: str = "fake-model",
) -> str:
    choices = (
        []
        if delta is None and finish_reason is None
        else [{"index": 0, "delta": delta or {}, "finish_reason": finish_reason}]
    )
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": model,
        "choices": choices,
        "usage": None,
    }
    if usage is not None:
        chunk["usage"] = {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": sum(usage),
        }
    return sse(chunk)


OPENAI_DONE = sse("[DONE]")


def openai_text(pieces: Sequence[str], usage: tuple[int, int] = (12, 5)) -> list[str]:
    """A streamed text answer: a role chunk, one chunk per piece, finish, usage, [DONE]."""
    return [
        openai_chunk({"role": "assistant", "content": ""}),
        *(openai_chunk({"content": piece}) for piece in pieces),
        openai_chunk(finish_reason="stop"),
        openai_chunk(usage=usage),
        OPENAI_DONE,
    ]


def openai_tool_call_deltas(
    index: int, call_id: str, name: str, argument_parts: Sequence[str]
) -> list[str]:
    """A tool call as the service streams it: id and name first, then the arguments in parts."""
    first = {
        "index": index,
        "id": call_id,
        "type": "function",
        "function": {"name": name, "arguments": ""},
    }
    return [openai_chunk({"tool_calls": [first]})] + [
        openai_chunk({"tool_calls": [{"index": index, "function": {"arguments": part}}]})
        for part in argument_parts
    ]


def openai_error(message: str, kind: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


# -- Anthropic Messages --------------------------------------------------------------------------


def anthropic_event(kind: str, **data: Any) -> str:
    return sse({"type": kind, **data}, event=kind)


def anthropic_start(input_tokens: int = 20, model: str = "fake-messages-model") -> str:
    return anthropic_event(
        "message_start",
        message={
            "id": "msg_1",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    )


def anthropic_end(output_tokens: int, stop_reason: str = "end_turn") -> list[str]:
    return [
        anthropic_event(
            "message_delta",
            delta={"stop_reason": stop_reason, "stop_sequence": None},
            usage={"output_tokens": output_tokens},
        ),
        anthropic_event("message_stop"),
    ]


def anthropic_text_block(index: int, pieces: Sequence[str]) -> list[str]:
    return [
        anthropic_event(
            "content_block_start", index=index, content_block={"type": "text", "text": ""}
        ),
        *(
            anthropic_event(
                "content_block_delta", index=index, delta={"type": "text_delta", "text": piece}
            )
            for piece in pieces
        ),
        anthropic_event("content_block_stop", index=index),
    ]


def anthropic_tool_block(
    index: int, call_id: str, name: str, json_parts: Sequence[str]
) -> list[str]:
    return [
        anthropic_event(
            "content_block_start",
            index=index,
            content_block={"type": "tool_use", "id": call_id, "name": name, "input": {}},
        ),
        *(
            anthropic_event(
                "content_block_delta",
                index=index,
                delta={"type": "input_json_delta", "partial_json": part},
            )
            for part in json_parts
        ),
        anthropic_event("content_block_stop", index=index),
    ]


def anthropic_text(
    pieces: Sequence[str], input_tokens: int = 20, output_tokens: int = 6
) -> list[str]:
    """A streamed text answer with a ping, as the service sends it."""
    return [
        anthropic_start(input_tokens),
        anthropic_event("ping"),
        *anthropic_text_block(0, pieces),
        *anthropic_end(output_tokens),
    ]


def anthropic_error(message: str, kind: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}}


FAST_RETRY = RetryPolicy(attempts=3, base_delay_s=0.01, max_delay_s=0.05)


async def collect(provider: Provider, request: ProviderRequest) -> list[ProviderEvent]:
    """Every event of one answer; the stream is closed after."""
    async with contextlib.aclosing(provider.stream(request)) as events:
        return [event async for event in events]
