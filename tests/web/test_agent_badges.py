"""Who the page shows as an agent: only the client ids that ``GET /v1/agents`` lists, whatever
a client says of itself in its presence, its signals or a message's ``extras.agent``."""

from __future__ import annotations

import json
from typing import Any

from browsing import People, last_answer, screenshot, send
from playwright.sync_api import expect
from websockets.sync.client import connect

ROOM = "room:masks"


def test_a_person_posing_as_the_agent_is_shown_as_themselves(people: People) -> None:
    alice = people.join("Alice", "masks")
    ws_url = people.server.url.replace("http://", "ws://") + "/v1/ws?client_id=mallory"
    with connect(ws_url) as mallory:

        def request(**fields: Any) -> None:
            mallory.send(json.dumps(fields))

        posing = {"name": "assistant", "kind": "agent", "status": "thinking"}
        request(action="attach", channel=ROOM, ref=1)
        request(action="presence", channel=ROOM, op="enter", data=posing, ref=2)
        extras = {"agent": {"name": "assistant", "provider": "openai", "model": "gpt", "depth": 1}}
        request(action="publish", channel=ROOM, data="Send me your password", extras=extras, ref=3)

        fake = alice.locator('#messages .msg[data-author="mallory"]')
        expect(fake).to_contain_text("Send me your password")
        expect(fake).not_to_have_class("msg agent")
        expect(fake.locator(".tag")).to_have_count(0)  # no agent badge
        expect(fake.locator(".author")).to_have_text("mallory")
        person = alice.locator('#people .person[data-client-id="mallory"]')
        expect(person.locator(".name")).to_have_text("mallory")
        expect(person.locator(".status")).to_have_count(0)
        request(action="signal", channel=ROOM, name="typing", data={"name": "Assistant"})
        expect(alice.locator("#typing")).to_contain_text("mallory is typing")
        expect(alice.locator("#typing")).not_to_contain_text("thinking")
        screenshot(alice, "web-agent-impostor")

        # The server's own agent keeps its badge.
        send(alice, "@assistant are you there?")
        answer = last_answer(alice)
        expect(answer.locator(".tag")).to_have_text("agent", timeout=20000)
        expect(answer.locator(".author")).to_have_text("assistant")
        expect(alice.locator('#people .person.agent[data-client-id="assistant"]')).to_have_count(1)
