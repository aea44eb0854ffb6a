"""OpenAI-compatible chat completions (OpenAI, Azure, Ollama, vLLM, llama.cpp, LM Studio, ...).

Uses the official ``openai`` SDK (the ``roomcast[openai]`` extra) with ``base_url``, streaming
with ``stream_options.include_usage`` so the last chunk carries the token counts. The SDK's own
retries are off: :class:`~roomcast.agents.providers.base.RetryPolicy` decides, so that only a
429 before the first token is tried again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, ClassVar, cast

import openai

from roomcast.agents.providers.base import (
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    TextDelta,
    ToolRound,
    Usage,
    speaker_line,
    tool_call,
)
from roomcast.agents.providers.sdk import SDKProvider


def build_messages(request: ProviderRequest) -> list[dict[str, Any]]:
    """The ``messages`` array: system prompt, then the room as user / assistant / tool turns."""
    messages: list[dict[str, Any]] = []
    if request.system_prompt:
        messages.append({"role": "system", "content": request.system_prompt})
    for message in request.messages:
        if isinstance(message, ToolRound):
            messages.append(
                {
                    "role": "assistant",
                    "content": message.text or None,
                    "tool_calls": [
                        {
                            "id": result.call.id,
                            "type": "function",
                            "function": {
                                "name": result.call.name,
                                "arguments": json.dumps(result.call.arguments),
                            },
                        }
                        for result in message.results
                    ],
                }
            )
            for result in message.results:
                output = f"error: {result.output}" if result.is_error else result.output
                messages.append({"role": "tool", "tool_call_id": result.call.id, "content": output})
        elif message.speaker == request.agent_name:
            messages.append({"role": "assistant", "content": message.text})
        else:
            messages.append({"role": "user", "content": speaker_line(message)})
    return messages


def build_tools(request: ProviderRequest) -> list[dict[str, Any]]:
    return [
        {
            "type": "function",
            "function": {
                "name": tool.name,
                "description": tool.description,
                "parameters": tool.parameters,
            },
        }
        for tool in request.tools
    ]


@dataclass
class _PartialCall:
    id: str = ""
    name: str = ""
    arguments: str = ""


@dataclass
class ChunkAssembler:
    """Turns chat-completion chunks into provider events (no I/O).

    Tool calls arrive as deltas keyed by ``index``, their JSON arguments split across chunks;
    they are emitted whole when the choice finishes. Usage comes in a last chunk without choices.
    """

    calls: dict[int, _PartialCall] = field(default_factory=dict)
    finished: bool = False
    usage: Usage | None = None

    def feed(self, chunk: Any) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        if chunk.usage is not None:
            self.usage = Usage(
                int(chunk.usage.prompt_tokens or 0), int(chunk.usage.completion_tokens or 0)
            )
        for choice in chunk.choices or ():
            delta = choice.delta
            if delta is not None:
                if delta.content:
                    events.append(TextDelta(str(delta.content)))
                for part in delta.tool_calls or ():
                    partial = self.calls.setdefault(self._index_of(part), _PartialCall())
                    if part.id:
                        partial.id = str(part.id)
                    if part.function is not None:
                        partial.name += part.function.name or ""
                        partial.arguments += part.function.arguments or ""
            if choice.finish_reason:
                self.finished = True
                events.extend(self._flush_calls())
        return events

    def _index_of(self, part: Any) -> int:
        if part.index is not None:
            return int(part.index)
        # Some servers leave out `index`: a new id starts a new call, anything else continues one.
        last = max(self.calls, default=-1)
        if last < 0 or (part.id and self.calls[last].id and part.id != self.calls[last].id):
            return last + 1
        return last

    def finish(self) -> list[ProviderEvent]:
        if not self.finished:
            raise ValueError("the stream ended before the model finished its answer")
        events = self._flush_calls()
        if self.usage is not None:
            events.append(self.usage)
        return events

    def _flush_calls(self) -> list[ProviderEvent]:
        events: list[ProviderEvent] = []
        for index in sorted(self.calls):
            partial = self.calls[index]
            if not partial.name:
                raise ValueError(f"tool call #{index} has no function name")
            call_id = partial.id or f"call_{index}"
            events.append(tool_call(call_id, partial.name, partial.arguments))
        self.calls.clear()
        return events


class OpenAICompatibleProvider(SDKProvider):
    """A model behind an OpenAI-compatible ``/chat/completions`` endpoint."""

    sdk: ClassVar[ModuleType] = openai
    vendor = "OpenAI"

    def make_client(self, *, api_key: str, base_url: str | None, timeout_s: float) -> Any:
        return openai.AsyncOpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout_s, max_retries=0
        )

    def request_params(self, request: ProviderRequest) -> dict[str, Any]:
        """The body sent to ``/chat/completions``."""
        params: dict[str, Any] = {
            "model": self.model,
            "messages": build_messages(request),
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        # OpenAI's own API wants max_completion_tokens; most compatible servers know max_tokens.
        official = self.base_url is None or "api.openai.com" in self.base_url
        params["max_completion_tokens" if official else "max_tokens"] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        if request.tools:
            params["tools"] = build_tools(request)
        return params

    async def open_stream(self, request: ProviderRequest) -> Any:
        create = cast(Any, self._client.chat.completions.create)
        return await create(**self.request_params(request))

    def assembler(self) -> ChunkAssembler:
        return ChunkAssembler()

    def other_error(self, exc: Exception) -> ProviderError | None:
        if isinstance(exc, openai.APIError):  # an error object inside the stream
            return ProviderError(f"{self._where}: {exc.message}")
        return None
