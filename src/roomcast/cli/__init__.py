"""The ``roomcast`` command line: ``serve`` runs the server; ``pub``, ``sub``, ``history``,
``objects`` and ``channels`` talk to one through the SDK; ``token`` signs a token offline;
``agents`` runs agents as a worker of a server.

The commands are registered here, in the order ``--help`` lists them.
"""

from __future__ import annotations

from roomcast.cli import agent_workers, client_commands, serve, tokens
from roomcast.cli.root import app

app.command(
    "serve",
    help="Run the server (WebSocket /v1/ws, /healthz, /readyz) until Ctrl-C or SIGTERM.",
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


def main() -> None:
    """The ``roomcast`` console entry point."""
    app(prog_name="roomcast")


__all__ = ["app", "main"]
