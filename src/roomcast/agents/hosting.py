"""Agents inside ``roomcast serve`` (the default): loaded with the settings, connected to the
server once it listens, stopped before it closes its connections.

They connect like any worker, with an API key that only this process knows (the server adds
:attr:`HostedAgents.key` to its key ring at start and never prints it), so they may speak as
their own names while no anonymous client or token holder may. This module knows the server
only by its settings, its URL and the ``dial`` it is given (``roomcast serve`` gives one that
carries the agents' frames in memory, not over a loopback socket); ``roomcast serve`` hands
the names and the key to the node.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Mapping
from typing import Protocol

from msgspec import UNSET

from roomcast.agents.config import AgentConfig, agent_label, default_agents, load_agents
from roomcast.agents.providers import ProviderConfigError, make_provider
from roomcast.agents.providers.base import Provider
from roomcast.agents.providers.scripted import ScriptedProvider, no_model_script
from roomcast.client.link import Dial, dial_websocket
from roomcast.protocol.capabilities import ALL
from roomcast.protocol.http import AgentInfo
from roomcast.protocol.keys import ApiKey

from .runtime import AgentRuntime

log = logging.getLogger("roomcast.agents")


class HostingSettings(Protocol):
    """What hosting reads of the server's settings (:class:`roomcast.settings.Settings`)."""

    @property
    def agents(self) -> str:
        """An agents file, ``none``, or empty for the default agent."""
        ...

    @property
    def local_url(self) -> str:
        """How this process reaches its own server."""
        ...


def configured_agents(settings: HostingSettings, environ: Mapping[str, str]) -> list[AgentConfig]:
    """The agents ``settings.agents`` names: a file, ``none``, or the default agent.

    Raises:
        AgentConfigError: The file cannot be used (the message says where and why).
    """
    if settings.agents.strip().lower() == "none":
        return []
    if settings.agents:
        return load_agents(settings.agents)
    return default_agents(environ)


def agent_info(agent: AgentConfig, note: str | None = None) -> AgentInfo:
    """What the server lists of an agent (``GET /v1/agents``); ``note`` says why it does
    not run the model it was configured with."""
    return AgentInfo(
        name=agent.name,
        provider=agent.provider,
        model=agent.model,
        policy=agent.policy,
        rooms=list(agent.rooms),
        tools=list(agent.tools),
        note=UNSET if note is None else note,
    )


class HostedAgents:
    """The in-process agents of one server.

    Attributes:
        agents: The configured agents (none for ``--agents none``).
        names: Their names, which only they may take as client_id.
        infos: What the server lists of them.
        notes: Why an agent does not run the model it was configured with, by name (the
            default agent whose provider package is missing answers from a script).
        key: The API key they connect with, for the server's key ring; None without agents.
        runtime: Their runtime; None without agents.
    """

    def __init__(
        self,
        settings: HostingSettings,
        environ: Mapping[str, str] | None = None,
        dial: Dial = dial_websocket,
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.agents = configured_agents(settings, self.environ)
        self.notes: dict[str, str] = {}
        self.key: ApiKey | None = None
        self.runtime: AgentRuntime | None = None
        providers: dict[str, Provider] = {}
        if self.agents and not settings.agents:
            providers = self._default_provider()
        self.names = frozenset(agent.name for agent in self.agents)
        self.infos = [agent_info(agent, self.notes.get(agent.name)) for agent in self.agents]
        if self.agents:
            key = ApiKey("roomcast-agents-" + secrets.token_hex(4), secrets.token_urlsafe(32), ALL)
            self.key = key
            self.runtime = AgentRuntime(
                settings.local_url,
                self.agents,
                key=f"{key.name}:{key.secret}",
                environ=self.environ,
                providers=providers,
                dial=dial,
            )

    def _default_provider(self) -> dict[str, Provider]:
        """The default agent's model. If its package is missing (``OPENAI_API_KEY`` set but
        no ``roomcast[openai]``), the server still starts and the agent becomes what really
        answers: a scripted agent (in ``GET /v1/agents``, its presence and its answers'
        ``extras.agent``) with a note saying why, whose answer names the cause."""
        agent = self.agents[0]
        try:
            return {agent.name: make_provider(agent, self.environ)}
        except ProviderConfigError as exc:
            log.warning("%s; %s answers from a script until then", exc, agent.name)
            self.agents[0] = dataclasses.replace(
                agent, provider="scripted", model="scripted", base_url=None, api_key_env=None
            )
            self.notes[agent.name] = exc.reason
            return {agent.name: ScriptedProvider(no_model_script(exc.reason))}

    async def start(self) -> None:
        """Connect the agents (once the server listens) and let them answer."""
        if self.runtime is not None:
            await self.runtime.start()
            names = ", ".join(agent.name for agent in self.agents)
            log.info("agents running in this process: %s", names)

    async def aclose(self, grace_s: float = 5.0) -> None:
        """Let running answers finish for ``grace_s``, then disconnect the agents."""
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            await runtime.aclose(grace_s)


__all__ = ["HostedAgents", "HostingSettings", "agent_info", "agent_label", "configured_agents"]
