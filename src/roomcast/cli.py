"""The ``roomcast`` command line: ``serve`` runs the server; ``pub``, ``sub``, ``history`` and
``channels`` talk to one through the SDK."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
import signal
import sys
import time
from collections.abc import Coroutine
from dataclasses import fields
from typing import Annotated, Any, Optional

import msgspec
import typer
from rich.console import Console
from rich.table import Table

from roomcast import __version__
from roomcast.settings import Settings, SettingsError, is_loopback

app = typer.Typer(
    help="roomcast: realtime group chats for people and AI agents.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


@app.callback()
def _root() -> None:
    """roomcast: realtime group chats for people and AI agents."""


@app.command()
def version() -> None:
    """Print the version."""
    print(__version__)


def _setting_parameters() -> list[inspect.Parameter]:
    """One ``--flag`` per setting, so the CLI can never drift from :class:`Settings`."""
    params = []
    for f in fields(Settings):
        spec = f.metadata["spec"]
        env = "ROOMCAST_" + f.name.upper()
        type_name = str(f.type)
        if f.name == "keys":  # the one list: a repeatable --key
            params.append(
                inspect.Parameter(
                    f.name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=Annotated[
                        Optional[list[str]],  # noqa: UP045 - typer reads it
                        typer.Option(
                            "--key",
                            help=f"{spec.help} [env: {env}; default: none]",
                            show_default=False,
                        ),
                    ],
                )
            )
            continue
        kind: Any = (
            bool
            if "bool" in type_name
            else int
            if type_name == "int"
            else (float if type_name == "float" else str)
        )
        option = typer.Option(
            help=f"{spec.help} [env: {env}; default: {f.default!s}]",
            show_default=False,
        )
        params.append(
            inspect.Parameter(
                f.name,
                inspect.Parameter.KEYWORD_ONLY,
                default=None,
                annotation=Annotated[Optional[kind], option],  # noqa: UP045 - typer reads it
            )
        )
    return params


def _serve(**overrides: Any) -> None:
    try:
        settings = Settings.load(**overrides)
    except SettingsError as exc:
        raise typer.BadParameter(str(exc)) from None
    if not settings.anonymous_enabled and not settings.keys and not is_loopback(settings.host):
        raise typer.BadParameter(
            f"refusing to serve on {settings.host} with no way in: no API keys are configured "
            "and anonymous access is off. Pass --allow-anonymous (or ROOMCAST_ALLOW_ANONYMOUS=1) "
            "to let anyone connect, or bind to 127.0.0.1."
        )
    run_server(settings)


def run_server(settings: Settings) -> None:
    """Print what is being served, then serve until Ctrl-C or SIGTERM."""
    import uvicorn

    from roomcast.backends import BackendURLError
    from roomcast.server import create_app
    from roomcast.server.uvicorn_websocket import RoomcastWebSocketProtocol

    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    try:
        app = create_app(settings, manage_node=False)
    except BackendURLError as exc:
        raise typer.BadParameter(str(exc), param_hint="--store") from None
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        ws=RoomcastWebSocketProtocol,
        ws_ping_interval=settings.heartbeat_s,
        ws_ping_timeout=settings.heartbeat_s,
        ws_max_size=2 * settings.max_message_bytes + 64 * 1024,
        ws_per_message_deflate=False,
        log_level=settings.log_level.lower(),
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    from roomcast.server.auth import RedactCredentials

    for name in ("uvicorn.access", "uvicorn.error"):
        logging.getLogger(name).addFilter(RedactCredentials())
    # uvicorn re-raises the signal that stopped it once it has shut down; a clean shutdown
    # (connections closed, store flushed) should exit 0, so that re-raise is absorbed here.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    try:
        import uvloop

        code = uvloop.run(_serve_until_stopped(app, _uvicorn_server(app, config), settings))
    except ImportError:
        code = asyncio.run(_serve_until_stopped(app, _uvicorn_server(app, config), settings))
    if code:
        sys.exit(code)
    console.print("roomcast stopped: store flushed and closed")


def _uvicorn_server(app: Any, config: Any) -> Any:
    """uvicorn's server; at shutdown it first ends the SSE streams, which never end by
    themselves (clients reconnect elsewhere with ``Last-Event-ID``)."""
    import uvicorn

    class Server(uvicorn.Server):
        listening = asyncio.Event()

        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started:
                self.listening.set()

        async def shutdown(self, sockets: Any = None) -> None:
            agents = getattr(app.state, "agents", None)
            if agents is not None:  # running answers finish (5 s) while connections are up
                await agents.aclose()
            app.state.event_streams.close_all()
            await super().shutdown(sockets)

    return Server(config)


def _print_banner(settings: Settings, agents: list[Any]) -> None:
    shown_host = f"[{settings.host}]" if ":" in settings.host else settings.host
    console.print(
        f"[bold]roomcast {__version__}[/bold] serving on http://{shown_host}:{settings.port}"
    )
    console.print(f"  WebSocket: ws://{shown_host}:{settings.port}/v1/ws")
    console.print(f"  HTTP API:  http://{shown_host}:{settings.port}/v1/ (see /openapi.json)")
    console.print(f"  store:     {settings.store_shown}")
    console.print(f"  anonymous: {'on' if settings.anonymous_enabled else 'off'}")
    shown = ", ".join(f"{a.name} ({a.provider} {a.model}, {a.policy})" for a in agents)
    console.print(f"  agents:    {shown or 'none in this process'}", markup=False)
    table = Table("setting", "value", box=None, show_header=False, pad_edge=False)
    for name, value in settings.describe():
        table.add_row("  " + name, value)
    console.print(table)


async def _serve_until_stopped(app: Any, server: Any, settings: Settings) -> int:
    from roomcast.agents.hosting import HostedAgents

    node = app.state.node
    try:
        agents = HostedAgents(node, settings)
    except Exception as exc:  # a bad agents file, a missing provider package
        console.print(f"cannot start the agents: {exc}", style="red", markup=False)
        return 2
    try:
        await node.start()
    except Exception as exc:
        console.print(f"[red]cannot open the store {settings.store_shown}:[/red] {exc}")
        return 3
    _print_banner(settings, agents.agents)
    try:
        serving = asyncio.ensure_future(server.serve())
        listening = asyncio.ensure_future(server.listening.wait())
        await asyncio.wait({serving, listening}, return_when=asyncio.FIRST_COMPLETED)
        listening.cancel()
        if server.started and not serving.done():
            app.state.agents = agents
            try:
                await agents.start()
            except Exception:
                logging.getLogger("roomcast.agents").exception("the agents could not start")
        await serving
    finally:
        await agents.aclose(0)
        await node.stop()
    return 0 if server.started else 3


_serve.__signature__ = inspect.Signature(_setting_parameters())  # type: ignore[attr-defined]
app.command(
    "serve",
    help="Run the server (WebSocket /v1/ws, /healthz, /readyz) until Ctrl-C or SIGTERM.",
)(_serve)


# --------------------------------------------------------------------------- client commands
# pub, sub, history and channels talk to a running server through the SDK (roomcast.client).

DEFAULT_SERVER = "http://127.0.0.1:8000"
ServerOption = Annotated[
    str, typer.Option("--server", help="The server: http://host:port or ws://host:port/v1/ws.")
]
ClientIdOption = Annotated[
    Optional[str],  # noqa: UP045 - typer reads it
    typer.Option("--client-id", help="Who you are (anonymous access); the server picks one."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print raw JSON, one per line.")]


def _note(text: str) -> None:
    """A status line for people, on stderr, so stdout stays data only."""
    console.print(text, style="dim", markup=False, highlight=False)


def _run_client(coro: Coroutine[Any, Any, int], server: str) -> None:
    """Run a client command; print refusals and connection problems plainly."""
    from roomcast.client import AuthError, RoomcastError

    try:
        code = asyncio.run(coro)
    except AuthError as exc:
        console.print(f"refused: {exc.message}", markup=False)
        raise typer.Exit(4) from None
    except RoomcastError as exc:
        console.print(f"error {exc.code}: {exc.message}", markup=False)
        raise typer.Exit(1) from None
    except (OSError, TimeoutError) as exc:
        console.print(f"cannot reach the server at {server}: {exc}", markup=False)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if code:
        raise typer.Exit(code)


def _one_line(data: Any) -> str:
    """``data`` on one line: plain text as it is, anything else as compact JSON."""
    if isinstance(data, str) and data.isprintable():
        return data
    return json.dumps(data, ensure_ascii=False, separators=(",", ":"))


def _json_line(value: Any) -> str:
    return msgspec.json.encode(value).decode()


def _event_line(event: Any) -> str:
    """``serial client_id data`` for a message; other events say what they change."""
    who = event.client_id if event.client_id is not None else "-"
    if event.type == "create":
        return f"{event.serial} {who} {_one_line(event.data)}"
    fields = msgspec.structs.asdict(event)
    details = {
        k: v
        for k, v in fields.items()
        if v is not msgspec.UNSET
        and k not in ("channel", "serial", "type", "msg_serial", "client_id", "timestamp")
    }
    target = f" #{event.msg_serial}" if isinstance(event.msg_serial, int) else ""
    return f"{event.serial} {who} [{event.type}{target}] {_one_line(details)}"


def _message_line(message: Any) -> str:
    who = message.client_id if message.client_id is not None else "-"
    status = "" if message.status == "complete" else f" [{message.status}]"
    data = "(deleted)" if message.deleted else _one_line(message.data)
    return f"{message.msg_serial} {who}{status} {data}"


@app.command()
def pub(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    text: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Argument(help="The message (text, or JSON with --json); not with --stream."),
    ] = None,
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Send TEXT parsed as JSON data.")] = False,
    name: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Option("--name", help="The message name (default: text)."),
    ] = None,
    id: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Option("--id", help="An idempotency key: a repeat is stored once."),
    ] = None,
    stream: Annotated[
        bool,
        typer.Option(
            "--stream",
            help="Stream stdin as one message: each line is an append; it ends complete at EOF.",
        ),
    ] = False,
) -> None:
    """Publish one message and print its serial.

    With --stream, publish a streaming message, print its serial at once, append each line
    of stdin to it as it is read, and end it complete at end of input (exit 1 if someone
    cancelled it)."""
    if stream:
        if text is not None or as_json:
            raise typer.BadParameter("--stream reads stdin: give no TEXT and no --json")
        _run_client(_publish_stream(channel, server, client_id, name, id), server)
        return
    if text is None:
        raise typer.BadParameter("missing TEXT (or use --stream to read stdin)")
    data: Any = text
    if as_json:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="TEXT") from None

    async def publish() -> int:
        from roomcast.client import connect

        async with connect(server, client_id=client_id) as client:
            serial = await client.channels.get(channel).publish(data, name=name, id=id)
        print(serial)
        return 0

    _run_client(publish(), server)


async def _publish_stream(
    channel: str, server: str, client_id: str | None, name: str | None, id: str | None
) -> int:
    from roomcast.client import connect

    loop = asyncio.get_running_loop()
    async with connect(server, client_id=client_id) as client:
        async with client.channels.get(channel).stream(name=name or "text", id=id) as message:
            print(message.msg_serial, flush=True)
            while line := await loop.run_in_executor(None, sys.stdin.readline):
                await message.append(line)
    if message.status == "cancelled":
        who = f" by {message.cancelled_by}" if message.cancelled_by else ""
        console.print(f"cancelled{who}", markup=False)
        return 1
    return 0


@app.command()
def sub(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    as_json: JsonOption = False,
    rewind: Annotated[
        Optional[int],  # noqa: UP045 - typer reads it
        typer.Option("--rewind", min=1, max=1000, help="Print the last N messages first."),
    ] = None,
    from_serial: Annotated[
        Optional[int],  # noqa: UP045 - typer reads it
        typer.Option("--from-serial", min=0, help="Replay every event after serial N first."),
    ] = None,
) -> None:
    """Print a channel's events as they happen (serial, client_id, data), until Ctrl-C.

    A dropped connection is resumed with nothing lost or repeated."""
    _run_client(_subscribe(channel, server, client_id, as_json, rewind, from_serial), server)


async def _subscribe(
    name: str,
    server: str,
    client_id: str | None,
    as_json: bool,
    rewind: int | None,
    from_serial: int | None,
) -> int:
    """Follow the channel until it ends, or until Ctrl-C or SIGTERM (then exit 0)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    following = asyncio.create_task(_follow(name, server, client_id, as_json, rewind, from_serial))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait({following, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if following.done():
        return following.result()  # raises the client's error, if it gave up
    following.cancel()  # closes the client cleanly on its way out
    with contextlib.suppress(asyncio.CancelledError):
        await following
    return 0


async def _follow(
    name: str,
    server: str,
    client_id: str | None,
    as_json: bool,
    rewind: int | None,
    from_serial: int | None,
) -> int:
    from roomcast.client import Discontinuity, StateChange, connect

    def on_change(change: StateChange) -> None:
        messages = {
            "disconnected": f"connection lost ({change.reason}); reconnecting",
            "resumed": "reconnected: resumed where it left off",
            "connected": "reconnected (a new session)",
        }
        _note(messages[change.event])

    async with connect(server, client_id=client_id) as client:
        for event in ("disconnected", "resumed", "connected"):
            client.on(event, on_change)
        channel = client.channels.get(name)
        subscription = channel.subscribe()
        attached = await channel.attach(rewind=rewind, from_serial=from_serial)
        for message in attached.messages or []:
            print(_json_line(message) if as_json else _message_line(message), flush=True)
        _note(f"attached to {name} at serial {attached.serial}; Ctrl-C to stop")
        while True:
            try:
                async for item in subscription:
                    print(_json_line(item) if as_json else _event_line(item), flush=True)
                return 0
            except Discontinuity as gap:
                _note(f"gap in {name}: {gap.reason} (epoch {gap.epoch}); see `roomcast history`")


@app.command()
def history(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    limit: Annotated[
        int, typer.Option("--limit", min=1, help="How many of the latest messages.")
    ] = 100,
    as_json: JsonOption = False,
) -> None:
    """Print a channel's latest messages, oldest first (msg_serial, client_id, data)."""

    async def read() -> int:
        from roomcast.client import Message, connect

        pages: list[list[Message]] = []
        wanted = limit
        async with connect(server, client_id=client_id) as client:
            async for page in client.channels.get(channel).history(limit=min(wanted, 1000)):
                pages.append(page.messages[-wanted:])
                wanted -= len(pages[-1])
                if wanted <= 0:
                    break
        for messages in reversed(pages):
            for message in messages:
                print(_json_line(message) if as_json else _message_line(message))
        return 0

    _run_client(read(), server)


@app.command()
def objects(
    channel: Annotated[str, typer.Argument(help="The channel, e.g. room:lunch.")],
    server: ServerOption = DEFAULT_SERVER,
    client_id: ClientIdOption = None,
    as_json: JsonOption = False,
) -> None:
    """Print a channel's live objects: the root map with its references expanded
    (--json: the raw snapshot, {serial, objects})."""

    async def read() -> int:
        from roomcast.client import connect

        async with connect(server, client_id=client_id) as client:
            live_objects = client.channels.get(channel).objects
            await live_objects.sync()
            snapshot = live_objects.snapshot()
        if as_json:
            print(_json_line(snapshot))
            return 0
        print(f"{channel} as of serial {snapshot.serial}")
        states = msgspec.to_builtins(snapshot.objects)
        shown: set[str] = set()
        tree = _expand_object(states, "root", shown)
        print(json.dumps(tree, indent=2, ensure_ascii=False))
        rest = {oid: _expand_object(states, oid, shown) for oid in states if oid not in shown}
        if rest:
            print("not referenced from root:")
            print(json.dumps(rest, indent=2, ensure_ascii=False))
        return 0

    _run_client(read(), server)


def _expand_object(states: dict[str, Any], object_id: str, shown: set[str]) -> Any:
    """An object with the references in it replaced by what they name (each object once)."""
    shown.add(object_id)
    state = states[object_id]
    if state["type"] == "counter":
        return state.get("value", 0)
    out: dict[str, Any] = {}
    for key, value in state.get("entries", {}).items():
        target = value.get("object_id") if isinstance(value, dict) and len(value) == 1 else None
        if isinstance(target, str) and target in states and target not in shown:
            out[key] = _expand_object(states, target, shown)
        else:
            out[key] = value
    return out


@app.command()
def channels(
    server: ServerOption = DEFAULT_SERVER,
    prefix: Annotated[str, typer.Option("--prefix", help="Only names starting with it.")] = "",
    limit: Annotated[int, typer.Option("--limit", min=1, max=1000)] = 100,
    as_json: JsonOption = False,
) -> None:
    """List the channels that have messages (GET /v1/channels)."""

    async def list_them() -> int:
        import httpx

        from roomcast.client import list_channels

        try:
            items = await list_channels(server, prefix=prefix, limit=limit)
        except httpx.HTTPError as exc:
            raise OSError(str(exc) or type(exc).__name__) from exc
        if as_json:
            for item in items:
                print(_json_line(item))
            return 0
        table = Table("channel", "serial", "updated", "occupancy", box=None, pad_edge=False)
        for item in items:
            updated = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(item.updated_at / 1000))
            table.add_row(item.channel, str(item.serial), updated, str(item.occupancy))
        Console(highlight=False).print(table)
        return 0

    _run_client(list_them(), server)


@app.command()
def token(
    key: Annotated[
        str,
        typer.Option(
            "--key", help="The signing key, NAME:SECRET[:CAPABILITY_JSON], as given to serve."
        ),
    ],
    client_id: Annotated[str, typer.Option("--client-id", help="Who the token is for.")],
    capability: Annotated[
        Optional[str],  # noqa: UP045 - typer reads it
        typer.Option("--capability", help="Capability JSON (default: the key's own)."),
    ] = None,
    ttl: Annotated[int, typer.Option("--ttl", help="Seconds until it expires (max 86400).")] = 3600,
) -> None:
    """Print a signed token (offline; as POST /v1/tokens issues them)."""
    from roomcast.core.authz import Capability
    from roomcast.core.keys import ApiKey, KeySpecError, issue_token
    from roomcast.protocol.errors import RoomcastError

    try:
        signing_key = ApiKey.parse(key)
    except KeySpecError as exc:
        raise typer.BadParameter(str(exc), param_hint="--key") from None
    try:
        wanted = Capability.parse(capability) if capability is not None else None
        issued = issue_token(signing_key, client_id, wanted, ttl)
    except RoomcastError as exc:
        console.print(f"error {exc.code}: {exc.message}", markup=False)
        raise typer.Exit(1) from None
    print(issued.token)


@app.command("agents")
def agents_command(
    agents_file: Annotated[
        str, typer.Option("--agents", help="The agents file (TOML, [[agents]] entries).")
    ],
    server: ServerOption = DEFAULT_SERVER,
    key: Annotated[
        str,
        typer.Option(
            "--key",
            envvar="ROOMCAST_AGENT_KEY",
            help="An API key NAME:SECRET of the server (env ROOMCAST_AGENT_KEY).",
        ),
    ] = "",
    grace: Annotated[
        float, typer.Option("--grace", help="Seconds running answers get at shutdown.")
    ] = 5.0,
) -> None:
    """Run agents as a worker of a server: answer in its rooms until Ctrl-C or SIGTERM.

    Any number of workers may run, on any machine: each trigger is claimed, so exactly one
    of them answers it.
    """
    from roomcast.agents.config import AgentConfigError, load_agents

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    if not key:
        raise typer.BadParameter(
            "workers connect with an API key of the server", param_hint="--key"
        )
    try:
        agents = load_agents(agents_file)
    except AgentConfigError as exc:
        raise typer.BadParameter(str(exc), param_hint="--agents") from None
    if not agents:
        raise typer.BadParameter(f"{agents_file} has no [[agents]]", param_hint="--agents")
    from roomcast.agents.providers import ProviderConfigError
    from roomcast.agents.runtime import AgentRuntime
    from roomcast.agents.tools import ToolError

    try:
        runtime = AgentRuntime(server, agents, key=key)
    except (ProviderConfigError, ToolError) as exc:
        raise typer.BadParameter(str(exc), param_hint="--agents") from None
    _run_client(_run_agents(server, runtime, grace), server)


async def _run_agents(server: str, runtime: Any, grace: float) -> int:
    agents = [worker.config for worker in runtime.workers]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await runtime.start()
    _note(f"agents {', '.join(a.name for a in agents)} answering on {server}; Ctrl-C stops")
    try:
        await stop.wait()
    finally:
        _note("stopping: running answers get a few seconds to finish")
        await runtime.aclose(grace)
    return 0


def main() -> None:
    app(prog_name="roomcast")
