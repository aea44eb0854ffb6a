"""The client: one logical connection that survives drops.

A :class:`Client` keeps what must outlive a socket: the resume key, the channels and their
positions, and the requests still waiting for a reply. When the socket drops it reconnects
with backoff, resumes (``?resume=``), re-attaches every channel from the last serial it
delivered, and re-sends the unanswered requests in their original order. A server that is
full (:class:`Overloaded`) is retried too, after the delay it asks for, even on the first
connection. It keeps the credentials fresh too (:mod:`roomcast.client.tokens`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Generator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import msgspec
from websockets.exceptions import WebSocketException

from roomcast.protocol import messages as m
from roomcast.protocol.errors import RoomcastError, Unauthorized
from roomcast.protocol.http import ChannelSummary

from .backoff import Backoff
from .channel import Channels
from .errors import AuthError, ClientClosed, Overloaded, error_from_reply
from .link import Dial, Format, Link, dial_websocket, request_encoder
from .rest import list_channels
from .state import State, StateCallback, StateChange, StateEvent, StateListeners
from .tokens import AuthCallback, TokenKeeper, token_capability
from .urls import websocket_url

log = logging.getLogger("roomcast.client")

# A connection that stayed up this long resets the backoff, so a server that accepts and
# then drops at once is not hammered at the initial delay.
STABLE_AFTER_S = 1.0
# How long the first connect waits for a full server (Overloaded) to take it, by default.
OVERLOAD_TIMEOUT_S = 60.0


@dataclass(slots=True)
class _Pending:
    frame: bytes  # the encoded request, ref included
    on_reply: Callable[[m.ServerMessage], None]
    on_fail: Callable[[BaseException], None]
    resend: bool  # False: the owner re-issues it after a reconnect (attach)


class Client:
    """A connection to a roomcast server that reconnects and resumes by itself.

    Create it with :func:`connect`, which takes the same arguments. Use it as ``async
    with``, or call :meth:`close`.

    Args:
        url: The server's HTTP base (``http://host:port``, from which ``ws://host:port/v1/ws``
            is derived) or its WebSocket URL (``ws://host:port/v1/ws``).
        client_id: Who you are, where anonymous access is on. The server picks one if not
            given; reconnects keep it.
        token: A signed token (docs/protocol.md §6). Without ``auth_callback`` the client
            fails with :class:`AuthError` when it expires.
        key: An API key ``name:secret`` (server-side callers only; they may add
            ``client_id``). Not with ``token`` or ``auth_callback``.
        auth_callback: A function (plain or async) that returns a fresh token, e.g. from
            your backend's ``POST /v1/tokens``. Called to connect when no ``token`` is
            given, to renew the token on the open connection before it expires (at 2/3 of
            its remaining lifetime or 30 s before, whichever is sooner), and before a
            reconnect when the token held is expired or about to be. If it raises
            :class:`Unauthorized` the client fails; other errors are retried.
        format: ``json`` or ``msgpack`` on the wire.
        backoff: The reconnect policy (default: :class:`Backoff` with 0.1 s initial and
            10 s maximum, full jitter). A full server's ``Retry-After`` is waited out, up
            to the policy's maximum.
        timeout: Seconds to wait for each connection attempt.
        overload_timeout: Seconds the first connection keeps retrying a server that
            refuses it as full (HTTP 503 at the upgrade) before raising
            :class:`Overloaded`; 0 raises at once. Reconnects retry it without a limit.
        dial: How a connection is opened (:data:`roomcast.client.link.Dial`): a WebSocket
            to ``url`` by default. ``roomcast serve`` gives its agents one that reaches its
            core in memory.

    Attributes:
        url: The URL it was given.
        channels: The channels, by name: ``client.channels.get("room:lunch")``.
        state: ``connecting``, ``connected``, ``disconnected`` (reconnecting), ``failed``
            or ``closed``.
        client_id: Who this client is (picked by the server when not given).
        connected: The latest ``connected`` message (limits, heartbeat).
    """

    def __init__(
        self,
        url: str,
        *,
        client_id: str | None = None,
        token: str | None = None,
        key: str | None = None,
        auth_callback: AuthCallback | None = None,
        format: Format = "json",
        backoff: Backoff | None = None,
        timeout: float = 10.0,
        overload_timeout: float = OVERLOAD_TIMEOUT_S,
        dial: Dial = dial_websocket,
    ) -> None:
        if key is not None and (token is not None or auth_callback is not None):
            raise ValueError("give either key= or token=/auth_callback=, not both")
        if overload_timeout < 0:
            raise ValueError("overload_timeout must be 0 or more")
        self.url = url
        self._ws_url = websocket_url(url)
        self.client_id = client_id
        self._tokens = TokenKeeper(token, auth_callback)
        self._key = key
        self._renewer: asyncio.Task[None] | None = None
        self._format: Format = format
        self._encode = request_encoder(format)
        self._backoff = backoff if backoff is not None else Backoff()
        self._timeout = timeout
        self._overload_timeout = overload_timeout
        self._dial = dial
        self.channels = Channels(self)
        self.state: State = "connecting"
        self.connected: m.Connected | None = None
        self._link: Link | None = None
        self._link_since = 0.0
        self._resume_key: str | None = None
        self._pending: dict[int, _Pending] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._ref = 0
        self._listeners = StateListeners()
        self._supervisor: asyncio.Task[None] | None = None
        self._error: BaseException | None = None

    # ------------------------------------------------------------------ public API

    @property
    def connection_id(self) -> str | None:
        """The server's id for this connection; kept across a resumed reconnect."""
        return self.connected.connection_id if self.connected is not None else None

    @property
    def rollup_s(self) -> float:
        """The server's rollup window in seconds, which streams keep (0: none said)."""
        value = self.connected.limits.get("rollup_ms") if self.connected else None
        return max(0.0, value / 1000) if isinstance(value, int | float) else 0.0

    @property
    def token(self) -> str | None:
        """The token in use: the one given, or the latest from ``auth_callback``."""
        return self._tokens.token

    def on(self, event: StateEvent, callback: StateCallback) -> Callable[[], None]:
        """Call ``callback(StateChange)`` on each ``event``.

        Callbacks may be plain functions or coroutine functions (run as tasks). An exception
        in a callback is logged, never raised into the client.

        Args:
            event: ``connected``, ``disconnected``, ``resumed``, ``failed`` or ``closed``.
            callback: The function to call.

        Returns:
            A function that removes the callback.
        """
        self._listeners.add(event, callback)
        return lambda: self.off(event, callback)

    def off(self, event: StateEvent, callback: StateCallback) -> None:
        """Remove a callback added with :meth:`on` (nothing happens if it is not there)."""
        self._listeners.remove(event, callback)

    async def list_channels(
        self, prefix: str = "", limit: int = 100, after: str = ""
    ) -> list[ChannelSummary]:
        """The server's channels by name: :func:`roomcast.client.rest.list_channels`."""
        return await list_channels(
            self.url,
            prefix=prefix,
            limit=limit,
            token=self._tokens.token,
            key=self._key,
            after=after,
        )

    async def ping(self) -> float:
        """Round-trip a ``ping``; returns the seconds it took."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        await self.call(m.Ping())
        return loop.time() - started

    async def close(self, flush_timeout: float = 5.0) -> None:
        """Close the connection cleanly (a close frame: presence ends at once).

        Requests still waiting for a reply get up to ``flush_timeout`` seconds to be answered
        first; after that they raise :class:`ClientClosed`. Subscriptions end.
        """
        if self.state in ("closed", "failed"):
            self._set_closed("closed by the client")
            return
        if self._pending:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(flush_timeout):
                    await self._idle.wait()
        for task in (self._supervisor, self._renewer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        link, self._link = self._link, None
        if link is not None:
            await link.close()
        self._set_closed("closed by the client")

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def call(self, request: m.Request) -> m.ServerMessage:
        """Send any protocol request and return its reply (the lower-level escape hatch).

        The request is re-sent after a reconnect until it is answered, so use it only for
        requests that are safe to repeat (a publish with an ``id``, reads, presence).

        Raises:
            RoomcastError: The server answered ``error`` (typed by its code).
            ClientClosed: The client was closed first.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[m.ServerMessage] = loop.create_future()

        def on_reply(reply: m.ServerMessage) -> None:
            if not future.done():
                if isinstance(reply, m.ErrorReply):
                    future.set_exception(error_from_reply(reply))
                else:
                    future.set_result(reply)

        def on_fail(error: BaseException) -> None:
            if not future.done():
                future.set_exception(error)

        ref = self.submit(request, on_reply, on_fail)
        try:
            return await future
        finally:
            self._forget(ref)

    # ------------------------------------------------------------------ requests

    def submit(
        self,
        request: m.Request,
        on_reply: Callable[[m.ServerMessage], None],
        on_fail: Callable[[BaseException], None],
        *,
        resend: bool = True,
    ) -> int:
        """Send ``request`` with a fresh ``ref`` (now if connected, else on reconnect) and
        route its reply to ``on_reply``; returns the ref. For the SDK's own modules."""
        self.check_open()
        ref = self._ref + 1
        # Encoding first: data that is not JSON raises here, before anything is queued.
        frame = self._encode(msgspec.structs.replace(request, ref=ref))
        self._ref = ref
        self._pending[ref] = _Pending(frame, on_reply, on_fail, resend)
        self._idle.clear()
        if self.state == "connected" and self._link is not None:
            self._link.send(frame)
        return ref

    def check_open(self) -> None:
        """Raise if the client can no longer send (closed, or failed for good)."""
        if self.state == "failed" and self._error is not None:
            raise self._error
        if self.state == "closed":
            raise ClientClosed("the client is closed")

    @property
    def is_connected(self) -> bool:
        """True while a socket is up (requests go out at once)."""
        return self.state == "connected"

    def _forget(self, ref: int) -> None:
        self._pending.pop(ref, None)
        if not self._pending:
            self._idle.set()

    def _dispatch(self, message: m.ServerMessage) -> None:
        """Route one server message. Runs in the reader, in order, without awaiting."""
        if isinstance(message, m.Event | m.PresenceEvent | m.SignalEvent | m.Discontinuity):
            channel = self.channels.find(message.channel)
            if channel is not None:
                channel.receive(message)
            return
        ref = getattr(message, "ref", msgspec.UNSET)
        if isinstance(ref, int):
            entry = self._pending.get(ref)
            if entry is not None:
                self._forget(ref)
                entry.on_reply(message)
        elif isinstance(message, m.ErrorReply):
            log.warning("server error %d: %s", message.code, message.message)

    # ------------------------------------------------------------------ connection life

    def _query_url(self) -> str:
        params: dict[str, str | None] = {
            "client_id": self.client_id,
            "token": self._tokens.token,
            "key": self._key,
            "resume": self._resume_key,
            "format": None if self._format == "json" else self._format,
        }
        return websocket_url(self._ws_url, params)

    async def start(self) -> None:
        """Make the first connection. A full server (:class:`Overloaded`) is retried with
        backoff for up to ``overload_timeout`` seconds; anything else raises at once (an
        unreachable server, refused credentials, a URL with no roomcast WebSocket)."""
        try:
            link = await self._first_link()
        except WebSocketException as exc:  # e.g. HTTP 404: not a roomcast server at that URL
            self.state = "failed"
            self._error = ConnectionError(f"no roomcast WebSocket at {self._ws_url}: {exc}")
            raise self._error from exc
        except BaseException as exc:
            self.state = "failed"
            self._error = exc
            raise
        self._link_up(link)
        self._supervisor = asyncio.create_task(self._supervise(), name="roomcast-client")
        if self._tokens.callback is not None:
            renewals = self._tokens.renew_forever(self._renew)
            self._renewer = asyncio.create_task(renewals, name="roomcast-client-auth")

    async def _open_link(self) -> Link:
        return await Link.open(self._query_url(), self._format, self._timeout, self._dial)

    async def _first_link(self) -> Link:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._overload_timeout
        while True:
            try:
                return await self._open_first()
            except Overloaded as exc:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise
                delay = min(self._backoff.next_delay_after(exc.retry_after), remaining)
                log.info("roomcast client: %s; connecting again in %.2fs", exc.message, delay)
                await asyncio.sleep(delay)

    async def _open_first(self) -> Link:
        fetched = await self._tokens.fresh()
        try:
            return await self._open_link()
        except AuthError:
            if self._tokens.callback is None or fetched:
                raise
            # The token given with it was refused: one more try with the callback's.
            await self._tokens.fresh(force=True)
            return await self._open_link()

    def _link_up(self, link: Link) -> None:
        connected = link.connected
        self.connected = connected
        self.client_id = connected.client_id
        self._resume_key = connected.resume_key
        self._link = link
        self._link_since = asyncio.get_running_loop().time()
        self.state = "connected"
        # Re-attach first, then re-send what was never answered, in the original order.
        unanswered = list(self._pending.values())
        for channel in self.channels:
            channel.on_link_up()
        for entry in unanswered:
            link.send(entry.frame)
        link.start(self._dispatch)
        self._emit("resumed" if connected.resumed else "connected")

    def _link_down(self, link: Link) -> None:
        self._link = None
        self.state = "disconnected"
        for ref, entry in list(self._pending.items()):
            if not entry.resend:  # its reply can never come; the owner re-issues it
                self._forget(ref)
        for channel in self.channels:
            channel.on_link_down()
        reason = f"{link.close_code} {link.close_reason}".strip()
        self._emit("disconnected", reason=reason)

    async def _supervise(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            link = self._link
            assert link is not None
            await link.done.wait()
            error = link.terminal_error()
            expired = isinstance(error, AuthError) and self._tokens.callback is not None
            if error is not None and not expired:
                self._fail(error)
                return
            if loop.time() - self._link_since >= STABLE_AFTER_S:
                self._backoff.reset()
            self._link_down(link)
            # A token that ran out (4001): reconnect with a fresh one from the callback.
            new = await self._reconnect(token_refused=expired)
            if new is None:
                return
            self._link_up(new)

    async def _reconnect(self, token_refused: bool = False) -> Link | None:
        retry_after: float | None = None  # what a full server asked for at the last attempt
        while True:
            delay = self._backoff.next_delay_after(retry_after)
            retry_after = None
            log.info("roomcast client: reconnecting in %.2fs", delay)
            await asyncio.sleep(delay)
            try:
                fetched = await self._tokens.fresh(force=token_refused)
            except Unauthorized as exc:  # the callback says: no more tokens for us
                self._fail(exc if isinstance(exc, AuthError) else AuthError(exc.message))
                return None
            except Exception as exc:  # its backend may be down for a moment: retry
                log.warning("roomcast client: auth_callback failed: %r", exc)
                continue
            try:
                return await self._open_link()
            except Overloaded as exc:
                retry_after = exc.retry_after
                log.info("roomcast client: server refused the connection: %s", exc)
            except RoomcastError as exc:
                if exc.code == Unauthorized.code and self._tokens.callback and not fetched:
                    token_refused = True  # try once more with a token fresh from the callback
                    continue
                if exc.code < 50000:  # refused (bad credentials, bad client_id): final
                    self._fail(exc)
                    return None
                log.info("roomcast client: server refused the connection: %s", exc)
            except (OSError, TimeoutError, WebSocketException) as exc:
                log.info("roomcast client: reconnect failed: %r", exc)
            token_refused = False

    # ------------------------------------------------------------------ tokens

    async def _renew(self) -> bool:
        try:
            token = await self._tokens.from_callback()
        except Exception as exc:
            self._renewal_failed(f"auth_callback failed: {exc!r}", exc)
            return False
        if self.state == "connected":
            try:
                await self.call(m.Auth(token=token))
            except RoomcastError as exc:  # 40100: the server keeps the current token
                self._renewal_failed(f"the server refused the new token: {exc.message}", exc)
                return False
            except Exception:  # closed, or failed for good: nothing to renew
                return False
        self._tokens.set(token)
        self._take_capability(token)
        log.debug("roomcast client: token renewed")
        self._emit("renewed")
        return True

    def _take_capability(self, token: str) -> None:
        """After a renewal the server applies the new token's capability: say so in
        ``connected.capability``, as a new connection's ``connected`` would."""
        capability = token_capability(token)
        if self.connected is not None and capability is not None:
            self.connected = msgspec.structs.replace(self.connected, capability=capability)

    def _renewal_failed(self, reason: str, error: BaseException) -> None:
        log.warning("roomcast client: token renewal failed: %s", reason)
        self._emit("renewal_failed", reason=reason, error=error)

    def _fail(self, error: BaseException) -> None:
        log.error("roomcast client: giving up: %s", error)
        self.state = "failed"
        self._error = error
        self._link = None
        if self._renewer is not None and self._renewer is not asyncio.current_task():
            self._renewer.cancel()
        self._end_all(error)
        self._emit("failed", reason=str(error), error=error)

    def _set_closed(self, reason: str) -> None:
        if self.state == "closed":
            return
        self.state = "closed"
        self._end_all(ClientClosed("the client is closed"))
        self._emit("closed", reason=reason)

    def _end_all(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        self._idle.set()
        for entry in pending.values():
            entry.on_fail(error)
        for channel in self.channels:
            channel.on_client_end(None if isinstance(error, ClientClosed) else error)

    def _emit(
        self, event: StateEvent, *, reason: str | None = None, error: BaseException | None = None
    ) -> None:
        self._listeners.emit(StateChange(event, self.state, self.connection_id, reason, error))


class _Connecting:
    """What :func:`connect` returns: await it, or use it as ``async with``."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def __await__(self) -> Generator[Any, None, Client]:
        return self._start().__await__()

    async def _start(self) -> Client:
        await self._client.start()
        return self._client

    async def __aenter__(self) -> Client:
        return await self._start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._client.close()


def connect(
    url: str = "http://127.0.0.1:8000",
    *,
    client_id: str | None = None,
    token: str | None = None,
    key: str | None = None,
    auth_callback: AuthCallback | None = None,
    format: Format = "json",
    backoff: Backoff | None = None,
    timeout: float = 10.0,
    overload_timeout: float = OVERLOAD_TIMEOUT_S,
    dial: Dial = dial_websocket,
) -> _Connecting:
    """Connect to a roomcast server.

    Example::

        async with roomcast.client.connect("http://127.0.0.1:8000", client_id="alice") as c:
            serial = await c.channels.get("room:lunch").publish("tacos?")

    ``client = await connect(...)`` works too (then call ``await client.close()``).

    Args:
        url: The server's HTTP base or WebSocket URL; the other arguments are
            :class:`Client`'s (``client_id``, ``token``, ``key``, ``auth_callback``,
            ``format``, ``backoff``, ``timeout``, ``overload_timeout``, ``dial``),
            documented there.

    Returns:
        An awaitable that connects and gives the :class:`Client`; also an async context
        manager that closes it on exit.

    Raises:
        AuthError: The server refused the credentials (code 40100, or HTTP 401 at the
            upgrade).
        Overloaded: The server was still full after ``overload_timeout`` seconds.
        RoomcastError: The server refused the connection for another reason.
        OSError: The server could not be reached (this is not retried).
        ConnectionError: No roomcast WebSocket answers at the URL (another HTTP status).
    """
    return _Connecting(
        Client(
            url,
            client_id=client_id,
            token=token,
            key=key,
            auth_callback=auth_callback,
            format=format,
            backoff=backoff,
            timeout=timeout,
            overload_timeout=overload_timeout,
            dial=dial,
        )
    )
