"""docs/protocol.md §2 and §8: decoding requests, mapping bad input to 40000, encoding replies."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from roomcast.protocol import messages as m
from roomcast.protocol.codec import JsonCodec, MsgpackCodec, RequestError, check_frame_kind
from roomcast.protocol.errors import ProtocolViolation

json_codec = JsonCodec()


def test_one_request_and_a_batch_decode_to_types() -> None:
    [one] = json_codec.decode(b'{"action":"publish","channel":"room:a","data":null,"ref":1}')
    assert one == m.Publish(ref=1, channel="room:a", data=None)
    batch = json_codec.decode(b'[{"action":"ping"},{"action":"detach","channel":"a"}]')
    assert batch == [m.Ping(), m.Detach(channel="a")]


@pytest.mark.parametrize("frame", [b"{nope", b"91garbage", b'[{"action":"ping"}] x', b"NaN"])
def test_a_frame_that_is_not_json_is_a_protocol_violation_with_1007(frame: bytes) -> None:
    with pytest.raises(ProtocolViolation) as caught:
        json_codec.decode(frame)
    assert caught.value.close_code == 1007


def test_a_json_scalar_is_a_bad_request_not_a_close() -> None:
    [decoded] = json_codec.decode(b"91")
    assert isinstance(decoded, RequestError) and decoded.error.code == 40000


@pytest.mark.parametrize(
    "frame",
    [
        b'{"action":"fly","ref":7}',
        b'{"ref":7}',
        b'{"action":"publish","channel":"room:a","ref":7}',
        b'{"action":"publish","channel":"room a","data":1,"ref":7}',
        b'{"action":"publish","channel":"' + b"x" * 201 + b'","data":1,"ref":7}',
        b'{"action":"publish","channel":"a","data":1,"streaming":true,"ref":7}',
        b'{"action":"history","channel":"a","limit":0,"ref":7}',
        b'{"action":"history","channel":"a","before":2,"after":1,"ref":7}',
        b'{"action":"update","channel":"a","msg_serial":1,"ref":7}',
        b'{"action":"update","channel":"a","msg_serial":1,"status":"done","ref":7}',
        b'{"action":"attach","channel":"a","from_serial":-1,"ref":7}',
        b'{"action":"presence","channel":"a","op":"wave","ref":7}',
    ],
)
def test_invalid_requests_become_400_errors_that_keep_their_ref(frame: bytes) -> None:
    [decoded] = json_codec.decode(frame)
    assert isinstance(decoded, RequestError)
    assert decoded.ref == 7
    assert decoded.error.code == 40000


@pytest.mark.parametrize("codec", [json_codec, MsgpackCodec()])
@pytest.mark.parametrize("name", ["room lunch", "", "room::a", "x" * 201, "room:a\n"])
def test_a_bad_channel_name_is_explained_in_words_not_as_a_regex(
    codec: JsonCodec | MsgpackCodec, name: str
) -> None:
    request = {"action": "attach", "channel": name, "ref": 7}
    frame = msgspec.json.encode(request) if codec is json_codec else msgspec.msgpack.encode(request)
    [decoded] = codec.decode(frame)
    assert isinstance(decoded, RequestError) and decoded.error.code == 40000
    assert decoded.error.message == (
        "Expected a name of 1 to 200 letters, digits, `_`, `.` or `-`, in segments joined "
        "by `:` - at `$.channel`"
    )


def test_one_bad_request_in_a_batch_leaves_the_others() -> None:
    decoded = json_codec.decode(
        b'[{"action":"ping","ref":1},{"action":"x","ref":2},{"action":"ping"}]'
    )
    assert decoded[0] == m.Ping(ref=1)
    assert isinstance(decoded[1], RequestError) and decoded[1].ref == 2
    assert decoded[2] == m.Ping()


def test_frame_kind_must_match_the_format() -> None:
    with pytest.raises(ProtocolViolation) as caught:
        check_frame_kind(json_codec, is_text=False)
    assert caught.value.close_code == 1003
    check_frame_kind(json_codec, is_text=True)
    check_frame_kind(MsgpackCodec(), is_text=False)


def test_replies_leave_out_unset_fields() -> None:
    assert json_codec.encode(m.Ok(serial=3)) == b'{"action":"ok","serial":3}'
    assert json_codec.encode(m.Ok(ref=m.ref_of(4))) == b'{"action":"ok","ref":4}'
    event = m.Event(channel="a", serial=1, type="create", client_id=None, timestamp=5, data=None)
    assert msgspec.json.decode(json_codec.encode(event)) == {
        "action": "event",
        "channel": "a",
        "serial": 1,
        "type": "create",
        "client_id": None,
        "timestamp": 5,
        "data": None,
    }


@pytest.mark.parametrize("codec", [JsonCodec(), MsgpackCodec()])
@pytest.mark.parametrize("count", [1, 2, 15, 16, 70_000])
def test_join_makes_an_array_the_decoder_reads_back(
    codec: JsonCodec | MsgpackCodec, count: int
) -> None:
    frames = [codec.encode(m.Pong(ref=k)) for k in range(count)]
    decoded = codec.decode_reply(codec.join(frames))
    assert decoded == [m.Pong(ref=k) for k in range(count)]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(data=json_values, ref=st.integers(0, 2**31), name=st.text(min_size=1, max_size=200))
def test_publish_round_trips_in_both_formats(data: object, ref: int, name: str) -> None:
    request = m.Publish(ref=ref, channel="room:a", data=data, name=name)
    for codec in (JsonCodec(), MsgpackCodec()):
        wire = (
            msgspec.json.encode(request)
            if codec.format == "json"
            else msgspec.msgpack.encode(request)
        )
        assert codec.decode(wire) == [request]
