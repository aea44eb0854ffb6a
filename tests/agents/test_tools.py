"""Tools: the built-in set, your own functions, and clear errors for bad entries."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomcast.agents.tools import BUILTIN, ToolError, resolve_tools, schema_of, tool


@pytest.fixture
def user_module(tmp_path: Path) -> Iterator[str]:
    (tmp_path / "my_room_tools.py").write_text(
        "from roomcast.agents import tool\n"
        "@tool(description='Add two numbers.')\n"
        "def add(a: int, b: int = 1) -> int:\n"
        "    return a + b\n"
        "async def shout(text: str) -> str:\n"
        "    '''Say it loudly.'''\n"
        "    return text.upper()\n"
    )
    sys.path.insert(0, str(tmp_path))
    yield "my_room_tools"
    sys.path.remove(str(tmp_path))
    sys.modules.pop("my_room_tools", None)


def test_builtin_stands_for_every_builtin_tool() -> None:
    assert set(resolve_tools(("builtin",))) == set(BUILTIN) == {
        "create_poll", "vote", "close_poll", "add_to_board", "set_shared", "get_shared",
        "search_history",
    }  # fmt: skip
    assert set(resolve_tools(("vote",))) == {"vote"}
    assert resolve_tools(()) == {}


def test_schema_from_type_hints() -> None:
    @tool
    def weather(city: str, days: int = 1) -> str:
        """The weather."""
        return city

    assert schema_of(weather) == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer", "default": 1}},
        "required": ["city"],
    }


async def test_user_tools_from_a_module_and_a_function(user_module: str) -> None:
    marked = resolve_tools((user_module,))
    assert set(marked) == {"add"}
    assert marked["add"].spec.description == "Add two numbers."
    assert await marked["add"].run(None, {"a": 2}) == "3"  # type: ignore[arg-type]
    one = resolve_tools((f"{user_module}:shout",))
    assert one["shout"].spec.description == "Say it loudly."
    assert await one["shout"].run(None, {"text": "hi"}) == "HI"  # type: ignore[arg-type]
    with pytest.raises(ToolError, match="bad arguments for shout"):
        await one["shout"].run(None, {"nope": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("teleport", "unknown tool 'teleport'"),
        ("no_such_module_here:f", "cannot be imported"),
        ("json:no_such_function", "has no function"),
        ("json", "no function marked with @tool"),
    ],
)
def test_bad_tool_entries_are_refused_clearly(entry: str, says: str) -> None:
    with pytest.raises(ToolError, match=says):
        resolve_tools((entry,))
