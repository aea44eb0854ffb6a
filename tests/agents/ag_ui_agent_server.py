"""A real AG-UI agent for the tests: a Pydantic AI agent whose model is a script (no network,
no model), served at ``/agent`` through Pydantic AI's own AG-UI adapter by uvicorn on
127.0.0.1.

Each room (the request's ``threadId``) follows its :class:`Plan`: what the agent says, the tool
it calls (one of roomcast's, which the client runs, or one of its own, which it runs itself
and answers with ``TOOL_CALL_RESULT``), what it says once the result is back, an error that the
adapter sends as ``RUN_ERROR``, or talk that goes on until the client leaves. Its own tools
are :func:`todays_menu` (a plain result), :func:`keep_score` (a ``STATE_DELTA``),
:func:`name_winner` (a ``STATE_SNAPSHOT`` of the state it was sent, changed) and
:func:`tally` (two snapshots in a row).

Every request is recorded as ag-ui-protocol's ``RunAgentInput`` with its headers, and a client
that goes away while a stream is still being written is noticed (:meth:`AGUIAgentServer.gone`).
Routes built with ag-ui-protocol's ``EventEncoder`` misbehave on purpose: ``/cut-short``
ends its stream without ``RUN_FINISHED``, ``/unauthorized`` answers 401, ``/scripted`` sends
the events a room's :class:`Script` lists (with the content type it names),
``/moved/CODE/HOPS`` redirects with status CODE, HOPS times before it points at ``/agent``,
and ``/html-error/titled`` and ``/html-error/bare`` answer 500 with an HTML page.

The server runs in a thread of its own, so that one server outlives each test's event loop
(a module's ``roomcast serve`` is started with its URL in agents.toml).
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from ag_ui.core import (
    Event,
    RunAgentInput,
    RunStartedEvent,
    StateDeltaEvent,
    StateSnapshotEvent,
    TextMessageContentEvent,
    TextMessageStartEvent,
)
from ag_ui.encoder import EventEncoder
from pydantic import BaseModel, ConfigDict
from pydantic_ai import Agent, RunContext, ToolReturn
from pydantic_ai.messages import ModelMessage, ModelRequest, ToolReturnPart
from pydantic_ai.models.function import AgentInfo, DeltaToolCall, FunctionModel
from pydantic_ai.ui import StateDeps
from pydantic_ai.ui.ag_ui import AGUIAdapter
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

MENU = "Tacos on Tuesday, ramen on Friday."
THREAD_KEY = "test.ag_ui.thread"


class SharedState(BaseModel):
    """The room's live objects as the agent is sent them: one entry per object id."""

    model_config = ConfigDict(extra="allow")


RoomState = StateDeps[SharedState]


@dataclass
class Plan:
    """What the agent does in one room.

    Attributes:
        say: The pieces of its answer, streamed one by one.
        call: A tool it calls after saying ``say``, with ``arguments``: one of the request's
            tools (roomcast runs it) or one of its own (it runs it itself).
        then: What it says once the call's result is back.
        fail: It fails with this message before saying anything (``RUN_ERROR``).
        endless: It talks on, ``pause_s`` between pieces, until its client leaves.
        pause_s: The pause before each piece.
    """

    say: Sequence[str] = ()
    call: str | None = None
    arguments: dict[str, Any] = field(default_factory=dict)
    then: Sequence[str] = ()
    fail: str | None = None
    endless: bool = False
    pause_s: float = 0.0


@dataclass
class Script:
    """The events ``/scripted`` sends in one room, as they are, under ``content_type``."""

    events: Sequence[Event]
    content_type: str = "text/event-stream"


@dataclass(frozen=True)
class Recorded:
    """One request as the agent got it."""

    headers: dict[str, str]
    input: RunAgentInput


def todays_menu() -> str:
    """What the kitchen serves this week."""
    return MENU


def keep_score(points: int) -> ToolReturn:
    """Set the room's shared score (root.score) to ``points``."""
    delta = StateDeltaEvent.model_validate(
        {"delta": [{"op": "replace", "path": "/root/score", "value": points}]}
    )
    return ToolReturn(return_value=f"the score is {points}", metadata=[delta])


def name_winner(ctx: RunContext[RoomState], name: str) -> ToolReturn:
    """Write the winner into the room's shared state (root.winner)."""
    state = ctx.deps.state.model_dump()
    state["root"] = {**state.get("root", {}), "winner": name}
    return ToolReturn(return_value=f"{name} won", metadata=[StateSnapshotEvent(snapshot=state)])


def tally(ctx: RunContext[RoomState]) -> ToolReturn:
    """Count one more on the room's tally (the counter root.tally names), then note it: two
    snapshots, each of the whole state as the agent knows it."""
    state = ctx.deps.state.model_dump()
    counter = state["root"]["tally"]["object_id"]
    counted = {**state, counter: state[counter] + 1}
    noted = {**counted, "root": {**counted["root"], "tallied": True}}
    snapshots = [StateSnapshotEvent(snapshot=counted), StateSnapshotEvent(snapshot=noted)]
    return ToolReturn(return_value="counted", metadata=snapshots)


class AGUIAgentServer:
    """``with AGUIAgentServer() as agent:`` → ``agent.url`` (the AG-UI endpoint)."""

    def __init__(self) -> None:
        self.plans: dict[str, Plan] = {}
        self.scripts: dict[str, Script] = {}
        self.requests: list[Recorded] = []
        self._gone: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self._socket = socket.socket()
        self._socket.bind(("127.0.0.1", 0))
        self._socket.listen(128)  # connections wait in the backlog until uvicorn serves
        app = Starlette(
            routes=[
                Route("/agent", self._run, methods=["POST"]),
                Route("/cut-short", self._cut_short, methods=["POST"]),
                Route("/unauthorized", self._unauthorized, methods=["POST"]),
                Route("/scripted", self._scripted, methods=["POST"]),
                Route("/moved/{code:int}/{hops:int}", self._moved, methods=["POST", "GET"]),
                Route("/html-error/{kind}", self._html_error, methods=["POST"]),
            ]
        )
        self._app = app
        self._server = uvicorn.Server(
            uvicorn.Config(self._watch, log_level="warning", lifespan="off", interface="asgi3")
        )
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True
        )

    @property
    def base(self) -> str:
        host, port = self._socket.getsockname()[:2]
        return f"http://{host}:{port}"

    @property
    def url(self) -> str:
        return f"{self.base}/agent"

    def plan(self, thread: str, plan: Plan) -> None:
        """What the agent does in ``thread`` (a room) from now on."""
        self.plans[thread] = plan

    def script(self, thread: str, script: Script) -> None:
        """What ``/scripted`` sends in ``thread`` from now on."""
        self.scripts[thread] = script

    def requests_for(self, thread: str) -> list[Recorded]:
        return [r for r in list(self.requests) if r.input.thread_id == thread]

    def gone(self, thread: str) -> threading.Event:
        """Set once a client of ``thread`` left while its stream was being written."""
        with self._lock:
            return self._gone.setdefault(thread, threading.Event())

    def __enter__(self) -> AGUIAgentServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._thread.join(15)
        self._socket.close()

    # ------------------------------------------------------------------ the agent

    async def _run(self, request: Request) -> Response:
        run_input = RunAgentInput.model_validate_json(await request.body())
        headers = {name.lower(): value for name, value in request.headers.items()}
        self.requests.append(Recorded(headers, run_input))
        request.scope[THREAD_KEY] = run_input.thread_id
        plan = self.plans.get(run_input.thread_id, Plan(say=["I have no plan for this room."]))
        agent = Agent(
            FunctionModel(stream_function=_model(plan)),
            deps_type=RoomState,
            tools=[todays_menu, keep_score, name_winner, tally],
        )
        return await AGUIAdapter.dispatch_request(
            request, agent=agent, deps=RoomState(SharedState())
        )

    async def _watch(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The app, noting a client that leaves before its response is complete."""
        complete = False

        async def sending(message: Message) -> None:
            nonlocal complete
            if message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        async def receiving() -> Message:
            message = await receive()
            thread = scope.get(THREAD_KEY)
            if message["type"] == "http.disconnect" and not complete and thread is not None:
                self.gone(thread).set()
            return message

        await self._app(scope, receiving, sending)

    # ------------------------------------------------------------------ misbehaving

    async def _cut_short(self, request: Request) -> Response:
        run_input = RunAgentInput.model_validate_json(await request.body())
        self.requests.append(Recorded(dict(request.headers), run_input))
        encoder = EventEncoder()
        events = [
            RunStartedEvent(thread_id=run_input.thread_id, run_id=run_input.run_id),
            TextMessageStartEvent(message_id="m1"),
            TextMessageContentEvent(message_id="m1", delta="I was saying"),
        ]

        async def body() -> AsyncIterator[str]:
            for event in events:
                yield encoder.encode(event)

        return StreamingResponse(body(), media_type=encoder.get_content_type())

    async def _scripted(self, request: Request) -> Response:
        run_input = RunAgentInput.model_validate_json(await request.body())
        self.requests.append(Recorded(dict(request.headers), run_input))
        script = self.scripts[run_input.thread_id]
        encoder = EventEncoder()

        async def body() -> AsyncIterator[str]:
            for event in script.events:
                yield encoder.encode(event)

        return StreamingResponse(body(), headers={"content-type": script.content_type})

    async def _moved(self, request: Request) -> Response:
        await request.body()
        code, hops = request.path_params["code"], request.path_params["hops"]
        where = "/agent" if hops <= 1 else f"/moved/{code}/{hops - 1}"
        return Response(status_code=code, headers={"location": where})

    async def _html_error(self, request: Request) -> Response:
        await request.body()
        title = "<title>\n  502 Bad Gateway &amp; more\n</title>"
        head = title if request.path_params["kind"] == "titled" else ""
        page = f"<!DOCTYPE html>\n<html><head>{head}</head><body><h1>Oops</h1></body></html>"
        return Response(page, status_code=500, media_type="text/html")

    async def _unauthorized(self, request: Request) -> Response:
        await request.body()
        return PlainTextResponse("invalid token for this agent\nsee the logs", status_code=401)


def _model(plan: Plan) -> Any:
    """The scripted model's stream function for ``plan``."""

    async def stream(messages: list[ModelMessage], info: AgentInfo) -> AsyncIterator[Any]:
        last = messages[-1]
        answered = isinstance(last, ModelRequest) and any(
            isinstance(part, ToolReturnPart) for part in last.parts
        )
        if plan.fail is not None:
            raise RuntimeError(plan.fail)
        pieces = plan.then if answered else plan.say
        for piece in pieces:
            if plan.pause_s:
                await asyncio.sleep(plan.pause_s)
            yield piece
        number = 0
        while plan.endless and not answered:
            await asyncio.sleep(plan.pause_s or 0.05)
            number += 1
            yield f" word{number}"
        if plan.call is not None and not answered:
            arguments = json.dumps(plan.arguments)
            yield {0: DeltaToolCall(name=plan.call, json_args=arguments, tool_call_id="call-1")}

    return stream


__all__ = ["MENU", "AGUIAgentServer", "Plan", "Recorded", "Script"]
