"""The ``roomcast`` command line: ``serve`` runs the server; ``pub``, ``sub``, ``history``,
``objects`` and ``channels`` talk to one through the SDK; ``token`` signs a token offline;
``agents`` runs agents as a worker of a server; ``mcp`` serves its MCP tools on stdio.

The commands are registered here, in the order ``--help`` lists them.
"""

from __future__ import annotations

from roomcast.cli import agent_workers, client_commands, mcp, serve, tokens
from roomcast.cli.root import app

app.command(
    "serve",
    help="Run the server (WebSocket /v1/ws, /healthz, /readyz) until Ctrl-C or SIGTERM.\n\n"
    "Each option is also an environment variable, ROOMCAST_<NAME> (--max-connections: "
    "ROOMCAST_MAX_CONNECTIONS); a flag wins. docs/configuration.md has the details. Exit "
    "codes: 1 cannot listen, 2 a bad setting or agents file, 3 the store cannot be used.",
)(serve.serve_command)
for command in (
    client_commands.pub,
    client_commands.sub,
    client_commands.history,
    client_commands.objects,
    client_commands.channels,
    tokens.token,
):
    app.command()(command)
app.command("agents")(agent_workers.agents_command)
app.command("mcp")(mcp.mcp_command)


def main() -> None:
    """The ``roomcast`` console entry point."""
    app(prog_name="roomcast")


__all__ = ["app", "main"]
