"""``POST /v1/ag-ui``: a room as an AG-UI agent (docs/ag-ui.md).

An AG-UI front end (``HttpAgent`` of ``@ag-ui/client``, CopilotKit) posts a
``RunAgentInput``; ``threadId`` names the room ``room:<threadId>``.

- When the last message of ``messages`` is a user message, it is published as the
  caller's (its id is the publish's idempotency key, so a retried run publishes nothing
  twice), and the run streams the answers it triggers, with what else happens in the room
  meanwhile, and ends once each agent that answers it has (the rule of
  :mod:`~roomcast.server.replies`).
- Otherwise (no messages, or the last is not a user message: a reloaded front end) the run
  is a resume: ``MESSAGES_SNAPSHOT`` of the room, then the answer still streaming, from its
  beginning, then live; ``RUN_FINISHED`` at once when none streams.

Every run starts ``RUN_STARTED`` then ``STATE_SNAPSHOT`` (the room's live objects); the
events are made by :class:`~.ag_ui_events.RunEvents`. Closing the response only stops
reading: the answers go on.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from ag_ui.core import RunAgentInput, TextPart
from msgspec import Meta, Struct
from pydantic import ValidationError
from starlette.responses import Response

from roomcast.core.authz import authorize
from roomcast.protocol.answering import awaits, reply_to
from roomcast.protocol.errors import BadRequest
from roomcast.protocol.messages import History

from .ag_ui_events import RunEvents, message_id, snapshot_messages
from .ai_sdk import ROOM_ID, RoomId, room_of
from .api import Api, Call
from .replies import (
    RECENT,
    ask,
    data_events,
    finished_reply,
    follow,
    pending_reply,
    streaming_reply,
)
from .rest import batch_body_limit

api = Api()

MAX_RUN_MESSAGES = 1000
"""The most messages a run's input may hold (a front end sends its whole conversation;
only the last is read)."""
SNAPSHOT_MESSAGES = RECENT
"""How many of the room's latest messages a resume's ``MESSAGES_SNAPSHOT`` holds."""

MAX_ID = 200  # a message id: an idempotency key of the room
RunText = Annotated[str, Meta(min_length=1, max_length=200)]
AG_UI_REF = "#/components/schemas/AgUi{model}"


class RunInput(Struct, kw_only=True):
    """AG-UI's ``RunAgentInput`` (the messages are checked against AG-UI's own types)."""

    threadId: RoomId
    runId: RunText
    messages: Annotated[list[dict[str, Any]], Meta(max_length=MAX_RUN_MESSAGES)]
    parentRunId: str | None = None
    protocolVersion: str | None = None
    state: Any = None
    tools: list[Any] | None = None
    context: list[Any] | None = None
    forwardedProps: Any = None
    resume: list[Any] | None = None


def parse_run(raw: Any) -> RunAgentInput:
    """The body as AG-UI's ``RunAgentInput``, or a 400 that says what is wrong."""
    if isinstance(raw, dict):
        thread = raw.get("threadId")
        if isinstance(thread, str) and not ROOM_ID.fullmatch(thread):
            raise BadRequest(
                f"`threadId` {thread[:80]!r} cannot name a room: use 1 to 195 letters, "
                "digits, `_`, `.` or `-`, not `.` or `..` alone (the room is "
                "`room:<threadId>`)"
            )
        messages = raw.get("messages")
        if isinstance(messages, list) and len(messages) > MAX_RUN_MESSAGES:
            raise BadRequest(
                f"`messages` holds {len(messages)} messages; at most {MAX_RUN_MESSAGES} "
                "are taken (only the last is read: send the new one, or none to resume)"
            )
    Call.body_as(raw, RunInput)  # the shape, in the words of every other route
    try:
        return RunAgentInput.model_validate(raw)
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(part) for part in error['loc'])}: {error['msg']}"
            for error in exc.errors()[:3]
        ]
        raise BadRequest(f"not an AG-UI RunAgentInput: {'; '.join(problems)}") from None


def check_people(run: RunAgentInput) -> None:
    """People's messages: ids of 1 to 200 characters (an id becomes the message's
    idempotency key in the room) and text only (no images, audio or files), as the document
    says (the other messages are not read)."""
    for message in run.messages:
        if message.role != "user":
            continue
        if not 1 <= len(message.id) <= MAX_ID:
            raise BadRequest(
                f"a user message's `id` must be 1 to {MAX_ID} characters, not {len(message.id)}"
            )
        content = message.content
        if isinstance(content, list):
            kinds = sorted({part.type for part in content if not isinstance(part, TextPart)})
            if kinds:
                raise BadRequest(
                    f"message {message.id[:80]!r} holds {', '.join(kinds)} content; only "
                    "text is supported yet"
                )


def new_text(run: RunAgentInput) -> tuple[str, str] | None:
    """``(id, text)`` of the run's new user message, if its last message is one."""
    if not run.messages or run.messages[-1].role != "user":
        return None
    last = run.messages[-1]
    content = last.content
    if isinstance(content, str):
        text = content
    else:
        text = "\n".join(part.text for part in content if isinstance(part, TextPart))
    return (last.id, text) if text.strip() else None


def run_input_schema() -> tuple[dict[str, Any], dict[str, Any]]:
    """The body's JSON Schema, AG-UI's own ``RunAgentInput`` with this server's rules
    (``threadId`` names a room, ``runId`` of 1 to 200 characters, at most
    :data:`MAX_RUN_MESSAGES` messages, only text content), and the schemas it refers to
    (their names prefixed ``AgUi``), for the OpenAPI document."""
    schema = RunAgentInput.model_json_schema(by_alias=True, ref_template=AG_UI_REF)
    components = {"AgUi" + name: sub for name, sub in schema.pop("$defs", {}).items()}
    properties = schema["properties"]
    properties["threadId"] = msgspec.json.schema(RoomId)
    properties["runId"] = msgspec.json.schema(RunText)
    properties["messages"]["maxItems"] = MAX_RUN_MESSAGES
    text = {"$ref": AG_UI_REF.format(model="TextPart")}
    only_text = {"anyOf": [{"type": "string"}, {"type": "array", "items": text}]}
    people = components["AgUiUserMessage"]["properties"]
    people["content"] = only_text
    people["id"] = {**people["id"], "minLength": 1, "maxLength": MAX_ID}
    schema["title"] = "RunInputBody"
    _require_tags([schema, *components.values()], components)
    return schema, components


def _require_tags(node: Any, components: dict[str, Any]) -> None:
    """A tag that selects a type (``role``, ``type``) has a default in the models, but the
    models need it to be there: it is required in each type it selects."""
    if isinstance(node, list):
        for item in node:
            _require_tags(item, components)
    if not isinstance(node, dict):
        return
    tag = node.get("discriminator", {}).get("propertyName")
    for target in node.get("discriminator", {}).get("mapping", {}).values():
        chosen = components[target.rsplit("/", 1)[-1]]
        if tag not in chosen.setdefault("required", []):
            chosen["required"].append(tag)
    for key, value in node.items():
        if key != "discriminator":
            _require_tags(value, components)


async def submit(call: Call, run: RunAgentInput, asked: tuple[str, str]) -> Response:
    """Publish the new message and stream the answers it triggers."""
    channel = room_of(run.thread_id)
    serial, expected = await ask(call, channel, asked[1], asked[0])
    objects = await call.node.objects(call.principal, channel)  # after the message: see below
    # Answers already streaming in the room are shown too, from their beginning.
    recent, _ = await call.node.store.history(channel, before=None, after=None, limit=RECENT)
    earlier = [
        reply_to(m) or m.msg_serial  # from the message it answers, when it answers one
        for m in recent
        if m.status == "streaming" and m.msg_serial < serial
    ]
    events = RunEvents(
        channel=channel,
        thread_id=run.thread_id,
        run_id=run.run_id,
        asked=(serial, None),
        expected=expected,
        objects=objects.objects,
        state_serial=objects.serial,  # object events up to here are in the snapshot
        known=[m.id for m in run.messages],
    )
    return await follow(call, events, min(earlier) - 1 if earlier else serial)


async def resume(call: Call, run: RunAgentInput) -> Response:
    """The room's recent messages, then the answer still streaming, if any."""
    node, principal = call.node, call.principal
    channel = room_of(run.thread_id)
    objects = await node.objects(principal, channel)
    page = await node.history(principal, History(channel=channel, limit=SNAPSHOT_MESSAGES))
    found = await streaming_reply(node, channel)
    streaming = [m for m in page.messages if m.status == "streaming" and m.name == "text"]
    # What streams now is sent as it streams (from its beginning), not in the snapshot.
    settled = [m for m in page.messages if m not in streaming]
    snapshot = snapshot_messages(settled)
    asked: tuple[int, str | None] | None = None
    expected: list[str] = []
    pending = await pending_reply(node, channel) if found is None else None
    if found is not None:
        asked, streaming_agents = found
        trigger = await node.store.get_message(channel, asked[0])
        awaited = awaits(trigger) if trigger is not None and asked[1] is None else []
        expected = sorted({*awaited, *streaming_agents})
    elif pending is not None:  # asked, and no answer has started yet: wait for it
        asked, expected = (pending[0], None), pending[1]
    events = RunEvents(
        channel=channel,
        thread_id=run.thread_id,
        run_id=run.run_id,
        asked=asked,
        expected=expected,
        objects=objects.objects,
        state_serial=objects.serial,
        known=[message_id(m) for m in settled],
        snapshot=snapshot,
    )
    if asked is None:
        return finished_reply(events)
    return await follow(call, events, asked[0])


_STREAM = data_events(
    "An AG-UI event stream (`text/event-stream`): `data: <event JSON>` lines, from "
    "`RUN_STARTED` to `RUN_FINISHED` or `RUN_ERROR`."
)


@api.operation(
    "POST",
    "/v1/ag-ui",
    summary="Run a room as an AG-UI agent",
    description=(
        "AG-UI's `RunAgentInput`: `threadId` names the room `room:<threadId>`. When the "
        "last of `messages` is a user message, it is published as the caller's (its `id` "
        "is the idempotency key) and the run streams the answers it triggers; otherwise "
        "the run resumes: `MESSAGES_SNAPSHOT` of the room and the answer still streaming. "
        "Every run starts with `RUN_STARTED` and `STATE_SNAPSHOT` (the room's live "
        "objects), and ends with `RUN_FINISHED` or `RUN_ERROR`. Needs `subscribe`, "
        "`object-subscribe`, and `publish` (a new message) or `history` (a resume). At "
        f"most {MAX_RUN_MESSAGES} messages; only text content. docs/ag-ui.md."
    ),
    tag="ag-ui",
    body=RunInput,
    returns=(_STREAM,),
)
async def ag_ui_run(call: Call) -> Response:
    settings = call.request.app.state.settings
    run = parse_run(await call.json(limit=batch_body_limit(settings)))
    check_people(run)
    channel = room_of(run.thread_id)
    asked = new_text(run)
    # Every capability the run needs, before anything is published.
    for operation in ("subscribe", "object-subscribe", "publish" if asked else "history"):
        authorize(call.principal, operation, channel)
    if asked is not None:
        return await submit(call, run, asked)
    return await resume(call, run)


__all__ = ["MAX_RUN_MESSAGES", "RunInput", "api", "parse_run", "run_input_schema"]
