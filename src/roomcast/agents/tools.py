"""The tools an agent may call (docs/agents.md): the room's live objects, its history,
and Python functions of your own.

Built-in tools work on the room the agent is answering in, through the SDK, as the agent:
``create_poll``, ``vote``, ``close_poll``, ``add_to_board``, ``set_shared``, ``get_shared``
and ``search_history``. In an agent's ``tools`` list, ``builtin`` stands for all of them;
``package.module:function`` adds one of your functions, and ``package.module`` adds every
function of that module decorated with :func:`tool`::

    from roomcast.agents import tool

    @tool(description="The weather in a city, in one line.")
    async def weather(city: str) -> str:
        ...

Parameters become the tool's JSON schema (from the type hints); the return value is sent
back to the model as text (JSON for anything but a string).
"""

from __future__ import annotations

import importlib
import inspect
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, get_type_hints

import msgspec

from roomcast.agents.providers.base import ToolSpec
from roomcast.client import Channel, LiveMap, RoomcastError

from .triggers import message_text

ToolFunction = Callable[..., Any]
_MARK = "__roomcast_tool__"
RESERVED_KEYS = frozenset({"polls", "boards", "agents"})  # root keys with a convention


class ToolError(Exception):
    """A tool call that could not be done; its message goes back to the model."""


@dataclass(frozen=True, slots=True)
class Tool:
    spec: ToolSpec
    run: Callable[[Channel, dict[str, Any]], Awaitable[str]]


def tool(
    fn: ToolFunction | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
    parameters: dict[str, Any] | None = None,
) -> Any:
    """Mark a function (sync or async) as a tool an agent can call."""

    def mark(function: ToolFunction) -> ToolFunction:
        spec = ToolSpec(
            name=name or function.__name__,
            description=description or inspect.getdoc(function) or function.__name__,
            parameters=parameters or schema_of(function),
        )
        setattr(function, _MARK, spec)
        return function

    return mark(fn) if fn is not None else mark


def schema_of(function: ToolFunction) -> dict[str, Any]:
    """A JSON schema of the function's keyword arguments, from its type hints."""
    hints = get_type_hints(function)
    fields: list[Any] = []
    for param in inspect.signature(function).parameters.values():
        annotation = hints.get(param.name, Any)
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, annotation))
        else:
            fields.append((param.name, annotation, param.default))
    struct = msgspec.defstruct(function.__name__ + "_arguments", fields, kw_only=True)
    schema = msgspec.json.schema(struct)
    defs = schema.get("$defs", {})
    body = defs.get(struct.__name__, schema)
    return {
        "type": "object",
        "properties": body.get("properties", {}),
        "required": body.get("required", []),
    }


def _wrap(function: ToolFunction, spec: ToolSpec) -> Tool:
    async def run(channel: Channel, arguments: dict[str, Any]) -> str:
        try:
            result = function(**arguments)
            if inspect.isawaitable(result):
                result = await result
        except TypeError as exc:
            raise ToolError(f"bad arguments for {spec.name}: {exc}") from None
        return result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)

    return Tool(spec, run)


# ----------------------------------------------------------------------------- built-ins


def _string(arguments: dict[str, Any], key: str) -> str:
    value = arguments.get(key)
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f"`{key}` must be a non-empty string")
    return value.strip()


async def _create_poll(channel: Channel, arguments: dict[str, Any]) -> str:
    options = arguments.get("options")
    if not isinstance(options, list) or not all(isinstance(o, str) for o in options):
        raise ToolError("`options` must be a list of strings")
    poll = await channel.polls.create(_string(arguments, "question"), options)
    return json.dumps({"poll_id": poll.poll_id, "options": poll.options})


def _find_option(channel: Channel, poll_id: str, option: str) -> str:
    poll = channel.polls.get(poll_id)
    if option in poll.options:
        return option
    for option_id, label in poll.options.items():
        if label.strip().lower() == option.strip().lower():
            return option_id
    raise ToolError(f"poll {poll_id} has no option {option!r}; options: {poll.options}")


def _find_poll(channel: Channel, poll: str) -> str:
    """A poll by id or question; ``latest`` (or nothing) is the newest one."""
    polls = channel.polls.list()
    if not polls:
        raise ToolError("there is no poll in this room")
    if poll in ("", "latest"):
        return polls[-1].poll_id
    for found in polls:
        if poll in (found.poll_id, found.question):
            return found.poll_id
    raise ToolError(f"no poll {poll!r}; polls: {[p.poll_id for p in polls]}")


async def _vote(channel: Channel, arguments: dict[str, Any]) -> str:
    await channel.objects.sync()
    poll_id = _find_poll(channel, str(arguments.get("poll_id") or "latest"))
    option_id = _find_option(channel, poll_id, _string(arguments, "option"))
    await channel.polls.vote(poll_id, option_id)
    return json.dumps({"poll_id": poll_id, "voted": option_id})


async def _close_poll(channel: Channel, arguments: dict[str, Any]) -> str:
    await channel.objects.sync()
    poll_id = _find_poll(channel, str(arguments.get("poll_id") or "latest"))
    await channel.polls.close(poll_id)
    return json.dumps({"poll_id": poll_id, "closed": True})


async def _add_to_board(channel: Channel, arguments: dict[str, Any]) -> str:
    await channel.objects.sync()
    title = str(arguments.get("board") or "Notes").strip()
    text = _string(arguments, "text")
    board_id = next(
        (b.board_id for b in channel.boards.list() if title in (b.board_id, b.title)), None
    )
    if board_id is None:
        board_id = (await channel.boards.create(title)).board_id
    item_id = await channel.boards.add_item(board_id, text)
    return json.dumps({"board_id": board_id, "item_id": item_id})


async def _set_shared(channel: Channel, arguments: dict[str, Any]) -> str:
    key = _string(arguments, "key")
    if key in RESERVED_KEYS:
        raise ToolError(f"`{key}` is kept for {key}; use the {key} tools")
    root = await channel.objects.root()
    await root.set(key, arguments.get("value"))
    return json.dumps({"key": key, "value": arguments.get("value")})


async def _get_shared(channel: Channel, arguments: dict[str, Any]) -> str:
    root = await channel.objects.root()
    key = arguments.get("key")
    if isinstance(key, str) and key:
        value = root.get(key)
        if isinstance(value, LiveMap):
            return json.dumps(value.entries(), ensure_ascii=False)
        return json.dumps(getattr(value, "value", value), ensure_ascii=False)
    return json.dumps(
        {k: v for k, v in root.entries().items() if k not in RESERVED_KEYS}, ensure_ascii=False
    )


async def _search_history(channel: Channel, arguments: dict[str, Any]) -> str:
    query = _string(arguments, "query").lower()
    limit = arguments.get("limit", 10)
    limit = limit if isinstance(limit, int) and 0 < limit <= 50 else 10
    found: list[str] = []
    scanned = 0
    async for page in channel.history(limit=200):
        for message in reversed(page.messages):
            text = message_text(message)
            if message.name == "text" and query in text.lower():
                found.append(f"#{message.msg_serial} {message.client_id}: {text[:300]}")
        scanned += len(page.messages)
        if len(found) >= limit or scanned >= 2000:
            break
    return "\n".join(found[:limit]) or "nothing found"


def _spec(name: str, description: str, properties: dict[str, Any], required: list[str]) -> ToolSpec:
    return ToolSpec(
        name, description, {"type": "object", "properties": properties, "required": required}
    )


_STR = {"type": "string"}
BUILTIN: dict[str, Tool] = {
    tool.spec.name: tool
    for tool in (
        Tool(
            _spec(
                "create_poll",
                "Create a poll in this room; people vote in the side panel.",
                {"question": _STR, "options": {"type": "array", "items": _STR, "minItems": 2}},
                ["question", "options"],
            ),
            _create_poll,
        ),
        Tool(
            _spec(
                "vote",
                "Vote in a poll as yourself (a new vote replaces your old one). `option` is an "
                "option id (opt-1) or its label; `poll_id` defaults to the latest poll.",
                {"poll_id": _STR, "option": _STR},
                ["option"],
            ),
            _vote,
        ),
        Tool(
            _spec(
                "close_poll",
                "Close a poll (default: the latest).",
                {"poll_id": _STR},
                [],
            ),
            _close_poll,
        ),
        Tool(
            _spec(
                "add_to_board",
                "Add an item to a board (a list of notes, ideas, a plan), made if missing.",
                {"board": _STR, "text": _STR},
                ["text"],
            ),
            _add_to_board,
        ),
        Tool(
            _spec(
                "set_shared",
                "Set a shared value of the room (a score, a decision) for everyone to see.",
                {"key": _STR, "value": {}},
                ["key", "value"],
            ),
            _set_shared,
        ),
        Tool(
            _spec(
                "get_shared",
                "Read a shared value of the room, or all of them without `key`.",
                {"key": _STR},
                [],
            ),
            _get_shared,
        ),
        Tool(
            _spec(
                "search_history",
                "Search this room's earlier messages for a phrase.",
                {"query": _STR, "limit": {"type": "integer"}},
                ["query"],
            ),
            _search_history,
        ),
    )
}


def resolve_tools(names: tuple[str, ...]) -> dict[str, Tool]:
    """The tools an agent's ``tools`` list names, by tool name.

    Raises:
        ToolError: An unknown built-in, a module that cannot be imported, or a function
            that is not there.
    """
    tools: dict[str, Tool] = {}
    for entry in names:
        if entry == "builtin":
            tools.update(BUILTIN)
        elif entry in BUILTIN:
            tools[entry] = BUILTIN[entry]
        else:
            for found in _import_tools(entry):
                tools[found.spec.name] = found
    return tools


def _import_tools(entry: str) -> list[Tool]:
    module_name, _, function_name = entry.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if ":" in entry or "." in entry:
            raise ToolError(f"tool module {module_name!r} cannot be imported: {exc}") from None
        raise ToolError(
            f"unknown tool {entry!r}: built-ins are {', '.join(BUILTIN)} (or `builtin`); "
            "your own are `package.module:function` or `package.module`"
        ) from None
    if function_name:
        function = getattr(module, function_name, None)
        if not callable(function):
            raise ToolError(f"{module_name} has no function {function_name!r}")
        spec = getattr(function, _MARK, None)
        if not isinstance(spec, ToolSpec):
            tool(function)
            spec = getattr(function, _MARK)
        return [_wrap(function, spec)]
    found = [
        _wrap(value, getattr(value, _MARK))
        for value in vars(module).values()
        if callable(value) and isinstance(getattr(value, _MARK, None), ToolSpec)
    ]
    if not found:
        raise ToolError(f"module {module_name} has no function marked with @tool")
    return found


async def call_tool(tools: dict[str, Tool], channel: Channel, name: str, args: Any) -> str:
    """Run one tool call; an error becomes the text the model reads (it may try again)."""
    found = tools.get(name)
    if found is None:
        raise ToolError(f"there is no tool {name!r}")
    if not isinstance(args, dict):
        raise ToolError("tool arguments must be a JSON object")
    try:
        return await found.run(channel, args)
    except RoomcastError as exc:
        raise ToolError(f"{name} failed: {exc.message}") from None


__all__ = [
    "BUILTIN",
    "RESERVED_KEYS",
    "Tool",
    "ToolError",
    "call_tool",
    "resolve_tools",
    "schema_of",
    "tool",
]
