"""Agents inside `roomcast serve`: which agents, the private key, and a missing provider
package for the default agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roomcast.agents import hosting
from roomcast.agents.config import AgentConfig, AgentConfigError
from roomcast.agents.providers import ProviderConfigError
from roomcast.agents.providers.scripted import ScriptedProvider
from roomcast.backends import StoreOptions, open_backend
from roomcast.core.node import Node
from roomcast.settings import Settings


def node(settings: Settings) -> Node:
    """A real node on a memory store (not started: hosting only sets its agent lists)."""
    return Node(open_backend("memory://", StoreOptions()), settings)


def test_none_runs_no_agent_and_the_default_is_assistant() -> None:
    assert hosting.configured_agents(Settings.load({}, agents="none"), {}) == []
    [default] = hosting.configured_agents(Settings.load({}), {})
    assert default.name == "assistant" and default.tools == ("builtin",)


def test_a_bad_agents_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[[agents]]\nname = "x"\nprovider = "nope"\n')
    with pytest.raises(AgentConfigError, match="provider"):
        hosting.configured_agents(Settings.load({}, agents=str(path)), {})


def test_hosted_agents_get_a_private_key_and_reserve_their_names() -> None:
    settings = Settings.load({})
    server = node(settings)
    hosted = hosting.HostedAgents(server, settings, {})
    assert server.agent_names == frozenset({"assistant"})
    assert [a.name for a in server.agents] == ["assistant"]
    [key] = [k for k in settings.key_ring if k.name.startswith("roomcast-agents-")]
    assert hosted.runtime is not None
    assert key.name not in dict(settings.describe())["keys"]  # never printed
    assert settings.anonymous_enabled  # the private key does not turn anonymous access off


def test_a_missing_provider_package_leaves_the_default_agent_scripted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing(config: AgentConfig, environ: Any) -> Any:
        raise ProviderConfigError("agent 'assistant' needs the 'openai' package")

    monkeypatch.setattr(hosting, "make_provider", missing)
    settings = Settings.load({})
    hosted = hosting.HostedAgents(node(settings), settings, {"OPENAI_API_KEY": "sk-x"})
    assert hosted.runtime is not None
    assert isinstance(hosted.runtime.workers[0].provider, ScriptedProvider)
    assert "needs the 'openai' package" in caplog.text


def test_local_url_reaches_the_server_over_loopback() -> None:
    assert hosting.local_url(Settings.load({}, port=9000)) == "http://127.0.0.1:9000"
    wildcard = Settings.load({}, host="0.0.0.0", port=9000, allow_anonymous=True)
    assert hosting.local_url(wildcard) == "http://127.0.0.1:9000"
    assert hosting.local_url(Settings.load({}, host="::1", port=9)) == "http://[::1]:9"
