"""Agents inside `roomcast serve`: which agents, the private key they offer the server, and
how they are labelled (a missing provider package: test_missing_provider_package.py; the
wiring into the node and the key ring is `roomcast serve`'s: tests/test_cli.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from roomcast.agents import hosting
from roomcast.agents.config import AgentConfigError
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


def test_the_label_says_what_answers() -> None:
    assert hosting.agent_label("openai", "gpt-4.1-mini") == "openai gpt-4.1-mini"
    assert hosting.agent_label("anthropic", "claude-haiku-4-5") == "anthropic claude-haiku-4-5"
    assert hosting.agent_label("scripted", "scripted") == "scripted (no model)"
