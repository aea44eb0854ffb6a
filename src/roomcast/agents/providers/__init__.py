"""Model providers behind agents, and :func:`make_provider` that picks one from a config.

The SDK-backed adapters import their SDK lazily: a server whose agents are all scripted needs
neither ``openai`` nor ``anthropic`` installed. So does the ``ag-ui`` provider (an agent of
any framework behind an AG-UI endpoint) import ag-ui-protocol and its HTTP client.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping

from roomcast.agents.config import AgentConfig
from roomcast.agents.providers.base import (
    Message,
    Provider,
    ProviderError,
    ProviderEvent,
    ProviderRequest,
    RetryPolicy,
    StateChange,
    TextDelta,
    ToolCall,
    ToolResult,
    ToolRound,
    ToolSpec,
    Turn,
    Usage,
    cost_usd,
)
from roomcast.agents.providers.scripted import (
    Script,
    ScriptedProvider,
    ScriptError,
    no_model_script,
)

__all__ = [
    "Message",
    "Provider",
    "ProviderConfigError",
    "ProviderError",
    "ProviderEvent",
    "ProviderRequest",
    "RetryPolicy",
    "Script",
    "ScriptError",
    "ScriptedProvider",
    "StateChange",
    "TextDelta",
    "ToolCall",
    "ToolResult",
    "ToolRound",
    "ToolSpec",
    "Turn",
    "Usage",
    "cost_usd",
    "make_provider",
    "missing_package",
]

_ADAPTERS = {
    "openai": ("roomcast.agents.providers.openai", "OpenAICompatibleProvider"),
    "anthropic": ("roomcast.agents.providers.anthropic", "AnthropicProvider"),
}

# Local servers (Ollama, vLLM, llama.cpp, LM Studio) take any key; the SDK insists on one.
UNUSED_KEY = "unused"


class ProviderConfigError(Exception):
    """An agent's provider cannot be set up (missing SDK, missing API key).

    Attributes:
        where: The agent it is about (``FILE: [[agents]] #N ('name')``, or its name).
        reason: What is wrong and what to do, without ``where`` (``the openai package is
            not installed: pip install 'roomcast[openai]'``).
    """

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def make_provider(
    config: AgentConfig, environ: Mapping[str, str], *, retry: RetryPolicy | None = None
) -> Provider:
    """The provider for ``config``, with its API key read from ``environ``.

    Raises:
        ProviderConfigError: the provider's SDK is not installed, or its API key is not set
            (an OpenAI-compatible agent with a ``base_url`` may do without one).
    """
    if config.provider == "scripted":
        try:
            script = Script.load(config.script) if config.script else no_model_script()
        except ScriptError as exc:
            raise ProviderConfigError(config.place, f"script: {exc}") from None
        return ScriptedProvider(script)
    if config.provider == "ag-ui":
        return _ag_ui_provider(config, environ, retry)
    module_name, class_name = _ADAPTERS[config.provider]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name != config.provider:
            raise
        raise ProviderConfigError(config.place, missing_package(config.provider)) from None
    key_env = config.key_env
    api_key = environ.get(key_env) if key_env else None
    if not api_key:
        if config.provider == "openai" and config.base_url is not None:
            api_key = UNUSED_KEY
        else:
            raise ProviderConfigError(
                config.place,
                f"the API key variable ${key_env} is not set (set it, or name another "
                "variable with api_key_env)",
            )
    provider: Provider = getattr(module, class_name)(
        model=config.model,
        api_key=api_key,
        base_url=config.base_url,
        timeout_s=config.timeout_s,
        retry=retry,
        key_env=key_env,
    )
    return provider


def _ag_ui_provider(
    config: AgentConfig, environ: Mapping[str, str], retry: RetryPolicy | None
) -> Provider:
    """An AG-UI agent's provider, its headers' values read from ``environ``.

    Raises:
        ProviderConfigError: a variable that ``headers_env`` names is not set.
    """
    from roomcast.agents.providers.ag_ui import AGUIProvider

    assert config.url is not None  # the config requires it
    headers: dict[str, str] = {}
    for header, variable in config.headers_env:
        value = environ.get(variable)
        if not value:
            raise ProviderConfigError(
                config.place,
                f"headers_env: {header}: the variable ${variable} is not set (set it, or "
                "name another variable)",
            )
        headers[header] = value
    return AGUIProvider(
        url=config.url,
        headers=headers,
        timeout_s=config.timeout_s,
        retry=retry,
        model=config.model,
    )


def missing_package(provider: str) -> str:
    """What to do when a provider's SDK is not installed."""
    return f"the {provider} package is not installed: pip install 'roomcast[{provider}]'"
