"""Live objects (docs/protocol.md §5): how one operation changes a channel's maps and counters.

Every backend applies operations with :func:`plan` in the same step that sequences them, and
every client applies the events with :func:`apply_event`, so the server's snapshot and each
client's copy agree: the state depends only on the operations, in serial order.

A new object's id is derived from the serial of the operation that creates it
(``map-17``, ``counter-18``), so it is the same wherever the event is applied.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import msgspec

from .errors import BadRequest, Conflict, NotFound, TooLarge
from .messages import (
    MAX_INT,
    MIN_INT,
    CounterCreate,
    CounterInc,
    Event,
    MapCreate,
    MapRemove,
    MapSet,
    ObjectOp,
    ObjectState,
)

ROOT = "root"
"""Every channel has a root map, there from the start."""

AGENTS_KEY = "agents"
"""``root.agents``: the room's agents. Changing it needs ``agent-admin``."""

_encode = msgspec.json.encode


def empty_root() -> ObjectState:
    return ObjectState(type="map", entries={})


def object_size(state: ObjectState) -> int:
    """Bytes the object takes in the per-channel ``max_objects_bytes`` budget (its JSON)."""
    return len(_encode(state))


def as_op(value: Any) -> ObjectOp:
    """An operation as a typed struct (events read back from a store or the wire hold a dict)."""
    if isinstance(value, MapCreate | MapSet | MapRemove | CounterCreate | CounterInc):
        return value
    op: ObjectOp = msgspec.convert(value, ObjectOp)
    return op


def reference(value: Any) -> str | None:
    """The object id when ``value`` is a reference ``{"object_id": id}``, else None."""
    if isinstance(value, dict) and len(value) == 1:
        target = value.get("object_id")
        if isinstance(target, str):
            return target
    return None


class Change(msgspec.Struct, frozen=True):
    """What one operation does: ``object_id`` becomes ``state`` (``created`` if new);
    ``size_delta`` is the change of the channel's object bytes."""

    object_id: str
    state: ObjectState
    created: bool
    size_delta: int


Lookup = Callable[[str], ObjectState | None]


def plan(
    op: ObjectOp,
    serial: int,
    lookup: Lookup,
    *,
    total_bytes: int = 0,
    max_bytes: int | None = None,
) -> Change:
    """The change ``op`` makes if it is sequenced as ``serial``, checked against the current
    objects (``lookup``). Nothing is changed here.

    Raises:
        NotFound: the op names an object (or references one) that does not exist (40400).
        Conflict: a map op on a counter or a counter op on a map (40900).
        BadRequest: a number that is not finite.
        TooLarge: the channel's objects would pass ``max_bytes`` (41300).
    """
    if isinstance(op, MapCreate):
        _check_references(op.entries.values(), lookup)
        change = _new(f"map-{serial}", ObjectState(type="map", entries=dict(op.entries)))
    elif isinstance(op, CounterCreate):
        change = _new(f"counter-{serial}", ObjectState(type="counter", value=_finite(op.value)))
    else:
        current = _existing(op.object_id, lookup)
        if isinstance(op, CounterInc):
            if current.type != "counter":
                raise Conflict(f"{op.object_id} is a map, not a counter")
            value = _finite(_number(current.value) + _finite(op.amount))
            state = ObjectState(type="counter", value=value)
        else:
            if current.type != "map":
                raise Conflict(f"{op.object_id} is a counter, not a map")
            entries = dict(_entries(current))
            if isinstance(op, MapSet):
                _check_references((op.value,), lookup)
                entries[op.key] = op.value
            else:
                entries.pop(op.key, None)
            state = ObjectState(type="map", entries=entries)
        before = object_size(current) if lookup(op.object_id) is not None else 0
        change = Change(op.object_id, state, False, object_size(state) - before)
    if max_bytes is not None and change.size_delta > 0:
        after = total_bytes + change.size_delta
        if after > max_bytes:
            raise TooLarge(
                f"the channel's live objects would take {after} bytes, over the "
                f"{max_bytes} byte limit"
            )
    return change


def apply_event(objects: dict[str, ObjectState], event: Event) -> str:
    """Apply an ``object`` event to a client's copy of a channel's objects, in place.

    Returns the id of the object it changed. The event was checked when it was sequenced,
    so this never raises for events that came from a server.
    """
    change = plan(as_op(event.op), event.serial, lambda oid: _lookup(objects, oid))
    objects[change.object_id] = change.state
    return change.object_id


def apply_op(objects: dict[str, ObjectState], op: ObjectOp, serial: int) -> str:
    """:func:`apply_event` for a bare operation and the serial it was sequenced at."""
    change = plan(op, serial, lambda oid: _lookup(objects, oid))
    objects[change.object_id] = change.state
    return change.object_id


def with_root(objects: Mapping[str, ObjectState]) -> dict[str, ObjectState]:
    """The objects, with the empty root map added if no operation has touched it yet."""
    out = dict(objects)
    out.setdefault(ROOT, empty_root())
    return out


def plain_state(objects: Mapping[str, ObjectState]) -> dict[str, Any]:
    """The objects as one plain JSON document, the form AG-UI's state takes: a map as its
    entries (a reference stays ``{"object_id": id}``), a counter as its value."""
    return {object_id: plain(state) for object_id, state in objects.items()}


def plain(state: ObjectState) -> Any:
    """One object in :func:`plain_state`'s form."""
    if state.type == "map":
        return dict(state.entries) if isinstance(state.entries, dict) else {}
    return state.value if isinstance(state.value, int | float) else 0


def touches_agents(op: ObjectOp, lookup: Lookup) -> bool:
    """Whether ``op`` changes ``root.agents`` (the key itself, or the map it references)."""
    if isinstance(op, MapSet | MapRemove):
        if op.object_id == ROOT:
            return op.key == AGENTS_KEY
        root = lookup(ROOT)
        agents = reference(_entries(root).get(AGENTS_KEY)) if root is not None else None
        return agents is not None and op.object_id == agents
    return False


def _lookup(objects: Mapping[str, ObjectState], object_id: str) -> ObjectState | None:
    found = objects.get(object_id)
    if found is None and object_id == ROOT:
        return empty_root()
    return found


def _existing(object_id: str, lookup: Lookup) -> ObjectState:
    found = lookup(object_id)
    if found is None:
        if object_id == ROOT:
            return empty_root()
        raise NotFound(f"no object {object_id}")
    return found


def _new(object_id: str, state: ObjectState) -> Change:
    return Change(object_id, state, True, object_size(state))


def _entries(state: ObjectState) -> dict[str, Any]:
    return state.entries if isinstance(state.entries, dict) else {}


def _number(value: Any) -> int | float:
    return value if isinstance(value, int | float) else 0


def _finite(value: int | float) -> int | float:
    """A counter's value, if every wire format carries it (a sum of increments may not)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequest(f"{value} is not a finite number")
    if isinstance(value, int) and not MIN_INT <= value <= MAX_INT:
        raise BadRequest(f"the counter would be {value}, beyond what every format carries")
    return value


def _check_references(values: Any, lookup: Lookup) -> None:
    for value in values:
        target = reference(value)
        if target is not None and target != ROOT and lookup(target) is None:
            raise NotFound(f"no object {target} to reference")


__all__ = [
    "AGENTS_KEY",
    "ROOT",
    "Change",
    "apply_event",
    "apply_op",
    "as_op",
    "empty_root",
    "object_size",
    "plan",
    "reference",
    "touches_agents",
    "with_root",
]
