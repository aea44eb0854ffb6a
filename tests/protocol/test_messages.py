"""The request types refuse at decoding what a store or a wire format cannot hold
(docs/protocol.md §1 Channels, §2 Frames, §8): the same rules for JSON and MessagePack
frames and for HTTP bodies, since all of them decode into these types."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import msgspec
import pytest

from roomcast.protocol import messages as m
from roomcast.protocol.codec import RequestError, codec_for, decode_json_body
from roomcast.protocol.errors import CLOSE_INVALID_PAYLOAD, BadRequest, ProtocolViolation
from roomcast.protocol.patterns import pattern_matches

GOOD_CHANNELS = ["a", "room:lunch", "room:lunch:thread-1", "x" * 200, "A.b_c-d:9", "meta:channels"]
BAD_CHANNELS = [
    "", "room:x\n", "room:x\r\n", "\nroom:x", "room:", "room:lunch:", ":x", ":", "a::b",
    "x" * 201, "room x", "room:*", "rööm",
]  # fmt: skip


@pytest.mark.parametrize("channel", GOOD_CHANNELS)
def test_channel_names_of_whole_segments_are_taken(channel: str) -> None:
    assert msgspec.convert({"channel": channel}, m.Detach).channel == channel
    assert re.fullmatch(m.CHANNEL_PATTERN, channel)


@pytest.mark.parametrize("channel", BAD_CHANNELS)
def test_channel_names_with_empty_segments_or_a_final_newline_are_refused(channel: str) -> None:
    with pytest.raises(msgspec.ValidationError, match="channel"):
        msgspec.convert({"channel": channel}, m.Detach)
    # The pattern means the whole string whichever way it is applied (msgspec searches).
    assert not re.search(m.CHANNEL_PATTERN, channel)


def test_a_capability_pattern_matches_whole_channel_names_only() -> None:
    assert pattern_matches("room:*", "room:lunch")
    assert pattern_matches("room:lunch", "room:lunch")
    assert not pattern_matches("room:lunch", "room:lunch\n")
    assert not pattern_matches("room:lunch", "room:lunch:x")
    assert not pattern_matches("room:*", "room:")
    assert not pattern_matches("room:*", "roomy:x")


CARRIED: list[Any] = [
    None, True, "text", 0, -(2**63), 2**64 - 1, 1.5, -0.0, 1e308, [], {}, [1, [2, {"a": None}]],
    {"a": {"b": [1.25, "x"]}},
]  # fmt: skip


@pytest.mark.parametrize("value", CARRIED)
def test_values_every_format_carries_are_taken(value: Any) -> None:
    m.check_value(value, "data")
    for encode, decode in (
        (msgspec.json.encode, msgspec.json.decode),
        (msgspec.msgpack.encode, msgspec.msgpack.decode),
    ):
        assert decode(encode(value)) == value


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = [value]
    return value


NOT_CARRIED: dict[str, tuple[Any, type[Exception], str]] = {
    "over 2**64 - 1": (2**64, ValueError, "64 bits"),
    "under -2**63": ([-(2**63) - 1], ValueError, "64 bits"),
    "NaN": ({"x": float("nan")}, ValueError, "not finite"),
    "infinity": (float("-inf"), ValueError, "not finite"),
    "an integer key": ({1: "one"}, TypeError, "map key"),
    "a bytes key": ({"a": {b"k": 1}}, TypeError, "map key"),
    "bytes": (b"\x00", TypeError, "bytes"),
    "an extension": ([msgspec.msgpack.Ext(1, b"x")], TypeError, "Ext"),
    "a timestamp": (datetime.now(UTC), TypeError, "datetime"),
    "65 deep": (nested(65), ValueError, "deeper than 64"),
}


@pytest.mark.parametrize(("value", "error", "words"), NOT_CARRIED.values(), ids=list(NOT_CARRIED))
def test_values_some_format_cannot_carry_are_refused(
    value: Any, error: type[Exception], words: str
) -> None:
    with pytest.raises(error, match=re.escape(words)):
        m.check_value(value, "data")


def test_nesting_up_to_the_limit_is_taken() -> None:
    m.check_value(nested(m.MAX_DEPTH), "data")


REQUESTS_WITH_VALUES: list[dict[str, Any]] = [
    {"action": "publish", "channel": "a", "data": "@"},
    {"action": "publish", "channel": "a", "data": "x", "extras": {"k": "@"}},
    {"action": "update", "channel": "a", "msg_serial": 1, "data": "@"},
    {"action": "update", "channel": "a", "msg_serial": 1, "extras": {"k": "@"}},
    {"action": "presence", "channel": "a", "op": "enter", "data": "@"},
    {"action": "signal", "channel": "a", "name": "n", "data": "@"},
    {"action": "object", "channel": "a", "op": {"type": "map.create", "entries": {"k": "@"}}},
    {
        "action": "object",
        "channel": "a",
        "op": {"type": "map.set", "object_id": "m", "key": "k", "value": "@"},
    },
    {"action": "object", "channel": "a", "op": {"type": "counter.create", "value": "@"}},
    {
        "action": "object",
        "channel": "a",
        "op": {"type": "counter.inc", "object_id": "c", "amount": "@"},
    },
]


def _with(request: dict[str, Any], value: Any) -> dict[str, Any]:
    def put(item: Any) -> Any:
        if item == "@":
            return value
        if isinstance(item, dict):
            return {k: put(v) for k, v in item.items()}
        return item

    return {k: put(v) for k, v in request.items()}


@pytest.mark.parametrize("request_", REQUESTS_WITH_VALUES)
@pytest.mark.parametrize(
    ("fmt", "value"),
    [("json", 2**64), ("json", -(2**63) - 1), ("msgpack", float("nan")), ("msgpack", b"raw")],
    ids=["int", "negative int", "nan", "bytes"],
)
def test_every_field_that_holds_client_values_is_checked(
    request_: dict[str, Any], fmt: str, value: Any
) -> None:
    codec = codec_for(fmt)
    encode = msgspec.json.encode if fmt == "json" else msgspec.msgpack.encode
    [decoded] = codec.decode(encode({**_with(request_, value), "ref": 5}))
    assert isinstance(decoded, RequestError) and decoded.ref == 5, decoded
    # The same request with a value every format carries decodes.
    [fine] = codec.decode(encode(_with(request_, 7)))
    assert not isinstance(fine, RequestError), fine


SERIALS = [
    ("attach", "from_serial"), ("history", "before"), ("history", "after"),
    ("append", "msg_serial"), ("update", "msg_serial"), ("delete", "msg_serial"),
    ("annotate", "msg_serial"), ("cancel", "msg_serial"),
]  # fmt: skip
FIELDS = {"append": {"data": "x"}, "update": {"data": "x"}}
FIELDS["annotate"] = {"kind": "reaction", "name": "+1", "op": "add"}


@pytest.mark.parametrize(("action", "field"), SERIALS)
@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_serials_are_bounded_by_what_every_store_and_client_holds(
    action: str, field: str, fmt: str
) -> None:
    codec = codec_for(fmt)
    encode = msgspec.json.encode if fmt == "json" else msgspec.msgpack.encode
    base = {"action": action, "channel": "a", **FIELDS.get(action, {}), "ref": 3}
    [largest] = codec.decode(encode({**base, field: m.MAX_SERIAL}))
    assert getattr(largest, field) == m.MAX_SERIAL
    for value in (m.MAX_SERIAL + 1, 2**63, 2**64 - 1):
        [refused] = codec.decode(encode({**base, field: value}))
        assert isinstance(refused, RequestError) and refused.ref == 3, (field, value)


def test_a_json_number_too_large_for_a_float_is_refused_with_its_ref() -> None:
    frame = b'[{"action":"ping","ref":1},{"action":"publish","channel":"a","data":1e400,"ref":2}]'
    ping, refused = codec_for("json").decode(frame)
    assert isinstance(ping, m.Ping)
    assert isinstance(refused, RequestError) and refused.ref == 2
    assert "not finite" in str(refused.error)


@pytest.mark.parametrize("ref", [2**63, -(2**63) - 1, 2**64])
def test_a_ref_out_of_range_is_not_echoed(ref: int) -> None:
    [refused] = codec_for("json").decode(msgspec.json.encode({"action": "ping", "ref": ref}))
    assert isinstance(refused, RequestError) and refused.ref is None


@pytest.mark.parametrize("fmt", ["json", "msgpack"])
def test_a_frame_too_deep_to_decode_is_a_protocol_violation(fmt: str) -> None:
    depth = 20_000
    frame = b"[" * depth + b"]" * depth if fmt == "json" else b"\x91" * depth + b"\x90"
    with pytest.raises(ProtocolViolation) as raised:
        codec_for(fmt).decode(frame)
    assert raised.value.close_code == CLOSE_INVALID_PAYLOAD


def test_an_http_body_too_deep_or_not_json_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="nests too deeply"):
        decode_json_body(b"[" * 20_000 + b"]" * 20_000)
    with pytest.raises(BadRequest, match="not valid JSON"):
        decode_json_body(b"{nope")
    assert decode_json_body(b'{"data": [1e400]}') == {"data": [float("inf")]}
