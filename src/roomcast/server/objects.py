"""The live-object routes of docs/protocol.md §7: read a channel's objects, apply an operation.

Thin adapters over :meth:`Node.objects` and :meth:`Node.object_op`; the rules (§5) live in
``protocol/objects.py`` and the node.
"""

from __future__ import annotations

import msgspec

from roomcast.protocol.http import ChannelPath, ObjectOpResult
from roomcast.protocol.messages import ObjectRequest, ObjectsSnapshot

from .api import Api, Call, Returns
from .rest import single_body_limit

api = Api()


@api.operation(
    "GET",
    "/v1/channels/{channel}/objects",
    summary="Read the channel's live objects (maps and counters) as of its latest serial",
    description=(
        "`{serial, objects: {object_id: {type: map, entries} | {type: counter, value}}}`: "
        "the state after event `serial`. The root map (`root`) is always there. Needs "
        "`object-subscribe`."
    ),
    tag="objects",
    path_params=ChannelPath,
    returns=(Returns("200", "The objects as of `serial`.", (ObjectsSnapshot,)),),
)
async def read_objects(call: Call) -> msgspec.Struct:
    return await call.node.objects(call.principal, call.where.channel)


@api.operation(
    "POST",
    "/v1/channels/{channel}/objects",
    summary="Apply one live-object operation (map.create, map.set, map.remove, ...)",
    description=(
        "The body is an `object` request without `action` and `channel`: `{op: {type: "
        "map.create, entries} | {type: map.set, object_id, key, value} | {type: map.remove, "
        "object_id, key} | {type: counter.create, value} | {type: counter.inc, object_id, "
        "amount}}`. Needs `object-publish` (and `agent-admin` to change `root.agents`). An "
        "unknown object is 40400, a map op on a counter (or the reverse) 40900, a channel "
        "whose objects would pass `max_objects_bytes` 41300."
    ),
    tag="objects",
    path_params=ChannelPath,
    body=ObjectRequest,
    returns=(
        Returns(
            "200", "The operation's `serial`, and `object_id` for a create.", (ObjectOpResult,)
        ),
    ),
)
async def apply_object_op(call: Call) -> msgspec.Struct:
    node = call.node
    raw = await call.json(limit=single_body_limit(node.settings))
    req = call.body_as(raw, ObjectRequest, channel=call.where.channel)
    ok = await node.object_op(call.principal, req.channel, req.op, what="the operation")
    assert isinstance(ok.serial, int), "an object operation always takes a serial"
    return ObjectOpResult(serial=ok.serial, object_id=ok.object_id)
