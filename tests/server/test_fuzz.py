"""Hostile input over the WebSocket: random and mutated protocol frames against a live server.

The server must never crash or answer 50000, every frame that is not JSON must close the
connection with 1007 (a binary one with 1003), and no refused request may change the store:
every serial in the fuzzed channels belongs to a request that was answered ``ok``.
"""

from __future__ import annotations

import contextlib
import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from roomcast.testing import ServerProcess

CHANNELS = ["fz:a", "fz:b", "fz:c:d"]
ACTIONS = [
    "attach", "detach", "publish", "append", "update", "delete", "annotate", "cancel",
    "presence", "object", "signal", "history", "claim", "auth", "ping",
]  # fmt: skip

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()  # NaN and infinities make frames that are not JSON: they must close
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
field_values = json_values | st.sampled_from(CHANNELS) | st.integers(-3, 30)
FIELDS = [
    "channel", "data", "id", "name", "extras", "streaming", "msg_serial", "from_serial",
    "epoch", "rewind", "before", "after", "limit", "op", "kind", "status", "key", "ttl_s",
    "token", "reason", "ref",
]  # fmt: skip

requests = st.builds(
    lambda action, fields: {"action": action, **fields},
    st.sampled_from(ACTIONS) | st.text(max_size=12),
    st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), field_values, max_size=7),
)
frames = st.one_of(
    requests.map(json.dumps),
    st.lists(requests, min_size=1, max_size=5).map(json.dumps),
    json_values.map(json.dumps),
    st.text(max_size=40),  # mostly not JSON at all
)


class Fuzzer:
    def __init__(self, url: str) -> None:
        self.url = url
        self.ws: ClientConnection | None = None
        self.acked: dict[str, set[int]] = {c: set() for c in CHANNELS}
        self.frames = 0
        self._sockets = contextlib.ExitStack()
        self.next_ref = 1_000_000
        self.probe_ref = -1_000_000_000_000
        self.pending: dict[Any, Any] = {}

    def socket(self) -> ClientConnection:
        if self.ws is None:
            self.ws = self._sockets.enter_context(
                connect(self.url + "?client_id=fuzzer", max_size=None)
            )
            self._read_until(lambda m: m["action"] == "connected")
        return self.ws

    def _read_until(self, done: Any) -> None:
        assert self.ws is not None
        while True:
            raw = self.ws.recv(timeout=10)
            decoded = json.loads(raw)
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

    def send(self, frame: str) -> None:
        """Send one frame, then make sure the connection answers (or closed as it should)."""
        ws = self.socket()
        self.frames += 1
        frame = self._tag(frame)
        self.pending = _refs_to_channels(frame)
        ws.send(frame)
        # The probe's ref is one no fuzzed request carries (fuzzed refs include small ones
        # like -1): a fuzzed ping's pong must not pass for the answer to this frame.
        self.probe_ref -= 1
        probe = self.probe_ref
        try:
            ws.send(json.dumps({"action": "ping", "ref": probe}))
            self._read_until(lambda m: m["action"] == "pong" and m.get("ref") == probe)
        except ConnectionClosed as exc:
            assert exc.rcvd is not None and exc.rcvd.code in (1007, 1003), exc
            assert not _is_json(frame)
            self.ws = None

    def _tag(self, frame: str) -> str:
        """Give each request to a fuzzed channel a unique ``ref``, so that every ``ok`` with
        a serial can be traced to its channel (other requests keep their fuzzed refs)."""
        try:
            decoded = json.loads(frame)
        except ValueError:
            return frame
        items = decoded if isinstance(decoded, list) else [decoded]
        tagged = False
        for item in items:
            if isinstance(item, dict) and item.get("channel") in CHANNELS:
                self.next_ref += 1
                item["ref"] = self.next_ref
                tagged = True
        return json.dumps(decoded) if tagged else frame

    def close(self) -> None:
        self._sockets.close()


def _is_json(frame: str) -> bool:
    """JSON as the server reads it (strict: no ``NaN``/``Infinity``, no lone surrogates)."""
    try:
        msgspec.json.decode(frame)
    except msgspec.DecodeError:
        return False
    return True


def _refs_to_channels(frame: str) -> dict[Any, Any]:
    try:
        decoded = json.loads(frame)
    except ValueError:
        return {}
    items = decoded if isinstance(decoded, list) else [decoded]
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
def fuzzer(fuzz_server: ServerProcess) -> Iterator[Fuzzer]:
    fuzzer = Fuzzer(fuzz_server.ws_url)
    yield fuzzer
    fuzzer.close()


# CI sends at least 10,000 frames; a local run, a quarter of that.
EXAMPLES = 1200 if os.environ.get("CI") else 300
MIN_FRAMES = 6


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(frames, min_size=MIN_FRAMES, max_size=14))
def test_random_and_mutated_frames_never_hurt_the_server(fuzzer: Fuzzer, batch: list[str]) -> None:
    for frame in batch:
        fuzzer.send(frame)


def test_the_fuzzed_server_is_healthy_and_stored_only_what_it_acknowledged(
    fuzz_server: ServerProcess, fuzzer: Fuzzer
) -> None:
    assert fuzzer.frames >= EXAMPLES * MIN_FRAMES  # the fuzzing above ran first
    with urllib.request.urlopen(fuzz_server.url + "/readyz", timeout=5) as response:
        assert response.status == 200
    ws = fuzzer.socket()
    for ref, channel in enumerate(CHANNELS, start=1000):
        ws.send(json.dumps({"action": "attach", "channel": channel, "ref": ref}))
        serial = -1
        while serial < 0:
            decoded = json.loads(ws.recv(timeout=10))
            for message in decoded if isinstance(decoded, list) else [decoded]:
                if message["action"] == "attached" and message["channel"] == channel:
                    serial = message["serial"]
        # Every serial of the channel was answered `ok` to one of the fuzzer's requests.
        assert set(range(1, serial + 1)) <= fuzzer.acked[channel], channel
    assert "Traceback" not in fuzz_server.output()
