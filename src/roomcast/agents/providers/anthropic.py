"""Anthropic's Messages API through the official ``anthropic`` SDK (``roomcast[anthropic]``).

Streams raw Messages events (``message_start``, ``content_block_*``, ``message_delta``,
``message_stop``). The SDK's own retries are off; see
:class:`~roomcast.agents.providers.base.RetryPolicy`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, cast

import anthropic

from roomcast.agents.providers.base import (
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
    ToolCall,
    ToolRound,
    Usage,
    speaker_line,
    tool_call,
)
from roomcast.agents.providers.sdk import SDKProvider

# Every kind of input token counts towards the input.
_INPUT_USAGE = ("input_tokens", "cache_creation_input_tokens", "cache_read_input_tokens")

# Error types that Anthropic sends as an `error` event inside a 200 stream.
_STREAM_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "overloaded_error": 529,
}


def build_messages(request: ProviderRequest) -> list[dict[str, Any]]:
    """The ``messages`` array: the room as alternating user / assistant turns.

    Other participants' lines that follow each other are merged into one user turn; the agent's
    tool rounds become ``tool_use`` blocks answered by ``tool_result`` blocks.
    """
    blocks: list[tuple[str, dict[str, Any]]] = []
    for message in request.messages:
        if isinstance(message, ToolRound):
            if message.text:
                blocks.append(("assistant", {"type": "text", "text": message.text}))
            for result in message.results:
                blocks.append(
                    (
                        "assistant",
                        {
                            "type": "tool_use",
                            "id": result.call.id,
                            "name": result.call.name,
                            "input": result.call.arguments,
                        },
                    )
                )
            for result in message.results:
                tool_result: dict[str, Any] = {
                    "type": "tool_result",
                    "tool_use_id": result.call.id,
                    "content": result.output,
                }
                if result.is_error:
                    tool_result["is_error"] = True
                blocks.append(("user", tool_result))
        elif message.speaker == request.agent_name:
            if message.text:
                blocks.append(("assistant", {"type": "text", "text": message.text}))
        else:
            blocks.append(("user", {"type": "text", "text": speaker_line(message)}))
    if not blocks or blocks[0][0] != "user":
        # The API wants a user turn first.
        blocks.insert(0, ("user", {"type": "text", "text": "(the conversation so far)"}))
    messages: list[dict[str, Any]] = []
    for role, block in blocks:
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"].append(block)
        else:
            messages.append({"role": role, "content": [block]})
    return messages


def build_tools(request: ProviderRequest) -> list[dict[str, Any]]:
    return [
        {"name": tool.name, "description": tool.description, "input_schema": tool.parameters}
        for tool in request.tools
    ]


@dataclass
class _ToolBlock:
    id: str
    name: str
    partial_json: str = ""


@dataclass
class EventAssembler:
    """Turns Messages stream events into provider events (no I/O)."""

    tool_blocks: dict[int, _ToolBlock] = field(default_factory=dict)
    input_parts: dict[str, int] = field(default_factory=dict)
    output_tokens: int = 0
    stopped: bool = False

    def feed(self, event: Any) -> list[ProviderEvent]:
        kind = getattr(event, "type", None)
        if kind == "message_start":
            self._count(event.message.usage)
        elif kind == "content_block_start":
            return self._block_start(event)
        elif kind == "content_block_delta":
            return self._block_delta(event)
        elif kind == "content_block_stop":
            tool = self.tool_blocks.pop(int(event.index), None)
            if tool is not None:
                return [self._tool_call(tool)]
        elif kind == "message_delta" and event.usage is not None:
            self._count(event.usage)
        elif kind == "message_stop":
            self.stopped = True
        return []

    def _count(self, usage: Any) -> None:
        # Counts are cumulative; `message_delta` may repeat some of them or leave them out.
        for name in _INPUT_USAGE:
            value = getattr(usage, name, None)
            if value is not None:
                self.input_parts[name] = int(value)
        if getattr(usage, "output_tokens", None) is not None:
            self.output_tokens = int(usage.output_tokens)

    def _block_start(self, event: Any) -> list[ProviderEvent]:
        block = event.content_block
        if block.type == "tool_use":
            self.tool_blocks[int(event.index)] = _ToolBlock(str(block.id), str(block.name))
        elif block.type == "text" and block.text:
            return [TextDelta(str(block.text))]
        return []

    def _block_delta(self, event: Any) -> list[ProviderEvent]:
        delta = event.delta
        if delta.type == "text_delta" and delta.text:
            return [TextDelta(str(delta.text))]
        if delta.type == "input_json_delta":
            self.tool_blocks[int(event.index)].partial_json += delta.partial_json or ""
        return []

    def finish(self) -> list[ProviderEvent]:
        if not self.stopped:
            raise ValueError("the stream ended before message_stop")
        return [Usage(sum(self.input_parts.values()), self.output_tokens)]

    @staticmethod
    def _tool_call(tool: _ToolBlock) -> ToolCall:
        return tool_call(tool.id, tool.name, tool.partial_json, "input")


class AnthropicProvider(SDKProvider):
    """A Claude model behind the Messages API (or a compatible ``base_url``)."""

    sdk: ClassVar[ModuleType] = anthropic
    vendor = "Anthropic"

    def make_client(self, *, api_key: str, base_url: str | None, timeout_s: float) -> Any:
        return anthropic.AsyncAnthropic(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )

    def request_params(self, request: ProviderRequest) -> dict[str, Any]:
        """The body sent to ``/v1/messages``."""
        params: dict[str, Any] = {
            "model": self.model,
            "max_tokens": request.max_tokens,
            "messages": build_messages(request),
            "stream": True,
        }
        if request.system_prompt:
            params["system"] = request.system_prompt
        if request.temperature is not None:
            # This SDK no longer has a `temperature` argument; the API still takes it for the
            # models that support it.
            params["extra_body"] = {"temperature": request.temperature}
        if request.tools:
            params["tools"] = build_tools(request)
        return params

    async def open_stream(self, request: ProviderRequest) -> Any:
        create = cast(Any, self._client.messages.create)
        return await create(**self.request_params(request))

    def assembler(self) -> EventAssembler:
        return EventAssembler()

    def status(self, exc: Any) -> int:
        status = int(exc.status_code)
        if status < 400:  # an `error` event inside the stream
            body = exc.body
            inner = body.get("error") if isinstance(body, dict) else None
            kind = inner.get("type") if isinstance(inner, dict) else None
            status = _STREAM_ERROR_STATUS.get(str(kind), 500)
        return status

    def other_error(self, exc: Exception) -> ProviderError:
        # The SDK lets transport errors inside a stream through.
        return ProviderError(
            f"{self._where}: the stream broke off: {type(exc).__name__}: {exc}", retryable=True
        )
