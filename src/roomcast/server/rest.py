"""The REST routes of docs/protocol.md §7: thin adapters over the Node.

Bodies are the WebSocket requests without ``action``, ``ref`` and the fields the URL
carries, so both transports share one set of rules (:mod:`roomcast.server.api`). There is
no per-connection rate limit over HTTP: ``publish_rate`` limits WebSocket connections.
"""

from __future__ import annotations

import msgspec

from roomcast.protocol.errors import BadRequest, Unauthorized
from roomcast.protocol.http import (
    MAX_BATCH,
    ChangeResult,
    ChannelPage,
    ChannelPath,
    ChannelQuery,
    ErrorBody,
    MessagePage,
    MessagePath,
    PresencePage,
    PublishBatchResult,
    PublishResult,
    TokenRequest,
    TokenResult,
)
from roomcast.protocol.messages import (
    Annotate,
    Append,
    Cancel,
    Delete,
    History,
    Ok,
    Publish,
    Update,
)
from roomcast.settings import Settings

from .api import Api, Call, Param, Returns
from .auth import bearer

api = Api()

_CHANGED = Returns(
    "200",
    "The event's `serial`, or `{}` when the request changed nothing (a no-op).",
    (ChangeResult,),
)


def single_body_limit(settings: Settings) -> int:
    """The largest body of a one-message request; as on the WebSocket, a message up to
    twice the limit is read and answered 41300."""
    return 2 * settings.max_message_bytes + 64 * 1024


def batch_body_limit(settings: Settings) -> int:
    """The largest body of a publish, which may hold a list of messages."""
    return 64 * settings.max_message_bytes


@api.operation(
    "POST",
    "/v1/channels/{channel}/messages",
    summary="Publish a message, or a list of messages atomically",
    description=(
        "The body is a `publish` request without `action`, `channel` and `ref`, or a list "
        f"of 1 to {MAX_BATCH} of them. A list is validated whole (types, sizes, "
        "authorization) before any message is stored, then stored all or nothing; the "
        "answer is then `{msg_serials}`. A repeated `id` within the dedup window returns "
        "the first message's serial and stores nothing, as over the WebSocket."
    ),
    tag="messages",
    path_params=ChannelPath,
    body=Publish,
    body_many=True,
    returns=(
        Returns(
            "200",
            "`{msg_serial}` for one message, `{msg_serials}` for a list.",
            (PublishResult, PublishBatchResult),
        ),
    ),
)
async def publish_messages(call: Call) -> msgspec.Struct:
    channel = call.where.channel
    node = call.node
    body = await call.json(limit=batch_body_limit(node.settings))
    if isinstance(body, list):
        if len(body) > MAX_BATCH:  # before decoding a thousand items for nothing
            raise BadRequest(f"a batch holds at most {MAX_BATCH} messages, not {len(body)}")
        requests = [
            call.body_as(item, Publish, index=index, channel=channel)
            for index, item in enumerate(body)
        ]
        return PublishBatchResult(
            msg_serials=await node.publish_batch(call.principal, channel, requests)
        )
    req = call.body_as(body, Publish, channel=channel)
    return PublishResult(msg_serial=serial_of(await node.publish(call.principal, req)))


@api.operation(
    "POST",
    "/v1/tokens",
    summary="Issue a token signed by the API key in the Authorization header",
    description=(
        "`Authorization: Bearer NAME:SECRET`. The token is an HS256 JWT (header `kid` = the "
        "key name; claims `client_id`, `exp`, `capability`). `capability` defaults to the "
        "key's own and may not be wider (40300); `ttl_s` defaults to 3600, at most 86400."
    ),
    tag="tokens",
    authenticated=False,
    body=TokenRequest,
    params=(Param("Authorization", "header", "`Bearer NAME:SECRET`: the API key that signs."),),
    returns=(
        Returns("200", "The token; `expires_at` in ms since the epoch.", (TokenResult,)),
        Returns("400", "A malformed body (40000).", (ErrorBody,)),
        Returns("401", "No API key, or not a valid one (40100).", (ErrorBody,)),
        Returns("403", "A capability wider than the key's (40300).", (ErrorBody,)),
    ),
)
async def create_token(call: Call) -> msgspec.Struct:
    credential = bearer(call.request)
    if credential is None or ":" not in credential:
        raise Unauthorized("POST /v1/tokens needs `Authorization: Bearer NAME:SECRET`")
    raw = await call.json(limit=single_body_limit(call.node.settings))
    req = call.body_as(raw, TokenRequest)
    capability = None if isinstance(req.capability, msgspec.UnsetType) else req.capability
    issued = call.node.identities.issue(credential, req.client_id, capability, req.ttl_s)
    return TokenResult(token=issued.token, expires_at=issued.expires_at)


def serial_of(ok: Ok) -> int:
    assert isinstance(ok.serial, int), "a publish always has a serial"
    return ok.serial


@api.operation(
    "GET",
    "/v1/channels/{channel}/messages",
    summary="Read history: messages before or after a msg_serial, oldest first",
    description=(
        "With neither `before` nor `after`: the newest `limit` messages. `before` and "
        "`after` together are refused (40000). Page back with `before` = the first "
        "item's `msg_serial`, forward with `after` = the last one's, while `has_more`."
    ),
    tag="messages",
    path_params=ChannelPath,
    query=History,
    returns=(Returns("200", "A page of messages, oldest first.", (MessagePage,)),),
)
async def read_history(call: Call) -> msgspec.Struct:
    req = call.query(History, channel=call.where.channel)
    reply = await call.node.history(call.principal, req)
    return MessagePage(items=reply.messages, has_more=reply.has_more)


@api.operation(
    "POST",
    "/v1/channels/{channel}/messages/{msg_serial}/append",
    summary="Append a fragment to a streaming message (its author only)",
    tag="messages",
    path_params=MessagePath,
    body=Append,
    returns=(_CHANGED,),
)
async def append_to_message(call: Call) -> msgspec.Struct:
    node = call.node
    raw = await call.json(limit=single_body_limit(node.settings))
    req = call.body_as(raw, Append, channel=call.where.channel, msg_serial=call.where.msg_serial)
    return ChangeResult(serial=(await node.append_to(call.principal, req)).serial)


@api.operation(
    "PATCH",
    "/v1/channels/{channel}/messages/{msg_serial}",
    summary="Update a message: any of data, extras (merged shallowly) and status",
    tag="messages",
    path_params=MessagePath,
    body=Update,
    returns=(_CHANGED,),
)
async def update_message(call: Call) -> msgspec.Struct:
    node = call.node
    raw = await call.json(limit=single_body_limit(node.settings))
    req = call.body_as(raw, Update, channel=call.where.channel, msg_serial=call.where.msg_serial)
    return ChangeResult(serial=(await node.update(call.principal, req)).serial)


@api.operation(
    "DELETE",
    "/v1/channels/{channel}/messages/{msg_serial}",
    summary="Delete a message (it keeps its msg_serial; its data becomes null)",
    tag="messages",
    path_params=MessagePath,
    returns=(_CHANGED,),
)
async def delete_message(call: Call) -> msgspec.Struct:
    req = Delete(channel=call.where.channel, msg_serial=call.where.msg_serial)
    return ChangeResult(serial=(await call.node.delete(call.principal, req)).serial)


@api.operation(
    "POST",
    "/v1/channels/{channel}/messages/{msg_serial}/cancel",
    summary="Cancel a streaming message (the author should then end it as cancelled)",
    tag="messages",
    path_params=MessagePath,
    body=Cancel,
    body_required=False,
    returns=(_CHANGED,),
)
async def cancel_message(call: Call) -> msgspec.Struct:
    raw = await call.json(limit=single_body_limit(call.node.settings), required=False)
    req = call.body_as(raw, Cancel, channel=call.where.channel, msg_serial=call.where.msg_serial)
    return ChangeResult(serial=(await call.node.cancel(call.principal, req)).serial)


@api.operation(
    "POST",
    "/v1/channels/{channel}/messages/{msg_serial}/annotations",
    summary="Add or remove a reaction",
    tag="messages",
    path_params=MessagePath,
    body=Annotate,
    returns=(_CHANGED,),
)
async def annotate_message(call: Call) -> msgspec.Struct:
    raw = await call.json(limit=single_body_limit(call.node.settings))
    req = call.body_as(raw, Annotate, channel=call.where.channel, msg_serial=call.where.msg_serial)
    ok = await call.node.annotate(call.principal, req.channel, req.msg_serial, req.name, req.op)
    return ChangeResult(serial=ok.serial)


@api.operation(
    "GET",
    "/v1/channels/{channel}/presence",
    summary="Who is present on a channel",
    tag="channels",
    path_params=ChannelPath,
    returns=(Returns("200", "The channel's presence members.", (PresencePage,)),),
)
async def read_presence(call: Call) -> msgspec.Struct:
    members = await call.node.presence_members(call.principal, call.where.channel)
    return PresencePage(items=members)


@api.operation(
    "GET",
    "/v1/channels",
    summary="List channels (those you may subscribe to), by name",
    description=(
        "Channels with at least one event whose name starts with `prefix`, by name; with "
        "`after`, only those after that name (the last of the previous page). `occupancy` "
        "counts the WebSocket attachments and SSE streams on the node that answers."
    ),
    tag="channels",
    query=ChannelQuery,
    returns=(Returns("200", "Channels by name.", (ChannelPage,)),),
)
async def list_channels(call: Call) -> msgspec.Struct:
    query = call.query(ChannelQuery)
    items = await call.node.list_channels(call.principal, query.prefix, query.limit, query.after)
    return ChannelPage(items=items)


__all__ = ["api", "batch_body_limit", "single_body_limit"]
