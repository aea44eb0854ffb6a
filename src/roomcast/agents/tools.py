"""The tools an agent may call (docs/agents.md): the room's live objects, its history,
and Python functions of your own; and the room's shared state as one document, which an
agent that keeps state of its own (an AG-UI agent) reads and changes.

Built-in tools work on the room the agent is answering in, through the SDK, as the agent:
``create_poll``, ``vote``, ``close_poll``, ``add_to_board``, ``set_shared``, ``get_shared``
and ``search_history``. In an agent's ``tools`` list, ``builtin`` stands for all of them;
``package.module:function`` adds one of your functions, ``package.module`` adds every
function of that module decorated with :func:`tool`, and ``mcp:NAME`` adds the tools of an
MCP server (agents/mcp.py)::

    from roomcast.agents import tool

    @tool(description="The weather in a city, in one line.")
    async def weather(city: str) -> str:
        ...

Parameters become the tool's JSON schema (from the type hints); the return value is sent
back to the model as text (JSON for anything but a string).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import json
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_type_hints

import msgspec

from roomcast.agents.config import MCP_PREFIX
from roomcast.agents.providers.base import StateChange, ToolSpec
from roomcast.client import Channel, LiveMap, LiveObjects, RoomcastError
from roomcast.protocol import messages as m
from roomcast.protocol.objects import ROOT, plain_state

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
        if entry.startswith(MCP_PREFIX):
            continue  # an MCP server's tools: the runtime connects to it (agents/mcp.py)
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


# ----------------------------------------------------------------------------- shared state
#
# The room's live objects as one JSON document, {object_id: state}: a map's entries (a
# reference stays {"object_id": id}), a counter's value. An agent changes it with a JSON
# Patch over the state as it is now, or with a whole snapshot read against the state it was
# given; either becomes live-object operations (docs/agents.md, "Shared state").


def room_state(objects: LiveObjects) -> dict[str, Any]:
    """The room's live objects as one document (the copy must be synced)."""
    return plain_state(objects.snapshot().objects)


async def change_state(
    channel: Channel, change: StateChange, given: Mapping[str, Any] | None
) -> list[m.ObjectOp]:
    """Make the room's live objects what ``change`` says, as the agent; ``given`` is the
    state the agent was sent (a snapshot's changes are read against it).

    Returns:
        The operations sent, in order (none when nothing changes).

    Raises:
        ToolError: the change is refused as a whole (a patch that does not apply, an object
            that would be created, removed or change its type, a reserved root key), or
            the server refused an operation (those before it stay done).
    """
    try:
        await channel.objects.sync()
    except RoomcastError as exc:
        raise ToolError(f"the live objects cannot be read: {exc.message}") from None
    current = room_state(channel.objects)
    if change.patch is not None:
        ops = state_ops(current, apply_patch(current, change.patch), partial=False)
    else:
        ops = state_ops({**current, **(given or {})}, change.snapshot, partial=True)
    for number, op in enumerate(ops, start=1):
        try:
            await channel.objects.apply(op)
        except RoomcastError as exc:
            raise ToolError(f"operation {number} of {len(ops)} refused: {exc.message}") from None
    return ops


def state_ops(before: Mapping[str, Any], after: Any, *, partial: bool) -> list[m.ObjectOp]:
    """The operations that make the objects ``before`` into ``after``: a map's keys set
    or removed, a counter increased by the difference. With ``partial`` an object left out
    of ``after`` stays as it is (else leaving it out would delete it: refused).

    Raises:
        ToolError: ``after`` creates, deletes or retypes an object, or changes a reserved
            root key (``polls``, ``boards``, ``agents``: their tools keep the conventions).
    """
    if not isinstance(after, dict):
        raise ToolError("the state is an object of live objects by id")
    for object_id in before:
        if object_id not in after and not partial:
            raise ToolError(f"{object_id} cannot be removed: live objects are never deleted")
    ops: list[m.ObjectOp] = []
    for object_id, new in after.items():
        if object_id not in before:
            raise ToolError(
                f"there is no live object {object_id!r}: new objects get their ids from the "
                "server (create them with the tools)"
            )
        old = before[object_id]
        if isinstance(old, dict):
            ops += _map_ops(object_id, old, new)
        elif isinstance(new, bool) or not isinstance(new, int | float):
            raise ToolError(f"{object_id} is a counter: its state is a number, not {new!r}")
        elif new != old:
            ops.append(m.CounterInc(object_id=object_id, amount=new - old))
    return ops


def _map_ops(object_id: str, old: dict[str, Any], new: Any) -> list[m.ObjectOp]:
    if not isinstance(new, dict):
        raise ToolError(f"{object_id} is a map: its state is an object, not {new!r}")
    ops: list[m.ObjectOp] = []
    try:
        for key, value in new.items():
            if key not in old or old[key] != value:
                ops.append(m.MapSet(object_id=object_id, key=key, value=value))
    except (TypeError, ValueError) as exc:
        raise ToolError(f"{object_id}: {exc}") from None
    ops += [m.MapRemove(object_id=object_id, key=key) for key in old if key not in new]
    if object_id == ROOT:
        reserved = sorted({op.key for op in ops if isinstance(op, m.MapSet | m.MapRemove)})
        kept = [key for key in reserved if key in RESERVED_KEYS]
        if kept:
            raise ToolError(f"root.{kept[0]} is kept for {kept[0]}: use the {kept[0]} tools")
    return ops


def apply_patch(document: Any, patch: Sequence[Mapping[str, Any]]) -> Any:
    """``document`` changed by the JSON Patch ``patch`` (RFC 6902), as a copy.

    Raises:
        ToolError: an operation does not apply (a path that is not there, a ``test`` that
            fails); the patch then changes nothing.
    """
    result = copy.deepcopy(document)
    for number, op in enumerate(patch, start=1):
        what = f"operation {number} ({op.get('op')} {op.get('path')!r})"
        try:
            result = _patched(result, op)
        except (KeyError, IndexError):
            raise ToolError(f"{what}: the path is not there") from None
        except (TypeError, ValueError) as exc:
            raise ToolError(f"{what}: {exc}") from None
    return result


def _patched(document: Any, op: Mapping[str, Any]) -> Any:
    kind, path = op.get("op"), _pointer(op.get("path"))
    if kind == "test":
        if _get(document, path) != op["value"]:
            raise ValueError("the test failed")
        return document
    if kind in ("move", "copy"):
        source = _pointer(op.get("from"))
        value = copy.deepcopy(_get(document, source))
        if kind == "move":
            document = _remove(document, source)
        return _put(document, path, value, insert=True)
    if kind == "remove":
        return _remove(document, path)
    if kind in ("add", "replace"):
        return _put(document, path, copy.deepcopy(op["value"]), insert=kind == "add")
    raise ValueError(f"unknown operation {kind!r}")


def _pointer(path: object) -> list[str]:
    if not isinstance(path, str) or (path and not path.startswith("/")):
        raise ValueError(f"{path!r} is not a JSON pointer")
    return [token.replace("~1", "/").replace("~0", "~") for token in path.split("/")[1:]]


def _index(container: Any, token: str, *, append: bool = False) -> Any:
    if isinstance(container, dict):
        return token
    if isinstance(container, list):
        if append and token == "-":
            return len(container)
        if not token.isdigit() or (token != "0" and token.startswith("0")):
            raise ValueError(f"{token!r} is not an array index")
        return int(token)
    raise ValueError(f"{token!r} is inside a value that is neither an object nor an array")


def _get(document: Any, tokens: list[str]) -> Any:
    for token in tokens:
        document = document[_index(document, token)]
    return document


def _put(document: Any, tokens: list[str], value: Any, *, insert: bool) -> Any:
    """``add`` (``insert``: a new array element, or a key set) or ``replace`` (the place
    must exist)."""
    if not tokens:
        return value
    parent = _get(document, tokens[:-1])
    key = _index(parent, tokens[-1], append=insert)
    if isinstance(parent, list) and insert:
        if key > len(parent):
            raise IndexError(key)
        parent.insert(key, value)
    else:
        if not insert:
            parent[key]  # replace: the place must be there (KeyError, IndexError)
        parent[key] = value
    return document


def _remove(document: Any, tokens: list[str]) -> Any:
    if not tokens:
        raise ValueError("the whole state cannot be removed")
    parent = _get(document, tokens[:-1])
    del parent[_index(parent, tokens[-1])]
    return document


__all__ = [
    "BUILTIN",
    "RESERVED_KEYS",
    "Tool",
    "ToolError",
    "apply_patch",
    "call_tool",
    "change_state",
    "resolve_tools",
    "room_state",
    "schema_of",
    "state_ops",
    "tool",
]
