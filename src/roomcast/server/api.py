"""Declared HTTP operations: one table that both the router and the OpenAPI document read.

Each operation names the msgspec types it reads (path parameters, query, body) and returns,
so the document cannot drift from what the handlers accept. A handler gets a :class:`Call`
(the caller, the validated path, helpers that decode the query and the body into those
types) and returns a msgspec Struct (sent as JSON) or a Starlette response. Errors become
the §7 error format in one place.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import msgspec.inspect
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from roomcast.core.authz import Principal
from roomcast.core.node import Node
from roomcast.protocol.codec import decode_json_body
from roomcast.protocol.errors import BadRequest, RoomcastError, TooLarge
from roomcast.protocol.http import ENVELOPE, describe_validation_error

from .auth import Identity, request_identity
from .errors import error_response, internal_error_response, json_response

log = logging.getLogger("roomcast.http")

T = TypeVar("T")
Handler = Callable[["Call"], Awaitable[msgspec.Struct | Response]]
Endpoint = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class Returns:
    """One documented response: JSON of ``types`` (several: any one of them), or another
    media type described by ``schema``."""

    status: str
    description: str
    types: tuple[type[msgspec.Struct], ...] = ()
    media_type: str = "application/json"
    schema: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Param:
    """A parameter that no request type carries (headers, and auth's ``client_id``)."""

    name: str
    where: str  # "header" or "query"
    description: str
    schema: dict[str, Any] = field(default_factory=lambda: {"type": "string"})


@dataclass(frozen=True, slots=True)
class Operation:
    """One method on one path.

    ``body`` is a WebSocket request type: the body holds its fields except
    :data:`~roomcast.protocol.http.ENVELOPE`; with ``body_many`` it may also be a list of
    them. ``query`` likewise names the type the query string is decoded into.
    ``authenticated`` operations take the caller's identity (§6) and answer errors in the
    §7 format.
    """

    method: str
    path: str
    handler: Handler | None
    summary: str
    tag: str
    description: str = ""
    path_params: type[msgspec.Struct] | None = None
    query: type[msgspec.Struct] | None = None
    params: tuple[Param, ...] = ()
    body: type[msgspec.Struct] | None = None
    body_many: bool = False
    body_required: bool = True
    returns: tuple[Returns, ...] = ()
    authenticated: bool = True

    @property
    def operation_id(self) -> str:
        if self.handler is not None:
            return self.handler.__name__
        return self.method.lower() + self.path.replace("/", "_").replace("{", "").replace("}", "")


class Call:
    """One HTTP request, as a handler sees it."""

    def __init__(self, request: Request, node: Node, identity: Identity | None, where: Any) -> None:
        self.request = request
        self.node = node
        self._identity = identity
        self.where = where  # the validated path parameters (the operation's path_params)

    @property
    def principal(self) -> Principal:
        assert self._identity is not None, "the operation is not authenticated"
        return self._identity.principal

    @property
    def expires_at(self) -> float | None:
        """When the caller's token expires (seconds since the epoch); None for a key or
        anonymous access."""
        return self._identity.expires_at if self._identity is not None else None

    def query(self, type_: type[T], **fixed: Any) -> T:
        """The query string decoded into ``type_`` (strings converted to numbers); ``fixed``
        (path parameters) win over the query. An empty value is a value: ``?limit=`` is not
        a number (40000), as the document says."""
        raw = {
            k: v
            for k, v in self.request.query_params.items()
            if k not in fixed and k not in ENVELOPE
        }
        return convert({**raw, **fixed}, type_, where="query", strict=False)

    async def json(self, *, limit: int, required: bool = True) -> Any:
        """The body, parsed as JSON; ``None`` for an empty body that is not ``required``."""
        body = await read_body(self.request, limit)
        if not body.strip():
            if required:
                raise BadRequest("a JSON body is required")
            return None
        return decode_json_body(body)

    @staticmethod
    def body_as(raw: Any, type_: type[T], *, index: int | None = None, **fixed: Any) -> T:
        """A JSON object body (or one item of a list body) as the request ``type_``, with
        ``fixed`` (the path parameters) filled in; envelope fields in the body are ignored."""
        if raw is None:
            raw = {}
        if not isinstance(raw, dict):
            what = "the body" if index is None else f"item {index} of the body"
            raise BadRequest(f"{what} must be a JSON object")
        integers = _integer_fields(type_)
        fields = {
            # JSON has one number type: 2.0 is the integer 2 (as JSON Schema says), so an
            # integer field takes it; data and extras keep their numbers as they are.
            k: int(v) if k in integers and isinstance(v, float) and v.is_integer() else v
            for k, v in raw.items()
            if k not in ENVELOPE
        }
        return convert({**fields, **fixed}, type_, where="body", index=index)


_INTEGER_FIELDS: dict[type[Any], frozenset[str]] = {}


def _integer_fields(type_: type[Any]) -> frozenset[str]:
    """The fields of a Struct that hold an integer (possibly also null)."""
    known = _INTEGER_FIELDS.get(type_)
    if known is None:
        known = _INTEGER_FIELDS[type_] = _find_integer_fields(type_)
    return known


def _find_integer_fields(type_: type[Any]) -> frozenset[str]:
    info = msgspec.inspect.type_info(type_)
    if not isinstance(info, msgspec.inspect.StructType):
        return frozenset()
    out = set()
    for field_info in info.fields:
        kinds = field_info.type
        members = kinds.types if isinstance(kinds, msgspec.inspect.UnionType) else (kinds,)
        if any(isinstance(t, msgspec.inspect.IntType) for t in members):
            out.add(field_info.name)
    return frozenset(out)


def convert(
    raw: Any, type_: type[T], *, where: str, index: int | None = None, strict: bool = True
) -> T:
    try:
        return msgspec.convert(raw, type_, strict=strict)
    except msgspec.ValidationError as exc:
        raise BadRequest(describe_validation_error(str(exc), where, index)) from None
    except RecursionError:  # a body nested deeper than its type could ever be
        raise BadRequest(f"invalid {where}: nested too deeply") from None


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (41300) one over ``limit`` bytes without reading it all.

    Raises starlette's ``ClientDisconnect`` if the client goes away before sending it all:
    :func:`endpoint` treats that as the client's leaving, not as an error of ours.
    """
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes, over the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"the body is over the {limit} byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


class Api:
    """The table of operations; :meth:`operation` registers a handler in it."""

    def __init__(self) -> None:
        self.operations: list[Operation] = []

    def operation(self, method: str, path: str, **spec: Any) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self.operations.append(Operation(method, path, handler, **spec))
            return handler

        return register

    def document(self, method: str, path: str, **spec: Any) -> None:
        """An operation served by something else (the WebSocket route), for the document."""
        self.operations.append(Operation(method, path, None, **spec))

    def routes(self) -> list[Route]:
        """One route per path, serving each of its methods: a request with another method
        gets 405 with every method of the path in ``Allow``."""
        by_path: dict[str, dict[str, Endpoint]] = {}
        for op in self.operations:
            if op.handler is not None:
                by_path.setdefault(op.path, {})[op.method] = endpoint(op)
        return [_route(path, endpoints) for path, endpoints in by_path.items()]


def _route(path: str, endpoints: dict[str, Endpoint]) -> Route:
    if len(endpoints) == 1:
        [(method, only)] = endpoints.items()
        return Route(path, only, methods=[method], name=only.__name__)

    async def by_method(request: Request) -> Response:
        return await endpoints["GET" if request.method == "HEAD" else request.method](request)

    name = "_or_".join(e.__name__ for e in endpoints.values())
    return Route(path, by_method, methods=list(endpoints), name=name)


def endpoint(op: Operation) -> Endpoint:
    """The Starlette endpoint of ``op``: identity, path, the handler, errors."""
    handler = op.handler
    assert handler is not None

    async def run(request: Request) -> Response:
        node: Node = request.app.state.node
        try:
            identity = request_identity(node, request) if op.authenticated else None
            where = None
            if op.path_params is not None:
                where = convert(request.path_params, op.path_params, where="path", strict=False)
            result = await handler(Call(request, node, identity, where))
        except RoomcastError as exc:
            return error_response(request, exc)
        except ClientDisconnect:
            # The client left before its request was read whole: nothing was done, and
            # nobody is there to read an answer (the server drops it).
            log.debug("%s %s: the client went away mid-request", request.method, request.url.path)
            return Response(status_code=499)
        except Exception as exc:
            return internal_error_response(request, exc)
        if isinstance(result, Response):
            return result
        return json_response(result)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


__all__ = ["Api", "Call", "Handler", "Operation", "Param", "Returns", "convert", "read_body"]
