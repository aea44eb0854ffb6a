"""The one settings object: each setting is a ``roomcast serve`` flag and a ``ROOMCAST_<NAME>``
environment variable (a flag wins over the environment, which wins over the default)."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from dataclasses import field as _field
from functools import cached_property
from pathlib import Path
from typing import Any

import platformdirs

from roomcast.backends import shown_url
from roomcast.protocol.capabilities import OPERATIONS
from roomcast.protocol.keys import KeyRing, KeySpecError

# Anonymous clients may do everything except the ``*-any`` operations and ``claim``
# (docs/protocol.md §6): claims decide which agent worker answers a message.
DEFAULT_ANONYMOUS_CAPABILITY = json.dumps(
    {"*": sorted(op for op in OPERATIONS if not op.endswith("-any") and op != "claim")}
)


class SettingsError(ValueError):
    """A setting with a value that cannot be used; the message names the setting."""


PANELS = ("Server", "Store", "Agents", "Auth", "Limits")
"""The groups ``roomcast serve --help`` shows the settings in, in this order."""


@dataclass(frozen=True, slots=True)
class Spec:
    """How ``--help`` shows a setting: one short line of what it does (docs/configuration.md
    says the rest), its group, the placeholder of its value, and its default in words
    where the value alone would not say it."""

    panel: str
    help: str
    metavar: str = "N"
    default: str | None = None
    secret: bool = False


def _spec(panel: str, help: str, **kw: Any) -> dict[str, Spec]:
    return {"spec": Spec(panel, help, **kw)}


@dataclass(frozen=True, kw_only=True)
class Settings:
    """Every tunable of a server. Field metadata holds how ``--help`` shows it (:class:`Spec`)."""

    host: str = _field(
        default="127.0.0.1",
        metadata=_spec("Server", "Address to listen on (0.0.0.0: all IPv4).", metavar="ADDR"),
    )
    port: int = _field(default=8000, metadata=_spec("Server", "TCP port to listen on."))
    store: str = _field(
        default="",
        metadata=_spec(
            "Store",
            "Where channels live: sqlite:///PATH, redis://HOST:PORT/DB (several servers; "
            "also redis+sentinel://, redis+cluster://) or memory:// (nothing kept).",
            metavar="URL",
        ),
    )
    keys: tuple[str, ...] = _field(
        default=(),
        metadata=_spec(
            "Auth",
            "An API key NAME:SECRET[:CAP], CAP a capability JSON (none: all); repeatable "
            "(ROOMCAST_KEYS: one per line).",
            metavar="KEY",
            default="none",
            secret=True,
        ),
    )
    keys_file: str = _field(
        default="",
        metadata=_spec(
            "Auth",
            "A file of more keys, one per line (# comments).",
            metavar="FILE",
            default="none",
        ),
    )
    agents: str = _field(
        default="",
        metadata=_spec(
            "Agents",
            "A TOML file of [[agents]] to run in this server (docs/agents.md); none: no agents.",
            metavar="FILE",
            default="one agent, assistant, in room:*",
        ),
    )
    allow_anonymous: bool | None = _field(
        default=None,
        metadata=_spec(
            "Auth",
            "Let clients connect without credentials, naming themselves "
            "(--no-allow-anonymous: never).",
            default="on for a loopback host with no keys",
        ),
    )
    anonymous_capability: str = _field(
        default=DEFAULT_ANONYMOUS_CAPABILITY,
        metadata=_spec(
            "Auth",
            "What anonymous clients may do (docs/protocol.md §6).",
            metavar="JSON",
            default="all but *-any and claim",
        ),
    )
    presence_grace_s: float = _field(
        default=15.0,
        metadata=_spec("Server", "Seconds a dropped client stays present, for its resume."),
    )
    resume_window_s: float = _field(
        default=120.0,
        metadata=_spec("Server", "Seconds a dropped connection may resume."),
    )
    dedup_window_s: float = _field(
        default=86400.0,
        metadata=_spec("Store", "Seconds a publish id is remembered: a repeat stores nothing."),
    )
    heartbeat_s: float = _field(
        default=15.0,
        metadata=_spec("Server", "Idle seconds before a heartbeat; the ping interval too."),
    )
    publish_rate: float = _field(
        default=50.0,
        metadata=_spec("Limits", "Publishes a second per connection (0: no rate limits)."),
    )
    publish_burst: int = _field(
        default=200, metadata=_spec("Limits", "Publishes at once above the rate.")
    )
    ephemeral_rate: float = _field(
        default=50.0,
        metadata=_spec("Limits", "Signals and presence changes a second per connection."),
    )
    ephemeral_burst: int = _field(
        default=200,
        metadata=_spec("Limits", "Signals and presence changes at once above the rate."),
    )
    append_rate: float = _field(
        default=500.0,
        metadata=_spec("Limits", "Appends to streamed messages a second per connection."),
    )
    max_message_bytes: int = _field(
        default=64 * 1024, metadata=_spec("Limits", "Largest message data + extras.")
    )
    max_stream_bytes: int = _field(
        default=1024 * 1024, metadata=_spec("Limits", "Largest text of a streamed message.")
    )
    max_objects_bytes: int = _field(
        default=256 * 1024, metadata=_spec("Limits", "Largest live-object state of a channel.")
    )
    max_history_limit: int = _field(
        default=1000, metadata=_spec("Limits", "Largest history page (at most 1000).")
    )
    rollup_ms: float = _field(
        default=25.0,
        metadata=_spec("Limits", "Appends within this many ms go out as one (0: off)."),
    )
    stream_idle_timeout_s: float = _field(
        default=30.0,
        metadata=_spec("Limits", "Seconds an idle streamed message lives; then it fails."),
    )
    cancel_grace_s: float = _field(
        default=5.0,
        metadata=_spec("Limits", "Seconds a cancelled stream's author has to end it."),
    )
    outbound_queue: int = _field(
        default=8192,
        metadata=_spec("Limits", "Messages queued for a connection; more: closed as slow."),
    )
    outbound_bytes: int = _field(
        default=4 * 1024 * 1024,
        metadata=_spec("Limits", "Bytes queued for a connection; more: it waits."),
    )
    outbound_stall_s: float = _field(
        default=30.0,
        metadata=_spec("Limits", "Seconds a waiting connection may take nothing; then closed."),
    )
    max_channels_per_connection: int = _field(
        default=200, metadata=_spec("Limits", "Channels one connection may attach.")
    )
    max_channels_per_key_connection: int = _field(
        default=10_000,
        metadata=_spec("Limits", "Channels one connection with an API key (an agent) may attach."),
    )
    activity_hint_s: float = _field(
        default=60.0,
        metadata=_spec(
            "Server", "Seconds between channel.active hints for one channel (per node)."
        ),
    )
    max_connections_per_client: int = _field(
        default=50, metadata=_spec("Limits", "Connections one client_id may hold.")
    )
    max_presence_members: int = _field(
        default=2000, metadata=_spec("Limits", "Presence members of one channel.")
    )
    max_connections: int = _field(
        default=10000,
        metadata=_spec("Limits", "Connections this process holds; more get 503."),
    )
    header_timeout_s: float = _field(
        default=10.0,
        metadata=_spec("Server", "Seconds a connection has to send a request's headers."),
    )
    keep_alive_s: float = _field(
        default=5.0,
        metadata=_spec("Server", "Seconds an HTTP connection may idle between requests."),
    )
    max_pending_writes: int = _field(
        default=50000,
        metadata=_spec("Store", "Writes waiting for the store; more are refused (503)."),
    )
    retention: str = _field(
        default="0",
        metadata=_spec(
            "Store", "How long messages are kept: 30d, 12h, ...; 0 keeps all.", metavar="AGE"
        ),
    )
    allowed_origins: str = _field(
        default="",
        metadata=_spec(
            "Server",
            "Other web origins whose pages may connect, comma-separated; * allows any.",
            metavar="LIST",
            default="none",
        ),
    )
    allowed_hosts: str = _field(
        default="",
        metadata=_spec(
            "Server",
            "Host names served, comma-separated (*.example.com; * any), loopback ones always.",
            metavar="LIST",
            default="loopback ones, any if host is not",
        ),
    )
    auth_url: str = _field(
        default="",
        metadata=_spec(
            "Auth",
            "Where the web UI gets a token (POST {client_id}).",
            metavar="URL",
            default="none: it connects anonymously",
        ),
    )
    log_level: str = _field(
        default="info",
        metadata=_spec("Server", "debug, info, warning or error.", metavar="LEVEL"),
    )

    # ------------------------------------------------------------------ derived

    @property
    def store_url(self) -> str:
        if self.store:
            return self.store
        return f"sqlite:///{default_database_path()}"

    @property
    def store_shown(self) -> str:
        """``store_url`` for logs and the banner: its passwords are masked."""
        return shown_url(self.store_url)

    @property
    def local_url(self) -> str:
        """How this process reaches its own server: over loopback when bound to all
        addresses (or to another one)."""
        host = self.host
        if not is_loopback(host):
            host = "::1" if ":" in host else "127.0.0.1"
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{self.port}"

    @property
    def origins(self) -> frozenset[str]:
        """``allowed_origins`` as a set (``*`` stands for any origin)."""
        return frozenset(
            o.strip().rstrip("/") for o in self.allowed_origins.split(",") if o.strip()
        )

    def origin_allowed(self, origin: str | None, host: str | None, scheme: str) -> bool:
        """Whether a request with this ``Origin`` header may go on (see ``allowed_origins``)."""
        if origin is None:
            return True  # not a browser page
        origin = origin.rstrip("/")
        origins = self.origins
        if "*" in origins or origin in origins:
            return True
        return host is not None and origin == f"{scheme}://{host}"

    @property
    def hosts(self) -> frozenset[str]:
        """``allowed_hosts`` as a set of lower-case names (``*`` stands for any); when unset,
        ``*`` unless the server is bound to loopback."""
        names = frozenset(host_name(h) for h in self.allowed_hosts.split(",") if h.strip())
        if not names and not is_loopback(self.host):
            return frozenset({"*"})
        return names

    def host_allowed(self, host: str | None) -> bool:
        """Whether a request with this ``Host`` header (any port) is for this server: a
        loopback name, or one of ``allowed_hosts``. No Host at all is not a browser's."""
        if host is None:
            return True
        name = host_name(host)
        if name in LOOPBACK_NAMES:
            return True
        hosts = self.hosts
        if "*" in hosts or name in hosts:
            return True
        return any(h.startswith("*.") and name.endswith(h[1:]) for h in hosts)

    @property
    def retention_ms(self) -> int:
        return parse_duration_ms(self.retention, "retention")

    @cached_property
    def key_ring(self) -> KeyRing:
        """The keys, parsed (``validate`` has already checked them)."""
        return KeyRing.parse(self.keys)

    @property
    def anonymous_enabled(self) -> bool:
        if self.allow_anonymous is not None:
            return self.allow_anonymous
        return is_loopback(self.host) and not self.keys

    def describe(self) -> list[tuple[str, str]]:
        """(name, value) for the start-up print; secrets are masked."""
        out = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "keys":
                names = [spec.split(":", 1)[0] for spec in value]
                value = ", ".join(names) if names else "(none)"
            elif f.metadata["spec"].secret and value:
                value = "********"
            elif f.name == "store":
                value = self.store_shown if value else f"{self.store_url} (default)"
            elif f.name == "allowed_hosts" and not value:
                value = f"auto ({', '.join(sorted(self.hosts)) or 'loopback names only'})"
            elif f.name == "allow_anonymous" and value is None:
                value = f"auto ({'on' if self.anonymous_enabled else 'off'} for {self.host})"
            out.append((f.name, str(value)))
        return out

    # ------------------------------------------------------------------ loading

    @classmethod
    def load(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Defaults, then ``ROOMCAST_*`` variables, then ``overrides`` that are not None."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get("ROOMCAST_" + f.name.upper())
            if raw is not None and raw != "":
                values[f.name] = _convert(f.name, str(f.type), raw)
        for name, value in overrides.items():
            if name == "keys" and value is not None:
                value = tuple(value) or None  # no --key: the environment's keys stay
            if value is not None:
                values[name] = value
        if values.get("keys_file"):
            values["keys"] = (*values.get("keys", ()), *read_keys_file(values["keys_file"]))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        positive = (
            "port",
            "max_message_bytes",
            "max_stream_bytes",
            "outbound_queue",
            "outbound_bytes",
            "outbound_stall_s",
            "max_channels_per_connection",
            "max_channels_per_key_connection",
            "max_connections_per_client",
            "max_presence_members",
            "max_connections",
            "max_pending_writes",
            "max_objects_bytes",
            "max_history_limit",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        if self.max_history_limit > 1000:
            raise SettingsError(f"max_history_limit is at most 1000, got {self.max_history_limit}")
        if self.rollup_ms < 0:
            raise SettingsError("rollup_ms must be 0 (off) or positive")
        for name in (
            "presence_grace_s",
            "resume_window_s",
            "dedup_window_s",
            "heartbeat_s",
            "header_timeout_s",
            "keep_alive_s",
            "stream_idle_timeout_s",
            "cancel_grace_s",
            "activity_hint_s",
        ):
            if getattr(self, name) <= 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("publish_rate", "ephemeral_rate", "append_rate"):
            if getattr(self, name) < 0:
                raise SettingsError(f"{name} must be 0 (no limit) or positive")
        parse_duration_ms(self.retention, "retention")
        if self.log_level.lower() not in ("debug", "info", "warning", "error"):
            raise SettingsError(
                f"log_level must be debug, info, warning or error, not {self.log_level!r}"
            )
        try:
            json.loads(self.anonymous_capability)
        except ValueError as exc:
            raise SettingsError(f"anonymous_capability is not JSON: {exc}") from None
        try:
            KeyRing.parse(self.keys)
        except KeySpecError as exc:
            raise SettingsError(f"keys: {exc}") from None


def read_keys_file(path: str) -> tuple[str, ...]:
    """The keys of a keys file: one per line; blank lines and ``#`` comments are skipped."""
    try:
        text = Path(path).expanduser().read_text()
    except OSError as exc:
        raise SettingsError(f"keys_file {path!r} cannot be read: {exc.strerror}") from None
    lines = (line.strip() for line in text.splitlines())
    return tuple(line for line in lines if line and not line.startswith("#"))


def _convert(name: str, type_name: str, raw: str) -> Any:
    if type_name.startswith("tuple"):
        return tuple(line.strip() for line in raw.splitlines() if line.strip())
    try:
        if "bool" in type_name:
            lowered = raw.strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if type_name == "int":
            return int(raw)
        if type_name == "float":
            return float(raw)
    except ValueError:
        raise SettingsError(
            f"ROOMCAST_{name.upper()}={raw!r} is not a valid {type_name.split(' ')[0]}"
        ) from None
    return raw


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000, None: 1000}


def parse_duration_ms(text: str, name: str) -> int:
    """``30d``, ``12h``, ``90m``, ``45s``, ``500ms`` or a bare number of seconds."""
    match = _DURATION.match(text)
    if not match:
        raise SettingsError(f"{name} {text!r} is not a duration like 30d, 12h, 90m or 0")
    return int(float(match.group(1)) * _UNIT_MS[match.group(2)])


LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
"""The host names a loopback server always answers to."""


def host_name(host: str) -> str:
    """The name of a ``Host`` header, lower case, without its port, brackets or final dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].partition("]")[0]
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    return host.rstrip(".")


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def default_database_path() -> Path:
    return Path(platformdirs.user_data_dir("roomcast")) / "roomcast.db"


def shown_default(name: str) -> str:
    """A setting's default as ``--help`` shows it: in words where the value would not say
    what it does, the default file's path for the store, numbers as written (15, not 15.0)."""
    field = next(f for f in fields(Settings) if f.name == name)
    spec: Spec = field.metadata["spec"]
    if spec.default is not None:
        return spec.default
    if name == "store":
        return f"roomcast.db in {default_database_path().parent}"
    if isinstance(field.default, float):
        return format(field.default, "g")
    return str(field.default)


SETTING_NAMES = [f.name for f in fields(Settings)]
