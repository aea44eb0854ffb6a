"""``roomcast agents``: agents as a worker process of a server, connected with one of its
API keys (any number of workers may run; each trigger is claimed by one)."""

from __future__ import annotations

import asyncio
import logging
import signal
from typing import Annotated, Any, NoReturn

import typer

from roomcast.aio import log_tasks
from roomcast.cli.root import DEFAULT_SERVER, ServerOption, console, note, run_client


def agents_command(
    agents_file: Annotated[
        str, typer.Option("--agents", help="The agents file (TOML, [[agents]] entries).")
    ],
    server: ServerOption = DEFAULT_SERVER,
    key: Annotated[
        str,
        typer.Option(
            "--key",
            envvar="ROOMCAST_AGENT_KEY",
            help="An API key NAME:SECRET of the server (env ROOMCAST_AGENT_KEY).",
        ),
    ] = "",
    grace: Annotated[
        float, typer.Option("--grace", help="Seconds running answers get at shutdown.")
    ] = 5.0,
) -> None:
    """Run agents as a worker of a server: answer in its rooms until Ctrl-C or SIGTERM.

    Any number of workers may run, on any machine: each trigger is claimed, so exactly one
    of them answers it.
    """
    from roomcast.agents.config import AgentConfigError, load_agents

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s"
    )
    if not key:
        raise typer.BadParameter(
            "workers connect with an API key of the server", param_hint="--key"
        )
    from roomcast.agents.providers import ProviderConfigError
    from roomcast.agents.runtime import AgentRuntime
    from roomcast.agents.tools import ToolError

    try:
        runtime = AgentRuntime(server, load_agents(agents_file), key=key)
    except (AgentConfigError, ProviderConfigError, ToolError) as exc:
        _refuse(f"cannot start the agents: {exc}")
    run_client(_run_agents(server, runtime, grace), server)


def _refuse(reason: str) -> NoReturn:
    """An agents file that cannot be used: one line naming the file and the entry (never
    wrapped, so it greps), exit code 2."""
    console.print(reason, style="red", markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


async def _run_agents(server: str, runtime: Any, grace: float) -> int:
    agents = [worker.config for worker in runtime.workers]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGUSR1, log_tasks)
    await runtime.start()
    note(f"agents {', '.join(a.name for a in agents)} answering on {server}; Ctrl-C stops")
    try:
        await stop.wait()
    finally:
        note("stopping: running answers get a few seconds to finish")
        await runtime.aclose(grace)
    return 0
