"""Wire codecs: JSON (the default) and MessagePack, with errors mapped to docs/protocol.md §8.

A frame holds one protocol message or an array of them. Decoding never raises for a bad
*request* (it becomes a :class:`BadRequest` in the result list, and the rest of the frame
still counts); it raises :class:`ProtocolViolation` only for a frame that is not JSON at all,
or one nested too deeply for the decoder to follow (the request types refuse any value
nested beyond ``MAX_DEPTH`` long before that).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any, Literal

import msgspec

from .errors import (
    CLOSE_INVALID_PAYLOAD,
    CLOSE_UNSUPPORTED_DATA,
    BadRequest,
    ProtocolViolation,
)
from .messages import ClientRequest, Heartbeat, Ref, Reply, ServerMessage

Format = Literal["json", "msgpack"]


class RequestError(msgspec.Struct, frozen=True):
    """A request that did not validate: the reply is ``error`` 40000 with its ``ref``."""

    ref: int | None
    error: BadRequest


Decoded = ClientRequest | RequestError


def _ref_of(raw: Any) -> int | None:
    """The ``ref`` of a refused request, if it is one the reply can echo."""
    if isinstance(raw, dict):
        try:
            return msgspec.convert(raw.get("ref"), Ref | None)
        except msgspec.ValidationError:
            pass
    return None


class Codec:
    """Encode replies and decode requests for one wire format."""

    format: Format
    heartbeat: bytes
    """The ``heartbeat`` message, encoded once: idle connections get it every period."""
    # JSON decoders take str or bytes, MessagePack ones bytes; frames are checked before.
    _typed: Any
    _raw: Any
    _replies: Any

    def encode(self, message: Reply) -> bytes:
        raise NotImplementedError

    def join(self, frames: Sequence[bytes]) -> bytes:
        """Batch already-encoded messages into one frame (an array)."""
        raise NotImplementedError

    def decode(self, data: bytes | str) -> list[Decoded]:
        try:
            try:
                decoded = self._typed.decode(data)
            except msgspec.ValidationError:
                # The typed decoder can stop at a wrong type before it sees that the rest
                # is not JSON at all (``91garbage``); the raw decode below tells which.
                return self._decode_each(data)
        except msgspec.DecodeError as exc:
            raise ProtocolViolation(CLOSE_INVALID_PAYLOAD, f"frame is not {self.format}") from exc
        except RecursionError:
            raise ProtocolViolation(CLOSE_INVALID_PAYLOAD, "frame nests too deeply") from None
        return decoded if isinstance(decoded, list) else [decoded]

    def _decode_each(self, data: bytes | str) -> list[Decoded]:
        # Slow path, only for frames with an invalid request: find which ones, keep the rest.
        raw = self._raw.decode(data)
        items = raw if isinstance(raw, list) else [raw]
        out: list[Decoded] = []
        for item in items:
            try:
                out.append(msgspec.convert(item, ClientRequest))
            except msgspec.ValidationError as exc:
                out.append(RequestError(_ref_of(item), BadRequest(_describe(exc))))
        return out

    def decode_reply(self, data: bytes | str) -> list[ServerMessage]:
        """Decode a server frame (used by clients and tests)."""
        raise NotImplementedError


# The one pattern in the requests is a channel name's (a client_id's too): said in words.
_NAME_PATTERN = re.compile(r"`str` matching regex '.*' - at")
_NAME_RULE = "1 to 200 letters, digits, `_`, `.` or `-`, in segments joined by `:`"


def _describe(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if "at `$.action`" in text:
        return "unknown or missing `action`: " + text
    return _NAME_PATTERN.sub(f"a name of {_NAME_RULE} - at", text)


class JsonCodec(Codec):
    format: Format = "json"

    def __init__(self) -> None:
        self._encoder = msgspec.json.Encoder()
        self.heartbeat = self._encoder.encode(Heartbeat())
        self._typed = msgspec.json.Decoder(ClientRequest | list[ClientRequest])
        # A number too large for a float (1e400) is infinity here: the request that holds
        # it is refused (40000, with its ref), and the frame's other requests still count.
        self._raw = msgspec.json.Decoder(float_hook=float)
        self._replies = msgspec.json.Decoder(ServerMessage | list[ServerMessage])

    def encode(self, message: Reply) -> bytes:
        return self._encoder.encode(message)

    def join(self, frames: Sequence[bytes]) -> bytes:
        if len(frames) == 1:
            return frames[0]
        return b"[" + b",".join(frames) + b"]"

    def decode_reply(self, data: bytes | str) -> list[ServerMessage]:
        decoded = self._replies.decode(data)
        return decoded if isinstance(decoded, list) else [decoded]


class MsgpackCodec(Codec):
    format: Format = "msgpack"

    def __init__(self) -> None:
        self._encoder = msgspec.msgpack.Encoder()
        self.heartbeat = self._encoder.encode(Heartbeat())
        self._typed = msgspec.msgpack.Decoder(ClientRequest | list[ClientRequest])
        self._raw = msgspec.msgpack.Decoder()
        self._replies = msgspec.msgpack.Decoder(ServerMessage | list[ServerMessage])

    def encode(self, message: Reply) -> bytes:
        return self._encoder.encode(message)

    def join(self, frames: Sequence[bytes]) -> bytes:
        n = len(frames)
        if n == 1:
            return frames[0]
        if n < 16:
            header = bytes([0x90 | n])
        elif n < 0x10000:
            header = b"\xdc" + struct.pack(">H", n)
        else:
            header = b"\xdd" + struct.pack(">I", n)
        return header + b"".join(frames)

    def decode_reply(self, data: bytes | str) -> list[ServerMessage]:
        decoded = self._replies.decode(data)
        return decoded if isinstance(decoded, list) else [decoded]


def take_batch(queue: list[bytes], max_messages: int, max_bytes: int) -> list[bytes]:
    """Remove and return the first messages of ``queue`` that fit in one frame: at most
    ``max_messages`` of them and ``max_bytes`` in all (one message alone may be larger)."""
    if len(queue) <= max_messages and sum(map(len, queue)) <= max_bytes:
        batch = queue[:]
        queue.clear()
        return batch
    count, size = 0, 0
    for frame in queue:
        if count and (count >= max_messages or size + len(frame) > max_bytes):
            break
        count += 1
        size += len(frame)
    batch = queue[:count]
    del queue[:count]
    return batch


_CODECS: dict[str, Codec] = {"json": JsonCodec(), "msgpack": MsgpackCodec()}
_JSON_BODY = msgspec.json.Decoder(float_hook=float)


def decode_json_body(body: bytes) -> Any:
    """An HTTP body as plain JSON values, for a request type to validate (as a frame's
    requests are: 1e400 is infinity, which the type refuses). 40000 for a body that is not
    JSON, or nests too deeply for the decoder to follow."""
    try:
        return _JSON_BODY.decode(body)
    except msgspec.DecodeError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadRequest("the body nests too deeply") from None


def codec_for(fmt: str) -> Codec:
    """The shared codec for a ``format`` query value; unknown formats are a bad request."""
    try:
        return _CODECS[fmt]
    except KeyError:
        raise BadRequest(f"unknown format {fmt!r}: use 'json' or 'msgpack'") from None


def check_frame_kind(codec: Codec, *, is_text: bool) -> None:
    """JSON mode takes text frames only (1003 otherwise); MessagePack takes binary frames."""
    if codec.format == "json" and not is_text:
        raise ProtocolViolation(CLOSE_UNSUPPORTED_DATA, "binary frame in JSON mode")
    if codec.format == "msgpack" and is_text:
        raise ProtocolViolation(CLOSE_UNSUPPORTED_DATA, "text frame in MessagePack mode")
