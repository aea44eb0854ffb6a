"""Agents inside `roomcast serve`: which agents, the private key they offer the server, and a
missing provider package for the default agent (the wiring into the node and the key ring
is `roomcast serve`'s: tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from roomcast.agents import hosting
from roomcast.agents.config import AgentConfig, AgentConfigError
from roomcast.agents.providers import ProviderConfigError
from roomcast.agents.providers.scripted import ScriptedProvider
from roomcast.protocol.capabilities import ALL
from roomcast.settings import Settings


def test_none_runs_no_agent_and_the_default_is_assistant() -> None:
    assert hosting.configured_agents(Settings.load({}, agents="none"), {}) == []
    [default] = hosting.configured_agents(Settings.load({}), {})
    assert default.name == "assistant" and default.tools == ("builtin",)


def test_a_bad_agents_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "agents.toml"
    path.write_text('[[agents]]\nname = "x"\nprovider = "nope"\n')
    with pytest.raises(AgentConfigError, match="provider"):
        hosting.configured_agents(Settings.load({}, agents=str(path)), {})


def test_hosted_agents_offer_their_names_and_a_private_key_and_change_no_setting() -> None:
    settings = Settings.load({})
    hosted = hosting.HostedAgents(settings, {})
    assert hosted.names == frozenset({"assistant"})
    assert [a.name for a in hosted.infos] == ["assistant"]
    assert hosted.key is not None and hosted.key.name.startswith("roomcast-agents-")
    assert hosted.key.capability == ALL and len(hosted.key.secret) >= 32
    assert len(settings.key_ring) == 0  # the server adds the key; hosting only offers it
    assert hosted.runtime is not None


def test_no_agents_means_no_key_and_no_runtime() -> None:
    hosted = hosting.HostedAgents(Settings.load({}, agents="none"), {})
    assert hosted.names == frozenset() and hosted.infos == []
    assert hosted.key is None and hosted.runtime is None


def test_a_missing_provider_package_leaves_the_default_agent_scripted(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def missing(config: AgentConfig, environ: Any) -> Any:
        raise ProviderConfigError("agent 'assistant' needs the 'openai' package")

    monkeypatch.setattr(hosting, "make_provider", missing)
    settings = Settings.load({})
    hosted = hosting.HostedAgents(settings, {"OPENAI_API_KEY": "sk-x"})
    assert hosted.runtime is not None
    assert isinstance(hosted.runtime.workers[0].provider, ScriptedProvider)
    assert "needs the 'openai' package" in caplog.text
