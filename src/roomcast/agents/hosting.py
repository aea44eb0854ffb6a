"""Agents inside ``roomcast serve`` (the default): loaded with the settings, connected to the
server over loopback once it listens, stopped before it closes its connections.

They connect like any worker, with an API key that only this process knows (added to the
key ring at start, never printed), so they may speak as their own names while no anonymous
client or token holder may.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Mapping

from roomcast.agents.config import AgentConfig, default_agents, load_agents
from roomcast.agents.providers import ProviderConfigError, make_provider
from roomcast.agents.providers.base import Provider
from roomcast.agents.providers.scripted import ScriptedProvider, no_model_script
from roomcast.core.authz import ALL
from roomcast.core.keys import ApiKey
from roomcast.core.node import Node
from roomcast.protocol.http import AgentInfo
from roomcast.settings import Settings, is_loopback

from .runtime import AgentRuntime

log = logging.getLogger("roomcast.agents")


def configured_agents(settings: Settings, environ: Mapping[str, str]) -> list[AgentConfig]:
    """The agents ``settings.agents`` names: a file, ``none``, or the default agent.

    Raises:
        AgentConfigError: The file cannot be used (the message says where and why).
    """
    if settings.agents.strip().lower() == "none":
        return []
    if settings.agents:
        return load_agents(settings.agents)
    return default_agents(environ)


def agent_info(agent: AgentConfig) -> AgentInfo:
    return AgentInfo(
        name=agent.name,
        provider=agent.provider,
        model=agent.model,
        policy=agent.policy,
        rooms=list(agent.rooms),
        tools=list(agent.tools),
    )


def local_url(settings: Settings) -> str:
    """How this process reaches its own server."""
    host = settings.host
    if not is_loopback(host):
        host = "::1" if ":" in host else "127.0.0.1"
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{settings.port}"


class HostedAgents:
    """The in-process agents of one server."""

    def __init__(
        self, node: Node, settings: Settings, environ: Mapping[str, str] | None = None
    ) -> None:
        self.environ = os.environ if environ is None else environ
        self.agents = configured_agents(settings, self.environ)
        self.settings = settings
        node.agent_names = frozenset(agent.name for agent in self.agents)
        node.agents = [agent_info(agent) for agent in self.agents]
        self.runtime: AgentRuntime | None = None
        providers: dict[str, Provider] = {}
        if self.agents and not settings.agents:
            providers = self._default_provider()
        if self.agents:
            key = ApiKey("roomcast-agents-" + secrets.token_hex(4), secrets.token_urlsafe(32), ALL)
            settings.key_ring.add(key)
            self.runtime = AgentRuntime(
                local_url(settings),
                self.agents,
                key=f"{key.name}:{key.secret}",
                environ=self.environ,
                providers=providers,
            )

    def _default_provider(self) -> dict[str, Provider]:
        """The default agent's model; if its package is missing (``OPENAI_API_KEY`` set but
        no ``roomcast[openai]``), it answers from the no-model script rather than keep the
        server from starting, and the log says what to install."""
        agent = self.agents[0]
        try:
            return {agent.name: make_provider(agent, self.environ)}
        except ProviderConfigError as exc:
            log.warning("%s; %s answers from a script until then", exc, agent.name)
            return {agent.name: ScriptedProvider(no_model_script())}

    async def start(self) -> None:
        if self.runtime is not None:
            await self.runtime.start()
            names = ", ".join(agent.name for agent in self.agents)
            log.info("agents running in this process: %s", names)

    async def aclose(self, grace_s: float = 5.0) -> None:
        if self.runtime is not None:
            runtime, self.runtime = self.runtime, None
            await runtime.aclose(grace_s)


__all__ = ["HostedAgents", "agent_info", "configured_agents", "local_url"]
