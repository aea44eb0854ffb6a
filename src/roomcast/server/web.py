"""The web UI: ``/`` serves the page, ``/static/...`` its ES modules, CSS and icon
(``favicon.svg``; ``favicon.ico`` is the same icon drawn at 32 px, also at ``/favicon.ico``).
The page is served with a strict Content-Security-Policy and ``Referrer-Policy: no-referrer``.

The files live in the package (``roomcast/web``), so there is no build step: the browser
loads them as they are. They are read once, at start-up, and served with an ``ETag`` and
``Cache-Control: no-cache``, so a browser revalidates each load (a 304 is cheap) and always
runs the files of the server it talks to, never a stale copy after an upgrade.
"""

from __future__ import annotations

import hashlib
import html
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from roomcast.protocol.errors import NotFound

from .api import Api, Returns
from .errors import error_response

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".json": "application/json",
    ".ts": "text/plain; charset=utf-8",  # roomcast.d.ts: TypeScript declarations
}

# The page's settings go in a <meta> tag, so the page needs no second request to start.
AUTH_URL_MARK = "{{auth_url}}"

# A Host header (or an auth_url's host) that may go into the policy as it is.
_HOST = re.compile(r"(?:[A-Za-z0-9.\-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")


def content_security_policy(host: str | None, auth_url: str = "") -> str:
    """The page's policy: its scripts, styles, images and connections come from its own
    server only (no inline script or style markup: the page sets styles through the CSSOM,
    which the policy allows), plus the WebSocket of the host the page was loaded from
    (``ws:``/``wss:``, which ``'self'`` does not cover in every browser) and the origin of
    ``auth_url``, where the page gets its tokens."""
    connect = ["'self'"]
    if host and _HOST.fullmatch(host):
        connect += [f"ws://{host}", f"wss://{host}"]
    auth = urlsplit(auth_url)
    auth_host = auth.netloc.rpartition("@")[2]
    if auth.scheme in ("http", "https") and _HOST.fullmatch(auth_host):
        connect.append(f"{auth.scheme}://{auth_host}")
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self'",
            "connect-src " + " ".join(connect),
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'self'",
            "frame-ancestors 'none'",
        ]
    )


class StaticName(msgspec.Struct, frozen=True):
    """The path parameter of ``/static/{name}``."""

    name: str


class StaticFolderName(msgspec.Struct, frozen=True):
    """The path parameters of ``/static/{folder}/{name}``."""

    folder: str
    name: str


# The UI's routes in the OpenAPI document (they are served by :func:`routes`).
api = Api()


def _document_file(
    path: str,
    summary: str,
    served: str,
    media_type: str = "text/javascript",
    params: type[msgspec.Struct] | None = None,
) -> None:
    """A GET of one file; with ``params`` (a path naming the file), a 404 for no such file."""
    missing = (Returns("404", "No such file (error 40400)."),) if params is not None else ()
    api.document(
        "GET",
        path,
        summary=summary,
        tag="web",
        authenticated=False,
        path_params=params,
        returns=(
            Returns("200", served, media_type=media_type, schema={"type": "string"}),
            Returns("304", "Not modified (`If-None-Match` holds its `ETag`)."),
            *missing,
        ),
    )


_document_file("/", "The web UI (docs/web.md)", "The page.", "text/html")
_document_file(
    "/favicon.ico",
    "The web UI's icon, for clients that ask for it there (the page links its SVG)",
    "The icon.",
    "image/x-icon",
)
_document_file(
    "/static/{name}",
    "A file of the web UI: its ES modules (`roomcast.js`, ...), `style.css` and its icon",
    "The file (`text/javascript`; `text/css` for `style.css`).",
    params=StaticName,
)
# The modules of a folder: those of `roomcast.js`, in `roomcast/`.
_document_file(
    "/static/{folder}/{name}",
    "A file of a folder of the web UI: the modules of `roomcast.js` (`roomcast/...`)",
    "The file (`text/javascript`).",
    params=StaticFolderName,
)


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


def _load(name: str, body: bytes) -> StaticFile:
    suffix = name[name.rfind(".") :] if "." in name else ""
    content_type = CONTENT_TYPES.get(suffix, "application/octet-stream")
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return StaticFile(body, content_type, etag)


def load_files() -> dict[str, StaticFile]:
    """Every file of ``roomcast/web`` by name, and of its folders as ``folder/name``."""
    files: dict[str, StaticFile] = {}
    for entry in (resources.files("roomcast") / "web").iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_file():
            files[entry.name] = _load(entry.name, entry.read_bytes())
            continue
        for inner in entry.iterdir():
            if inner.is_file() and not inner.name.startswith((".", "_")):
                name = f"{entry.name}/{inner.name}"
                files[name] = _load(name, inner.read_bytes())
    return files


def _respond(request: Request, found: StaticFile) -> Response:
    headers = {
        "ETag": found.etag,
        "Cache-Control": "no-cache",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",  # links in messages do not tell where they were
    }
    if request.headers.get("if-none-match") == found.etag:
        return Response(status_code=304, headers=headers)
    return Response(found.body, media_type=found.content_type, headers=headers)


def routes(auth_url: str = "") -> list[BaseRoute]:
    """The UI's routes: ``GET /`` (the page), ``GET /static/{name}`` and
    ``GET /static/{folder}/{name}``.

    Args:
        auth_url: Where the page gets a token (empty: it connects anonymously).
    """
    files = load_files()
    page = files.pop("index.html")
    text = page.body.decode().replace(AUTH_URL_MARK, html.escape(auth_url, quote=True))
    index = _load("index.html", text.encode())

    favicon = files["favicon.ico"]

    async def index_page(request: Request) -> Response:
        response = _respond(request, index)
        # The page must not be framed by another site (clickjacking).
        response.headers["X-Frame-Options"] = "DENY"
        policy = content_security_policy(request.headers.get("host"), auth_url)
        response.headers["Content-Security-Policy"] = policy
        return response

    async def favicon_ico(request: Request) -> Response:
        return _respond(request, favicon)

    async def static(request: Request) -> Response:
        folder = request.path_params.get("folder")
        name = request.path_params["name"]
        found = files.get(f"{folder}/{name}" if folder else name)
        if found is None:
            return error_response(request, NotFound(f"no static file {request.url.path}"))
        return _respond(request, found)

    return [
        Route("/", index_page, methods=["GET", "HEAD"]),
        Route("/favicon.ico", favicon_ico, methods=["GET", "HEAD"]),
        Route("/static/{name}", static, methods=["GET", "HEAD"]),
        Route("/static/{folder}/{name}", static, methods=["GET", "HEAD"]),
    ]
