"""Agent configuration: the ``[[agents]]`` entries of ``roomcast serve --agents FILE``.

Each entry becomes one frozen :class:`AgentConfig`. Bad input fails at start-up with an
:class:`AgentConfigError` that names the file, the entry and the field. Without a file,
:func:`default_agents` builds the one default agent from the environment.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from roomcast.protocol.errors import BadRequest
from roomcast.protocol.patterns import validate_pattern

ProviderName = Literal["openai", "anthropic", "scripted", "ag-ui"]
Policy = Literal["mention", "auto", "always"]
Concurrency = Literal["queue", "interrupt", "parallel"]

PROVIDERS: tuple[str, ...] = ("openai", "anthropic", "scripted", "ag-ui")
POLICIES: tuple[str, ...] = ("mention", "auto", "always")
CONCURRENCY: tuple[str, ...] = ("queue", "interrupt", "parallel")

DEFAULT_NAME = "assistant"
DEFAULT_OPENAI_MODEL = "gpt-4.1-mini"
DEFAULT_ANTHROPIC_MODEL = "claude-haiku-4-5"
DEFAULT_KEY_ENV = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY"}
DEFAULT_AG_UI_MODEL = "agent"  # an AG-UI agent's model is only a label people see

# A name is a client_id and an @mention: it must survive being typed after an `@`.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]*")
_ENV = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HEADER = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an HTTP field name (RFC 9110 token)


class AgentConfigError(ValueError):
    """An agents file that cannot be used."""


def default_system_prompt(name: str) -> str:
    return (
        f"You are {name}, a participant in a group chat with people and other agents. "
        "Each message you see starts with its speaker's name. Answer the people who ask you, "
        "plainly and in a few sentences, in the language they use."
    )


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """One agent: who it is, which model speaks for it, when it answers and its limits.

    Attributes:
        name: its ``client_id`` and the name people @mention.
        provider: ``openai`` (any OpenAI-compatible server), ``anthropic``, ``scripted`` or
            ``ag-ui`` (an agent of any framework behind an AG-UI endpoint).
        model: the model name sent to the provider (``scripted`` for scripted agents; for
            ``ag-ui`` agents only a label, ``agent`` by default).
        base_url: the API's base URL; ``None`` means the provider's own service.
        api_key_env: the environment variable holding the API key.
        system_prompt: the persona.
        policy: ``mention`` (answers when named), ``auto`` (a cheap call judges) or ``always``.
        rooms: channel patterns it belongs to (whole ``:`` segments, ``*`` only last).
        tools: names of the tools it may call.
        max_tokens: the longest answer, in tokens.
        temperature: sampling temperature; ``None`` leaves the model's default.
        budget_tokens: tokens (in + out) it may spend per room per day; ``None``: no cap.
        budget_usd: dollars it may spend per room per day; ``None``: no cap.
        price_per_mtok_in: USD per million input tokens, for cost accounting.
        price_per_mtok_out: USD per million output tokens.
        concurrency: what a new trigger does while it is answering in the same room:
            ``queue`` (wait), ``interrupt`` (cancel the running answer) or ``parallel``.
        max_chain_depth: the longest chain of agents answering agents it joins.
        max_agent_answers_per_min: answers per room per minute to messages of other agents.
        timeout_s: how long to wait for the service before the answer fails.
        idle_detach_s: a room quiet for this long, with nobody but agents present, is
            detached until it is active again (at least twice the server's
            ``activity_hint_s``).
        max_concurrent_answers: answers it streams at once, over all its rooms; the
            triggers beyond wait their turn, first come first served.
        script: for ``scripted``, the script file; ``None`` says that no model is configured.
        url: for ``ag-ui``, the agent's endpoint (``http://`` or ``https://``).
        headers_env: for ``ag-ui``, HTTP headers sent with each request, as pairs of the
            header's name and the environment variable that holds its value.
        mcp_servers: the MCP servers its ``tools`` name (``mcp:NAME``), from the file's
            ``[[mcp_servers]]`` tables (set by :func:`load_agents`, not a key of its own).
        where: where the agent was configured (``FILE: [[agents]] #N ('name')``), to start
            the errors found once the file is read (a tool that cannot be loaded, an API key
            that is not set); empty for the default agent.
    """

    name: str
    provider: ProviderName
    model: str
    base_url: str | None = None
    api_key_env: str | None = None
    system_prompt: str = ""
    policy: Policy = "mention"
    rooms: tuple[str, ...] = ("room:*",)
    tools: tuple[str, ...] = ()
    max_tokens: int = 1024
    temperature: float | None = None
    budget_tokens: int | None = None
    budget_usd: float | None = None
    price_per_mtok_in: float = 0.0
    price_per_mtok_out: float = 0.0
    concurrency: Concurrency = "queue"
    max_chain_depth: int = 3
    max_agent_answers_per_min: int = 60
    timeout_s: float = 60.0
    idle_detach_s: float = 300.0
    max_concurrent_answers: int = 64
    script: str | None = None
    url: str | None = None
    headers_env: tuple[tuple[str, str], ...] = ()
    mcp_servers: tuple[McpServerConfig, ...] = ()
    where: str = field(default="", compare=False)

    @property
    def place(self) -> str:
        """How errors about this agent start: :attr:`where`, or its name."""
        return self.where or f"agent {self.name!r}"

    @property
    def key_env(self) -> str | None:
        """The variable the API key is read from (the provider's usual one by default)."""
        return self.api_key_env or DEFAULT_KEY_ENV.get(self.provider)


@dataclass(frozen=True, slots=True)
class McpServerConfig:
    """One ``[[mcp_servers]]`` table: an MCP server whose tools agents may call.

    Attributes:
        name: how agents name it (``tools = ["mcp:NAME"]``) and the first part of its tools'
            names (``NAME__tool``).
        command: for a server over stdio, the program to start (``args`` follow it).
        args: its arguments.
        env: variables set for it, as (name, value) pairs, over a small default environment.
        url: for a server over Streamable HTTP, its endpoint (``http://`` or ``https://``).
        headers_env: HTTP headers sent to it, as pairs of the header's name and the
            environment variable that holds its value (read when the agent starts).
        tools_allow: glob patterns of its tool names offered to the model (all by default).
        tools_deny: glob patterns of its tool names never offered (checked after allow).
        timeout_s: how long one tool call may take before it fails (and is cancelled).
        ping_interval_s: how often a quiet connection is checked with an MCP ping.
        where: ``FILE: [[mcp_servers]] #N ('name')``, to start error messages.
    """

    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    url: str | None = None
    headers_env: tuple[tuple[str, str], ...] = ()
    tools_allow: tuple[str, ...] = ("*",)
    tools_deny: tuple[str, ...] = ()
    timeout_s: float = 60.0
    ping_interval_s: float = 10.0
    where: str = field(default="", compare=False)

    @property
    def place(self) -> str:
        return self.where or f"MCP server {self.name!r}"


FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(AgentConfig) if f.name not in ("where", "mcp_servers")
)
"""The keys an ``[[agents]]`` entry may hold."""


class _Field:
    """Reads one key of an entry; raises ``ValueError`` with what is wrong."""

    def __init__(self, where: str, entry: Mapping[str, Any]) -> None:
        self.where = where
        self.entry = entry

    def fail(self, key: str, problem: str) -> AgentConfigError:
        return AgentConfigError(f"{self.where}: {key}: {problem}")

    def text(self, key: str, *, required: bool = False) -> str | None:
        if key not in self.entry:
            if required:
                raise self.fail(key, "missing (required)")
            return None
        value = self.entry[key]
        if not isinstance(value, str) or not value.strip():
            raise self.fail(key, f"must be a non-empty string, not {value!r}")
        return value

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> Any:
        value = self.entry.get(key, default)
        if value not in choices:
            raise self.fail(key, f"must be one of {', '.join(choices)}; got {value!r}")
        return value

    def number(
        self, key: str, kind: Callable[[Any], Any], *, low: float, low_open: bool = False
    ) -> Any:
        if key not in self.entry:
            return None
        value = self.entry[key]
        ok = isinstance(value, int) if kind is int else isinstance(value, int | float)
        if isinstance(value, bool) or not ok:
            noun = "an integer" if kind is int else "a number"
            raise self.fail(key, f"must be {noun}, not {value!r}")
        if value < low or (low_open and value == low):
            raise self.fail(key, f"must be {'>' if low_open else '>='} {low:g}, not {value!r}")
        return kind(value)

    def strings(self, key: str, check: Callable[[str], None]) -> tuple[str, ...] | None:
        if key not in self.entry:
            return None
        value = self.entry[key]
        if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
            raise self.fail(key, f"must be a list of strings, not {value!r}")
        for item in value:
            try:
                check(item)
            except (ValueError, BadRequest) as exc:
                raise self.fail(key, str(exc)) from None
        return tuple(value)


def _check_room(pattern: str) -> None:
    if not pattern or "" in pattern.split(":"):
        raise ValueError(f"room pattern {pattern!r} has an empty segment")
    try:
        validate_pattern(pattern)
    except BadRequest as exc:
        raise ValueError(
            f"room pattern {pattern!r}: `*` may only stand as a whole last segment"
        ) from exc


def _check_script(read: _Field, script: str) -> None:
    # Imported here: the providers package imports this module.
    from roomcast.agents.providers.scripted import Script, ScriptError

    try:
        Script.load(script)
    except ScriptError as exc:
        raise read.fail("script", str(exc)) from None


def _check_tool(name: str) -> None:
    if not _TOOL.fullmatch(name):
        raise ValueError(f"tool name {name!r} is not a valid identifier")


def _identity(
    read: _Field, entry: Mapping[str, Any], base_dir: Path | None
) -> tuple[str, Any, str, str | None]:
    """Name, provider, model and script; from here on errors also name the agent."""
    name = read.text("name", required=True)
    assert name is not None
    if not _NAME.fullmatch(name):
        raise read.fail(
            "name",
            f"{name!r} is not a usable name: 1 to 64 letters, digits, '_', '.' or '-', "
            "starting with a letter or digit",
        )
    read.where = f"{read.where} ({name!r})"
    if "provider" not in entry:
        raise read.fail("provider", f"missing (required: one of {', '.join(PROVIDERS)})")
    provider = read.choice("provider", PROVIDERS, "")
    model = read.text("model")
    if model is None:
        if provider == "ag-ui":
            model = DEFAULT_AG_UI_MODEL
        elif provider != "scripted":
            raise read.fail("model", f"missing (required for provider {provider!r})")
        else:
            model = "scripted"
    script = read.text("script")
    if script is not None:
        if provider != "scripted":
            raise read.fail("script", "only scripted agents take a script")
        if base_dir is not None and not Path(script).is_absolute():
            script = str(base_dir / script)
    return name, provider, model, script


def _http_url(read: _Field, key: str) -> str | None:
    value = read.text(key)
    if value is not None and not re.match(r"https?://[^/?#\s]", value):
        raise read.fail(key, f"must be an http:// or https:// URL, not {value!r}")
    return value


def _headers_env(read: _Field) -> tuple[tuple[str, str], ...]:
    """``headers_env = { Authorization = "MY_AGENT_AUTH" }``: header name → variable name."""
    value = read.entry.get("headers_env", {})
    if not isinstance(value, Mapping):
        raise read.fail("headers_env", f'must be a table of header = "VARIABLE", not {value!r}')
    pairs: list[tuple[str, str]] = []
    for header, variable in value.items():
        if not _HEADER.fullmatch(header):
            raise read.fail("headers_env", f"{header!r} is not an HTTP header name")
        if not isinstance(variable, str) or not _ENV.fullmatch(variable):
            raise read.fail(
                "headers_env", f"{header}: {variable!r} is not an environment variable name"
            )
        pairs.append((header, variable))
    return tuple(pairs)


def _ag_ui_fields(read: _Field, provider: str) -> dict[str, Any]:
    """``url`` and ``headers_env``: required and allowed for ``ag-ui`` agents only, which
    in turn take neither ``base_url`` nor ``api_key_env``."""
    if provider != "ag-ui":
        if "url" in read.entry:
            raise read.fail("url", "only ag-ui agents take a url (the others take base_url)")
        if "headers_env" in read.entry:
            raise read.fail("headers_env", "only ag-ui agents take headers_env")
        return {}
    for key in ("base_url", "api_key_env"):
        if key in read.entry:
            raise read.fail(
                key, "ag-ui agents take `url`, and `headers_env` for credentials, instead"
            )
    if "url" not in read.entry:
        raise read.fail("url", "missing (required for provider 'ag-ui')")
    return {"url": _http_url(read, "url"), "headers_env": _headers_env(read)}


def parse_agent(entry: object, where: str, *, base_dir: Path | None = None) -> AgentConfig:
    """One ``[[agents]]`` table → :class:`AgentConfig`; ``where`` starts every error message."""
    if not isinstance(entry, Mapping):
        raise AgentConfigError(f"{where}: must be a table")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise AgentConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(FIELDS)})"
        )
    read = _Field(where, entry)
    name, provider, model, script = _identity(read, entry, base_dir)
    api_key_env = read.text("api_key_env")
    if api_key_env is not None and not _ENV.fullmatch(api_key_env):
        raise read.fail("api_key_env", f"{api_key_env!r} is not an environment variable name")
    base_url = _http_url(read, "base_url")
    values: dict[str, Any] = {
        **_ag_ui_fields(read, provider),
        "base_url": base_url,
        "api_key_env": api_key_env,
        "system_prompt": read.text("system_prompt"),
        "rooms": read.strings("rooms", _check_room),
        "tools": read.strings("tools", _check_tool),
        "max_tokens": read.number("max_tokens", int, low=1),
        "temperature": read.number("temperature", float, low=0),
        "budget_tokens": read.number("budget_tokens", int, low=0),
        "budget_usd": read.number("budget_usd", float, low=0),
        "price_per_mtok_in": read.number("price_per_mtok_in", float, low=0),
        "price_per_mtok_out": read.number("price_per_mtok_out", float, low=0),
        "max_chain_depth": read.number("max_chain_depth", int, low=0),
        "max_agent_answers_per_min": read.number("max_agent_answers_per_min", int, low=0),
        "timeout_s": read.number("timeout_s", float, low=0, low_open=True),
        "idle_detach_s": read.number("idle_detach_s", float, low=0, low_open=True),
        "max_concurrent_answers": read.number("max_concurrent_answers", int, low=1),
        "script": script,
    }
    if values["temperature"] is not None and values["temperature"] > 2:
        raise read.fail("temperature", f"must be between 0 and 2, not {values['temperature']!r}")
    if script is not None:
        _check_script(read, script)
    if values["system_prompt"] is None:
        values["system_prompt"] = default_system_prompt(name)
    return AgentConfig(
        name=name,
        provider=provider,
        model=model,
        policy=read.choice("policy", POLICIES, "mention"),
        concurrency=read.choice("concurrency", CONCURRENCY, "queue"),
        where=read.where,
        **{key: value for key, value in values.items() if value is not None or key in _NULLABLE},
    )


MCP_PREFIX = "mcp:"
"""An agent's ``tools`` entry ``mcp:NAME`` offers the tools of MCP server ``NAME``."""
MCP_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(McpServerConfig) if f.name != "where")
# No "_": a tool's name is NAME__tool, and the server's part must be told apart.
_MCP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,31}")


def _no_check(_: str) -> None:
    return None


def parse_mcp_server(entry: object, where: str) -> McpServerConfig:
    """One ``[[mcp_servers]]`` table → :class:`McpServerConfig`.

    Exactly one of ``command`` (stdio) and ``url`` (Streamable HTTP) is required; ``args``
    and ``env`` go with a command, ``headers_env`` with a URL.
    """
    if not isinstance(entry, Mapping):
        raise AgentConfigError(f"{where}: must be a table")
    unknown = sorted(set(entry) - set(MCP_FIELDS))
    if unknown:
        raise AgentConfigError(
            f"{where}: unknown key {unknown[0]!r} (known keys: {', '.join(MCP_FIELDS)})"
        )
    read = _Field(where, entry)
    name = read.text("name", required=True)
    assert name is not None
    if not _MCP_NAME.fullmatch(name):
        raise read.fail(
            "name",
            f"{name!r} is not a usable name: 1 to 32 letters, digits or '-', starting with a "
            "letter or digit",
        )
    read.where = f"{where} ({name!r})"
    command, url = read.text("command"), _http_url(read, "url")
    if command is None and url is None:
        raise read.fail("command", "missing: give `command` (stdio) or `url` (Streamable HTTP)")
    if command is not None and url is not None:
        raise read.fail("url", "a server takes `command` (stdio) or `url`, not both")
    if command is not None and "headers_env" in entry:
        raise read.fail("headers_env", "only a server with a `url` takes headers_env")
    for key in ("args", "env"):
        if url is not None and key in entry:
            raise read.fail(key, "only a server with a `command` takes it")
    env = entry.get("env", {})
    if not isinstance(env, Mapping) or not all(
        isinstance(k, str) and _ENV.fullmatch(k) and isinstance(v, str) for k, v in env.items()
    ):
        raise read.fail("env", f'must be a table of VARIABLE = "value", not {env!r}')
    values: dict[str, Any] = {
        "args": read.strings("args", _no_check),
        "tools_allow": read.strings("tools_allow", _no_check),
        "tools_deny": read.strings("tools_deny", _no_check),
        "timeout_s": read.number("timeout_s", float, low=0, low_open=True),
        "ping_interval_s": read.number("ping_interval_s", float, low=0, low_open=True),
    }
    return McpServerConfig(
        name=name,
        command=command,
        url=url,
        env=tuple(env.items()),
        headers_env=_headers_env(read),
        where=read.where,
        **{key: value for key, value in values.items() if value is not None},
    )


def _with_mcp_servers(
    agent: AgentConfig, servers: Mapping[str, McpServerConfig], path: Path
) -> AgentConfig:
    """``agent`` with the servers its ``mcp:NAME`` tools name; an unknown one fails."""
    found: list[McpServerConfig] = []
    for entry in agent.tools:
        if not entry.startswith(MCP_PREFIX):
            continue
        name = entry[len(MCP_PREFIX) :]
        if name not in servers:
            known = ", ".join(servers) or "none: add [[mcp_servers]] tables"
            raise AgentConfigError(
                f"{agent.place}: tools: {entry!r} names no MCP server of {path} (servers: {known})"
            )
        if servers[name] not in found:
            found.append(servers[name])
    return replace(agent, mcp_servers=tuple(found)) if found else agent


# Fields whose default is None, so an absent key may pass None through.
_NULLABLE = frozenset(
    {"base_url", "api_key_env", "temperature", "budget_tokens", "budget_usd", "url"}
)


def load_agents(path: str | Path) -> list[AgentConfig]:
    """Read an agents file: a TOML document of ``[[agents]]`` tables.

    Raises:
        AgentConfigError: the file cannot be read or parsed, or an entry is invalid; the
            message names the file, the entry (by number and name) and the field.
    """
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        problem = exc.strerror or exc
        raise AgentConfigError(f"{path}: cannot read the agents file: {problem}") from None
    except tomllib.TOMLDecodeError as exc:
        raise AgentConfigError(f"{path}: not valid TOML: {exc}") from None
    unknown = sorted(set(raw) - {"agents", "mcp_servers"})
    if unknown:
        raise AgentConfigError(
            f"{path}: unknown top-level key {unknown[0]!r} (agents are [[agents]] tables, "
            "MCP servers [[mcp_servers]] tables)"
        )
    servers = _mcp_servers(path, raw.get("mcp_servers", []))
    entries = raw.get("agents")
    if not isinstance(entries, list) or not entries:
        raise AgentConfigError(f"{path}: no agents: add at least one [[agents]] table")
    agents: list[AgentConfig] = []
    seen: dict[str, int] = {}
    for number, entry in enumerate(entries, start=1):
        where = f"{path}: [[agents]] #{number}"
        agent = parse_agent(entry, where, base_dir=path.parent)
        if agent.name in seen:
            raise AgentConfigError(
                f"{where} ({agent.name!r}): name: {agent.name!r} is already used by "
                f"[[agents]] #{seen[agent.name]}"
            )
        seen[agent.name] = number
        agents.append(_with_mcp_servers(agent, servers, path))
    return agents


def _mcp_servers(path: Path, entries: object) -> dict[str, McpServerConfig]:
    """The file's ``[[mcp_servers]]`` tables by name."""
    if not isinstance(entries, list):
        raise AgentConfigError(f"{path}: mcp_servers: must be [[mcp_servers]] tables")
    servers: dict[str, McpServerConfig] = {}
    for number, entry in enumerate(entries, start=1):
        server = parse_mcp_server(entry, f"{path}: [[mcp_servers]] #{number}")
        if server.name in servers:
            raise AgentConfigError(
                f"{server.where}: name: {server.name!r} is already used by "
                f"{servers[server.name].where}"
            )
        servers[server.name] = server
    return servers


def agent_label(provider: str, model: str) -> str:
    """What answers for an agent, as people read it: ``openai gpt-4.1-mini``, ``anthropic
    claude-haiku-4-5``, and ``scripted (no model)`` for a scripted agent."""
    return "scripted (no model)" if provider == "scripted" else f"{provider} {model}"


def default_agents(environ: Mapping[str, str]) -> list[AgentConfig]:
    """The agent of a server started without ``--agents``: ``assistant`` in ``room:*``,
    answering when mentioned.

    ``OPENAI_API_KEY`` or ``OPENAI_BASE_URL`` choose an OpenAI-compatible model
    (``ROOMCAST_MODEL``, else :data:`DEFAULT_OPENAI_MODEL`); otherwise ``ANTHROPIC_API_KEY``
    chooses Anthropic (``ROOMCAST_MODEL``, else :data:`DEFAULT_ANTHROPIC_MODEL`); otherwise the
    agent is scripted and its answers say how to configure a model.
    """
    model = environ.get("ROOMCAST_MODEL") or None
    common: dict[str, Any] = {
        "name": DEFAULT_NAME,
        "system_prompt": default_system_prompt(DEFAULT_NAME),
        "policy": "mention",
        "rooms": ("room:*",),
        "tools": ("builtin",),
    }
    if environ.get("OPENAI_API_KEY") or environ.get("OPENAI_BASE_URL"):
        agent = AgentConfig(
            provider="openai",
            model=model or DEFAULT_OPENAI_MODEL,
            base_url=environ.get("OPENAI_BASE_URL") or None,
            api_key_env="OPENAI_API_KEY",
            **common,
        )
    elif environ.get("ANTHROPIC_API_KEY"):
        agent = AgentConfig(
            provider="anthropic",
            model=model or DEFAULT_ANTHROPIC_MODEL,
            base_url=environ.get("ANTHROPIC_BASE_URL") or None,
            api_key_env="ANTHROPIC_API_KEY",
            **common,
        )
    else:
        agent = AgentConfig(provider="scripted", model="scripted", **common)
    return [agent]
