"""Model providers behind agents, and :func:`make_provider` that picks one from a config.

The SDK-backed adapters import their SDK lazily: a server whose agents are all scripted needs
neither ``openai`` nor ``anthropic`` installed.
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
    "TextDelta",
    "ToolCall",
    "ToolResult",
    "ToolRound",
    "ToolSpec",
    "Turn",
    "Usage",
    "cost_usd",
    "make_provider",
]

_ADAPTERS = {
    "openai": ("roomcast.agents.providers.openai", "OpenAICompatibleProvider"),
    "anthropic": ("roomcast.agents.providers.anthropic", "AnthropicProvider"),
}

# Local servers (Ollama, vLLM, llama.cpp, LM Studio) take any key; the SDK insists on one.
UNUSED_KEY = "unused"


class ProviderConfigError(Exception):
    """An agent's provider cannot be set up (missing SDK, missing API key)."""


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
            raise ProviderConfigError(f"agent {config.name!r}: {exc}") from None
        return ScriptedProvider(script)
    module_name, class_name = _ADAPTERS[config.provider]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        if exc.name != config.provider:
            raise
        raise ProviderConfigError(
            f"agent {config.name!r} uses provider {config.provider!r}, which needs the "
            f"{config.provider!r} package: pip install 'roomcast[{config.provider}]'"
        ) from None
    key_env = config.key_env
    api_key = environ.get(key_env) if key_env else None
    if not api_key:
        if config.provider == "openai" and config.base_url is not None:
            api_key = UNUSED_KEY
        else:
            raise ProviderConfigError(
                f"agent {config.name!r}: the API key variable ${key_env} is not set"
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
