"""``GET /v1/agents``: the agents this server runs (docs/protocol.md §7)."""

from __future__ import annotations

import msgspec

from roomcast.protocol.http import AgentList

from .api import Api, Call, Returns

api = Api()


@api.operation(
    "GET",
    "/v1/agents",
    summary="List the agents configured on this server, and their rooms",
    description=(
        "Each item: `name` (its client_id and @mention), `provider`, `model`, `policy` "
        "(`mention`, `auto` or `always`), `rooms` (channel patterns), `tools`, and `note` "
        "when the agent does not run the model it was configured with (it then answers as "
        "`scripted`, and the note says why, e.g. a provider package that is not installed). "
        "A room's own list is `root.agents` of its live objects. Agents of separate "
        "`roomcast agents` workers are not listed."
    ),
    tag="agents",
    returns=(Returns("200", "The configured agents.", (AgentList,)),),
)
async def list_agents(call: Call) -> msgspec.Struct:
    return AgentList(items=list(call.node.agents))
