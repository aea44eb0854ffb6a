"""The ``auto`` policy's judge: a short model call decides whether the room needs the agent
for a message, from the last few messages before it."""

from __future__ import annotations

import logging

from roomcast.agents.config import AgentConfig
from roomcast.agents.providers.base import (
    Provider,
    ProviderError,
    ProviderRequest,
    TextDelta,
    Turn,
)
from roomcast.client import Channel, Message

from .answer import closing
from .room import latest_messages
from .triggers import message_text, parse_judgement

log = logging.getLogger("roomcast.agents")


def judge_request(config: AgentConfig, history: list[Message], trigger: Message) -> ProviderRequest:
    """The judge's question: should ``config.name`` reply to ``trigger``, the last message
    of the conversation in ``history``?"""
    name = config.name
    turns = [
        Turn(message.client_id or "server", message_text(message))
        for message in history
        if message.msg_serial <= trigger.msg_serial and message.name == "text"
    ][-10:]
    return ProviderRequest(
        agent_name=f"{name}-judge",
        system_prompt=(
            f"You decide whether {name} should reply to the last message of a group "
            f"chat. {name} is: {config.system_prompt[:500]}\nAnswer YES or NO, "
            "then a short reason. Say NO when people talk among themselves or someone "
            "else was asked."
        ),
        messages=tuple(turns),
        max_tokens=30,
        temperature=0,
    )


async def room_needs_agent(
    provider: Provider, config: AgentConfig, channel: Channel, trigger: Message
) -> tuple[bool, str]:
    """Ask ``provider`` whether agent ``config`` should answer ``trigger``: the verdict and
    its reason (the caller logs the decision). A failed call means no: the agent stays
    silent."""
    request = judge_request(config, await latest_messages(channel, 20), trigger)
    text = ""
    try:
        async with closing(provider.stream(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    text += event.text
    except ProviderError as exc:
        log.warning("agent %s: the auto judge failed: %s", config.name, exc.message)
        return False, f"it failed: {exc.message}"
    return parse_judgement(text.removeprefix("[scripted]").strip())


__all__ = ["judge_request", "room_needs_agent"]
