"""From an agent's config to a working provider: SDKs, keys, scripts, costs."""

from __future__ import annotations

import contextlib
import sys
import textwrap
from pathlib import Path

import pytest
from fake_llm import FakeLLMServer, Reply, openai_text

from roomcast.agents.config import AgentConfig, default_agents, load_agents
from roomcast.agents.providers import (
    ProviderConfigError,
    ProviderRequest,
    ScriptedProvider,
    TextDelta,
    Turn,
    Usage,
    cost_usd,
    make_provider,
)
from roomcast.agents.providers.anthropic import AnthropicProvider
from roomcast.agents.providers.openai import OpenAICompatibleProvider

REQUEST = ProviderRequest("assistant", "", (Turn("alice", "@assistant hi"),))


async def test_an_agent_from_a_file_talks_to_its_server_with_its_key(tmp_path: Path) -> None:
    async with FakeLLMServer([Reply(events=openai_text(["Hi", " alice"]))]) as server:
        path = tmp_path / "agents.toml"
        path.write_text(
            textwrap.dedent(f"""
                [[agents]]
                name = "local"
                provider = "openai"
                model = "qwen2.5:7b"
                base_url = "{server.url}/v1"
                api_key_env = "LOCAL_KEY"
            """)
        )
        [agent] = load_agents(path)
        provider = make_provider(agent, {"LOCAL_KEY": "secret-1"})
        try:
            async with contextlib.aclosing(provider.stream(REQUEST)) as events:
                got = [event async for event in events]
        finally:
            await provider.aclose()
    assert got == [TextDelta("Hi"), TextDelta(" alice"), Usage(12, 5)]
    assert server.requests[0].headers["authorization"] == "Bearer secret-1"
    assert server.requests[0].body["model"] == "qwen2.5:7b"


async def test_the_default_agent_without_a_model_is_scripted() -> None:
    provider = make_provider(default_agents({})[0], {})
    assert isinstance(provider, ScriptedProvider)
    async with contextlib.aclosing(provider.stream(REQUEST)) as events:
        text = "".join([e.text async for e in events if isinstance(e, TextDelta)])
    assert text.startswith("[scripted] No language model is configured")


async def test_a_scripted_agent_reads_its_script(tmp_path: Path) -> None:
    (tmp_path / "demo.toml").write_text('[[replies]]\ntext = "Demo answer."\n')
    (tmp_path / "agents.toml").write_text(
        '[[agents]]\nname = "demo"\nprovider = "scripted"\nscript = "demo.toml"\n'
    )
    [agent] = load_agents(tmp_path / "agents.toml")
    provider = make_provider(agent, {})
    async with contextlib.aclosing(provider.stream(REQUEST)) as events:
        text = "".join([e.text async for e in events if isinstance(e, TextDelta)])
    assert text == "[scripted] Demo answer."


async def test_sdk_providers_are_made_from_the_environment() -> None:
    openai_provider = make_provider(
        default_agents({"OPENAI_API_KEY": "sk-1"})[0], {"OPENAI_API_KEY": "sk-1"}
    )
    anthropic_provider = make_provider(
        default_agents({"ANTHROPIC_API_KEY": "k"})[0], {"ANTHROPIC_API_KEY": "k"}
    )
    try:
        assert isinstance(openai_provider, OpenAICompatibleProvider)
        assert isinstance(anthropic_provider, AnthropicProvider)
    finally:
        await openai_provider.aclose()
        await anthropic_provider.aclose()


async def test_a_local_openai_compatible_server_needs_no_key() -> None:
    agent = default_agents({"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})[0]
    provider = make_provider(agent, {"OPENAI_BASE_URL": "http://127.0.0.1:9/v1"})
    await provider.aclose()
    assert isinstance(provider, OpenAICompatibleProvider)


def test_a_missing_key_is_a_clear_error() -> None:
    agent = AgentConfig(name="scribe", provider="anthropic", model="m")
    with pytest.raises(
        ProviderConfigError, match=r"agent 'scribe': .*\$ANTHROPIC_API_KEY is not set"
    ):
        make_provider(agent, {})


def test_a_missing_sdk_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "openai", None)  # as if not installed
    monkeypatch.delitem(sys.modules, "roomcast.agents.providers.openai", raising=False)
    agent = AgentConfig(name="gpt", provider="openai", model="m")
    with pytest.raises(ProviderConfigError, match=r"pip install 'roomcast\[openai\]'"):
        make_provider(agent, {"OPENAI_API_KEY": "sk-1"})


def test_cost_from_usage_and_prices() -> None:
    usage = Usage(input_tokens=2_000_000, output_tokens=500_000)
    assert cost_usd(usage, 0.15, 0.6) == pytest.approx(0.3 + 0.3)
    assert cost_usd(Usage(0, 0), 3.0, 15.0) == 0.0
