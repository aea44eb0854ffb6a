"""Live objects (docs/protocol.md §5): the rules every store and client apply, without I/O."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol import objects as live
from roomcast.protocol.errors import BadRequest, Conflict, NotFound, RoomcastError, TooLarge
from roomcast.protocol.messages import (
    CounterCreate,
    CounterInc,
    Event,
    MapCreate,
    MapRemove,
    MapSet,
    ObjectOp,
    ObjectState,
)

Objects = dict[str, ObjectState]


def sequence(ops: list[ObjectOp]) -> tuple[list[Event], list[Objects]]:
    """What a server does: each op that applies becomes an event with the next serial.
    Returns the events and the state after each serial (index 0: before any)."""
    objects: Objects = {}
    states: list[Objects] = [{}]
    events: list[Event] = []
    for op in ops:
        serial = len(events) + 1
        try:
            change = live.plan(op, serial, objects.get)
        except RoomcastError:
            continue  # refused: takes no serial, changes nothing
        objects[change.object_id] = change.state
        events.append(
            Event(
                channel="room:x",
                serial=serial,
                type="object",
                client_id="alice",
                timestamp=0,
                op=op,
                object_id=change.object_id if change.created else msgspec.UNSET,
            )
        )
        states.append(dict(objects))
    return events, states


def over_the_wire(event: Event) -> Event:
    """The event as a client decodes it (its op becomes a plain dict)."""
    return msgspec.json.decode(msgspec.json.encode(event), type=Event)


def test_creates_get_ids_from_their_serial() -> None:
    events, states = sequence(
        [MapCreate(entries={"a": 1}), CounterCreate(value=2), CounterInc(object_id="counter-2")]
    )
    assert [e.object_id for e in events] == ["map-1", "counter-2", msgspec.UNSET]
    assert states[-1]["counter-2"] == ObjectState(type="counter", value=3)


def test_root_exists_before_any_op() -> None:
    objects: Objects = {}
    assert live.apply_op(objects, MapSet(object_id="root", key="k", value=1), 1) == "root"
    assert objects["root"].entries == {"k": 1}
    assert live.with_root({})["root"] == live.empty_root()


@pytest.mark.parametrize(
    ("op", "error"),
    [
        (MapSet(object_id="map-9", key="k", value=1), NotFound),
        (MapRemove(object_id="counter-9", key="k"), NotFound),
        (CounterInc(object_id="root", amount=1), Conflict),
        (MapSet(object_id="root", key="k", value={"object_id": "nope"}), NotFound),
        (MapCreate(entries={"k": {"object_id": "nope"}}), NotFound),
    ],
)
def test_refused_ops(op: ObjectOp, error: type[Exception]) -> None:
    with pytest.raises(error):
        live.plan(op, 1, {}.get)


def test_a_counter_that_would_pass_the_largest_float_is_refused() -> None:
    objects: Objects = {}
    live.apply_op(objects, CounterCreate(value=1.5e308), 1)
    with pytest.raises(BadRequest, match="not a finite number"):
        live.plan(CounterInc(object_id="counter-1", amount=1.5e308), 2, objects.get)


def test_a_counter_that_would_pass_64_bits_is_refused() -> None:
    objects: Objects = {}
    live.apply_op(objects, CounterCreate(value=2**63), 1)
    inc = CounterInc(object_id="counter-1", amount=2**63)
    with pytest.raises(BadRequest, match="beyond what every format carries"):
        live.plan(inc, 2, objects.get)


def test_a_map_op_on_a_counter_is_a_conflict() -> None:
    objects: Objects = {}
    live.apply_op(objects, CounterCreate(value=0), 1)
    with pytest.raises(Conflict, match="counter-1 is a counter"):
        live.plan(MapSet(object_id="counter-1", key="k", value=1), 2, objects.get)


def test_size_cap_counts_growth_only() -> None:
    objects: Objects = {}
    big = MapSet(object_id="root", key="k", value="x" * 100)
    with pytest.raises(TooLarge, match="over the 50 byte limit"):
        live.plan(big, 1, objects.get, total_bytes=0, max_bytes=50)
    change = live.plan(big, 1, objects.get, total_bytes=0, max_bytes=500)
    objects["root"] = change.state
    shrink = live.plan(MapRemove(object_id="root", key="k"), 2, objects.get, total_bytes=900)
    assert shrink.size_delta < 0  # allowed even over the cap: it frees room


def test_touches_agents() -> None:
    objects: Objects = {}
    live.apply_op(objects, MapCreate(entries={}), 1)
    live.apply_op(objects, MapSet(object_id="root", key="agents", value={"object_id": "map-1"}), 2)
    assert live.touches_agents(MapSet(object_id="root", key="agents", value=1), objects.get)
    assert live.touches_agents(MapSet(object_id="map-1", key="helper", value={}), objects.get)
    assert live.touches_agents(MapRemove(object_id="map-1", key="helper"), objects.get)
    assert not live.touches_agents(MapSet(object_id="root", key="polls", value=1), objects.get)
    assert not live.touches_agents(CounterCreate(value=1), objects.get)


# ----------------------------------------------------------------------------- property

_ids = st.one_of(
    st.just("root"),
    st.builds(lambda n: f"map-{n}", st.integers(1, 30)),
    st.builds(lambda n: f"counter-{n}", st.integers(1, 30)),
)
_keys = st.sampled_from(["a", "b", "c", "votes", "agents"])
_values: st.SearchStrategy[Any] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 5),
    st.text(max_size=5),
    st.builds(lambda oid: {"object_id": oid}, _ids),
    st.lists(st.integers(0, 3), max_size=3),
)
_ops: st.SearchStrategy[ObjectOp] = st.one_of(
    st.builds(MapCreate, entries=st.dictionaries(_keys, _values, max_size=3)),
    st.builds(MapSet, object_id=_ids, key=_keys, value=_values),
    st.builds(MapRemove, object_id=_ids, key=_keys),
    st.builds(CounterCreate, value=st.integers(-10, 10)),
    st.builds(CounterInc, object_id=_ids, amount=st.one_of(st.integers(-3, 3), st.floats(-2, 2))),
)


@given(st.lists(_ops, max_size=30), st.data())
def test_replaying_from_any_snapshot_reaches_the_same_state(
    ops: list[ObjectOp], data: st.DataObject
) -> None:
    events, states = sequence(ops)
    final = states[-1]
    start = data.draw(st.integers(0, len(events)), label="snapshot serial")
    copy = dict(states[start])
    for event in events[start:]:
        live.apply_event(copy, over_the_wire(event))
    assert copy == final
    assert live.with_root(copy) == live.with_root(final)
