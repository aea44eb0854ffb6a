"""``roomcast agents`` as an operator runs it: a worker of a real server."""

from __future__ import annotations

import signal
from pathlib import Path

from roomcast.testing import AgentsProcess, ServerProcess

KEY = "workers:" + "w" * 32
AGENTS = """
[[agents]]
name = "helper"
provider = "scripted"
rooms = ["room:*"]
"""


async def test_sigusr1_logs_where_each_task_of_a_worker_stands_and_it_goes_on(
    tmp_path: Path,
) -> None:
    agents = tmp_path / "agents.toml"
    agents.write_text(AGENTS)
    env = {"ROOMCAST_KEYS": KEY, "ROOMCAST_AGENTS": "none"}
    with (
        ServerProcess(store="memory://", env=env) as server,
        AgentsProcess(server.url, agents, KEY) as worker,
    ):
        await worker.logged("agent helper is up", within=30)
        assert worker.proc is not None
        worker.proc.send_signal(signal.SIGUSR1)
        await worker.logged("SIGUSR1:", within=30)
        assert worker.proc.poll() is None  # it goes on
        assert worker.stop() == 0
        assert "Traceback" not in worker.output()
