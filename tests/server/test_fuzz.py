"""Hostile input over the WebSocket: random and mutated protocol frames against a live server,
in JSON and in MessagePack.

The server must never crash or answer 50000, only a frame that does not decode (not JSON, not
MessagePack, or nested too deeply to decode) may close the connection, with 1007, and no refused
request may change the store: every serial in the fuzzed channels belongs to a request that was
answered ``ok``. The values include what not every format carries (integers beyond 64 bits,
``1e400``, NaN, raw bytes, MessagePack extensions, keys that are not strings), serials beyond
2**53 - 1, values nested just within and beyond 64 levels, and frames 20,000 levels deep; some
requests are well-formed but for one such value, in the field that holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from roomcast.testing import ServerProcess

CHANNELS = ["fz:a", "fz:b", "fz:c:d"]
MSGPACK_CHANNELS = ["fz:m", "fz:n:o"]
ACTIONS = [
    "attach", "detach", "publish", "append", "update", "delete", "annotate", "cancel",
    "presence", "object", "signal", "history", "claim", "auth", "ping",
]  # fmt: skip
FIELDS = [
    "channel", "data", "id", "name", "extras", "streaming", "msg_serial", "from_serial",
    "epoch", "rewind", "before", "after", "limit", "op", "kind", "status", "key", "ttl_s",
    "token", "reason", "ref", "value", "entries", "amount", "type", "object_id",
]  # fmt: skip
# Integers at the edges of what the server takes: serials end at 2**53 - 1, `ref` at 2**63 - 1,
# values at -2**63 and 2**64 - 1 (all of these MessagePack can carry).
EDGES = [2**53 - 1, 2**53, 2**63 - 1, 2**63, 2**64 - 1, -(2**63), -(2**63) + 1]

# JSON text that Python's json module does not write, put in place of a marker string.
_RAW = re.compile(r'"@@raw:([^"@]*)@@"')
HUGE_NUMBERS = ["1e400", "-1e400", "18446744073709551616", "-9223372036854775809", "9" * 40]
DEPTHS = [63, 64, 65, 100, 20_000]  # arrays nested this deep
raw_json = st.sampled_from(HUGE_NUMBERS + [f"deep:{n}" for n in DEPTHS]).map(
    lambda text: f"@@raw:{text}@@"
)


def _raw_text(match: re.Match[str]) -> str:
    text = match.group(1)
    if text.startswith("deep:"):
        depth = int(text[5:])
        return "[" * depth + "]" * depth
    return text


def render_json(value: Any) -> str:
    return _RAW.sub(_raw_text, json.dumps(value))


def nested_values(leaves: st.SearchStrategy[Any], keys: st.SearchStrategy[Any]) -> Any:
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=10,
    )


json_values = nested_values(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.sampled_from([*EDGES, 2**64, -(2**63) - 1])
    | st.floats()  # NaN and infinities make frames that are not JSON: they must close
    | st.text(max_size=30)
    | raw_json,
    st.text(max_size=10),
)
msgpack_values = nested_values(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.sampled_from(EDGES)
    | st.floats()  # NaN and infinities: MessagePack carries them, JSON does not
    | st.text(max_size=30)
    | st.binary(max_size=8)
    | st.builds(msgspec.msgpack.Ext, st.integers(-128, 127), st.binary(max_size=12)),
    st.text(max_size=10) | st.integers(-3, 3) | st.binary(max_size=3) | st.booleans(),
)


# Well-formed requests but for the field marked "?", which takes a fuzzed value.
TEMPLATES: list[dict[str, Any]] = [
    {"action": "publish", "data": "?"},
    {"action": "publish", "data": "x", "extras": {"k": "?"}},
    {"action": "update", "msg_serial": 1, "extras": "?"},
    {"action": "append", "msg_serial": "?", "data": "x"},
    {"action": "delete", "msg_serial": "?"},
    {"action": "history", "before": "?"},
    {"action": "history", "after": "?", "limit": 5},
    {"action": "attach", "from_serial": "?"},
    {"action": "presence", "op": "update", "data": "?"},
    {"action": "signal", "name": "n", "data": "?"},
    {"action": "object", "op": {"type": "map.set", "object_id": "root", "key": "k", "value": "?"}},
    {"action": "object", "op": {"type": "counter.create", "value": "?"}},
    {"action": "ping", "ref": "?"},
]


def _fill(template: Any, value: Any) -> Any:
    if template == "?":
        return value
    if isinstance(template, dict):
        return {k: _fill(v, value) for k, v in template.items()}
    return template


def frames_of(values: st.SearchStrategy[Any], channels: list[str]) -> st.SearchStrategy[Any]:
    """Requests to ``channels`` and others (one, or an array of them), and other values."""
    field_values = values | st.sampled_from(channels) | st.integers(-3, 30)
    requests = st.builds(
        lambda action, fields: {"action": action, **fields},
        st.sampled_from(ACTIONS) | st.text(max_size=12),
        st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), field_values, max_size=7),
    ) | st.builds(
        lambda template, value, channel: {**_fill(template, value), "channel": channel},
        st.sampled_from(TEMPLATES),
        values,
        st.sampled_from(channels),
    )
    return st.one_of(requests, st.lists(requests, min_size=1, max_size=5), values)


@dataclass(frozen=True)
class Raw:
    """A frame sent as it is: mostly not JSON or MessagePack at all."""

    frame: str | bytes


json_frames = frames_of(json_values, CHANNELS) | st.text(max_size=40).map(Raw)
msgpack_frames = frames_of(msgpack_values, MSGPACK_CHANNELS) | st.binary(max_size=40).map(Raw)
_json_decoder = msgspec.json.Decoder(float_hook=float)  # 1e400 is JSON: a number, infinity


class Wire:
    """How frames of one format are written, read, and known to decode."""

    def __init__(self, fmt: str) -> None:
        self.fmt = fmt
        self.write: Callable[[Any], str | bytes]
        self.read: Callable[[str | bytes], Any]
        if fmt == "json":
            self.write, self.read = render_json, _json_decoder.decode
        else:
            self.write, self.read = msgspec.msgpack.encode, msgspec.msgpack.decode

    def decodes(self, frame: str | bytes) -> bool:
        """Whether the server can decode the frame at all (strict JSON: no NaN, no lone
        surrogates; nesting it can follow)."""
        try:
            self.read(frame)
        except (msgspec.DecodeError, RecursionError):
            return False
        return True


class Fuzzer:
    def __init__(self, url: str, fmt: str, channels: list[str]) -> None:
        self.url = f"{url}?client_id=fuzzer-{fmt}&format={fmt}"
        self.wire = Wire(fmt)
        self.channels = channels
        self.ws: ClientConnection | None = None
        self.acked: dict[str, set[int]] = {c: set() for c in channels}
        self.frames = 0
        self._sockets = contextlib.ExitStack()
        self.next_ref = 1_000_000
        self.probe_ref = -1_000_000_000_000
        self.pending: dict[Any, Any] = {}

    def socket(self) -> ClientConnection:
        if self.ws is None:
            # No keepalive pings: the client's ping thread draws its payload from the global
            # `random`, and Hypothesis fails a test whose strategies see that state move.
            self.ws = self._sockets.enter_context(
                connect(self.url, max_size=None, ping_interval=None)
            )
            self.read_until(lambda m: m["action"] == "connected")
        return self.ws

    def read_until(self, done: Callable[[dict[str, Any]], bool]) -> None:
        assert self.ws is not None
        while True:
            decoded = self.wire.read(self.ws.recv(timeout=10))
            for message in decoded if isinstance(decoded, list) else [decoded]:
                self.check(message)
                if done(message):
                    return

    def check(self, message: dict[str, Any]) -> None:
        if message["action"] == "error":
            assert message["code"] < 50000, message
        if message["action"] == "ok" and isinstance(message.get("serial"), int):
            # Only refs the fuzzer sent to a fuzz channel reach here with a serial.
            channel = self.pending.get(message.get("ref"))
            if channel in self.acked:
                self.acked[channel].add(message["serial"])

    def send(self, frame: Any) -> None:
        """Send one frame, then make sure the connection answers (or closed as it should)."""
        ws = self.socket()
        self.frames += 1
        if isinstance(frame, Raw):
            self.pending, data = {}, frame.frame
        else:
            frame = self._tag(frame)
            self.pending, data = _refs_to_channels(frame), self.wire.write(frame)
        ws.send(data)
        # The probe's ref is one no fuzzed request carries (fuzzed refs include small ones
        # like -1): a fuzzed ping's pong must not pass for the answer to this frame.
        self.probe_ref -= 1
        probe = self.probe_ref
        try:
            ws.send(self.wire.write({"action": "ping", "ref": probe}))
            self.read_until(lambda m: m["action"] == "pong" and m.get("ref") == probe)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code == 1007, exc
            assert not self.wire.decodes(data)
            self.ws = None

    def _tag(self, frame: Any) -> Any:
        """Give each request to a fuzzed channel a unique ``ref``, so that every ``ok`` with
        a serial can be traced to its channel (other requests keep their fuzzed refs)."""
        items = frame if isinstance(frame, list) else [frame]
        tagged = []
        for item in items:
            if isinstance(item, dict) and item.get("channel") in self.channels:
                self.next_ref += 1
                item = {**item, "ref": self.next_ref}
            tagged.append(item)
        return tagged if isinstance(frame, list) else tagged[0]

    def attached_serial(self, channel: str, ref: int) -> int:
        ws = self.socket()
        ws.send(self.wire.write({"action": "attach", "channel": channel, "ref": ref}))
        found: dict[str, int] = {}

        def done(message: dict[str, Any]) -> bool:
            if message["action"] == "attached" and message["channel"] == channel:
                found["serial"] = message["serial"]
            return "serial" in found

        self.read_until(done)
        return found["serial"]

    def close(self) -> None:
        self._sockets.close()


def _refs_to_channels(frame: Any) -> dict[Any, Any]:
    items = frame if isinstance(frame, list) else [frame]
    out: dict[Any, Any] = {}
    for item in items:
        if isinstance(item, dict) and "ref" in item and isinstance(item.get("channel"), str):
            try:
                out[item["ref"]] = item["channel"]
            except TypeError:  # an unhashable ref; the server refuses it anyway
                pass
    return out


@pytest.fixture(scope="module")
def fuzz_server(test_env: dict[str, str]) -> Iterator[ServerProcess]:
    with ServerProcess(env=test_env) as proc:
        yield proc


@pytest.fixture(scope="module")
def fuzzers(fuzz_server: ServerProcess) -> Iterator[dict[str, Fuzzer]]:
    out = {
        "json": Fuzzer(fuzz_server.ws_url, "json", CHANNELS),
        "msgpack": Fuzzer(fuzz_server.ws_url, "msgpack", MSGPACK_CHANNELS),
    }
    yield out
    for fuzzer in out.values():
        fuzzer.close()


# CI sends about 6,000 frames of each format (at least 3,600); a local run, half of that.
EXAMPLES = 600 if os.environ.get("CI") else 300
MIN_FRAMES = 6
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ_SETTINGS
@given(batch=st.lists(json_frames, min_size=MIN_FRAMES, max_size=14))
def test_random_and_mutated_json_frames_never_hurt_the_server(
    fuzzers: dict[str, Fuzzer], batch: list[Any]
) -> None:
    for frame in batch:
        fuzzers["json"].send(frame)


@FUZZ_SETTINGS
@given(batch=st.lists(msgpack_frames, min_size=MIN_FRAMES, max_size=14))
def test_random_and_mutated_msgpack_frames_never_hurt_the_server(
    fuzzers: dict[str, Fuzzer], batch: list[Any]
) -> None:
    for frame in batch:
        fuzzers["msgpack"].send(frame)


def test_the_fuzzed_server_is_healthy_and_stored_only_what_it_acknowledged(
    fuzz_server: ServerProcess, fuzzers: dict[str, Fuzzer]
) -> None:
    with urllib.request.urlopen(fuzz_server.url + "/readyz", timeout=5) as response:
        assert response.status == 200
    for fuzzer in fuzzers.values():
        assert fuzzer.frames >= EXAMPLES * MIN_FRAMES  # the fuzzing above ran first
        for ref, channel in enumerate(fuzzer.channels, start=1000):
            serial = fuzzer.attached_serial(channel, ref)
            # Every serial of the channel was answered `ok` to one of the fuzzer's requests.
            assert set(range(1, serial + 1)) <= fuzzer.acked[channel], channel
    assert "Traceback" not in fuzz_server.output()
