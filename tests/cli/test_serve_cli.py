"""``roomcast serve`` as a newcomer meets it: a port or address it cannot listen on is one
line, and ``--help`` fits an 80-column terminal."""

from __future__ import annotations

import gc
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from roomcast.cli.serve import GC_THRESHOLDS, freeze_startup_objects
from roomcast.settings import PANELS, SETTING_NAMES
from roomcast.testing import ServerProcess, free_port


def serve(*args: str, columns: int = 200) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", "serve", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": str(columns)},
    )


def assert_refused_in_one_line(result: subprocess.CompletedProcess[str], line: str) -> None:
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [line]
    output = result.stdout + result.stderr
    for noise in ("Traceback", "Task exception", "serving on"):
        assert noise not in output


def test_a_busy_port_is_one_line_and_leaves_the_store_free(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'chat.db'}"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = serve("--port", str(port), "--store", store)
    assert_refused_in_one_line(result, f"port {port} is in use; pass --port")
    with ServerProcess(store=store) as server:  # nothing was left open or locked
        assert server.proc is not None and server.proc.poll() is None


def test_an_address_of_another_machine_is_one_line() -> None:
    result = serve("--host", "203.0.113.9", "--allow-anonymous", "--store", "memory://")
    assert_refused_in_one_line(
        result, "cannot listen on 203.0.113.9: it is not an address of this machine; pass --host"
    )


def help_text(columns: int) -> tuple[list[str], str]:
    """``serve --help`` at this width: its lines, and its words with the table and the
    wrapping taken out (so a default cut over two lines reads as one)."""
    result = serve("--help", columns=columns)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    words = " ".join(line.strip(" │╭╮╰╯─") for line in lines)
    return lines, " ".join(words.split())


def test_help_fits_80_columns_in_groups_with_every_name_whole_and_the_defaults() -> None:
    lines, words = help_text(80)
    assert max(len(line) for line in lines) <= 80
    assert len(lines) < 130  # it was 229 (294 by now) with every option in one group
    for panel in PANELS:
        assert any(line.startswith(f"╭─ {panel} ─") for line in lines), panel
    for name in SETTING_NAMES:
        flag = "--key" if name == "keys" else "--" + name.replace("_", "-")
        assert re.search(rf"^│ {flag} ", "\n".join(lines), re.M), flag  # whole, not cut
    assert "…" not in words
    assert "--no-allow-anonymous" in words
    assert "[[agents]]" in words  # rich markup would eat it
    assert "redis://" in words
    assert "[default: 127.0.0.1]" in words
    assert "[default: 8000]" in words
    assert "ROOMCAST_<NAME>" in words


def test_no_allow_anonymous_still_turns_anonymous_access_off() -> None:
    with ServerProcess(store="memory://", args=["--no-allow-anonymous"]) as server:
        assert "anonymous: off" in server.output()
    result = serve("--allow-anonymous", "--no-allow-anonymous", "--store", "memory://")
    assert result.returncode == 2
    assert "--allow-anonymous and --no-allow-anonymous say opposite things" in " ".join(
        result.stderr.replace("│", " ").split()
    )


def test_sigusr1_logs_where_each_task_stands_and_the_server_goes_on() -> None:
    with ServerProcess(store="memory://", env={"ROOMCAST_AGENTS": "none"}) as server:
        assert server.proc is not None
        server.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while "SIGUSR1:" not in server.output():
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.05)
        assert "roomcast-stream-sweeper" in server.output()  # one of the node's tasks
        assert "Traceback" not in server.output()
        assert server.stop() == 0


def test_startup_objects_are_frozen_and_young_collections_are_rarer() -> None:
    before = gc.get_threshold()
    try:
        freeze_startup_objects()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def serve_slow_agent(tmp_path: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``roomcast serve`` with an agent whose MCP server takes 2 s to fail, so the agent
    starts that much later: the process, its port and its log."""
    slow = tmp_path / "slow_mcp.py"
    slow.write_text("import time\ntime.sleep(2)\n")  # then exits: a failed MCP server
    agents = tmp_path / "agents.toml"
    agents.write_text(
        f'[[mcp_servers]]\nname = "slow"\ncommand = "{sys.executable}"\nargs = ["{slow}"]\n\n'
        '[[agents]]\nname = "helper"\nprovider = "scripted"\ntools = ["mcp:slow"]\n'
    )
    port = free_port()
    log = tmp_path / "serve.log"
    command = [sys.executable, "-m", "roomcast", "serve", "--port", str(port)]
    command += ["--store", "memory://", "--agents", str(agents)]
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return proc, port, log


def test_readyz_says_the_agents_are_starting_until_they_are_up(tmp_path: Path) -> None:
    """Meanwhile the server listens but is not ready, so nothing is sent to it before its
    agents are up."""
    proc, port, log = serve_slow_agent(tmp_path)
    try:
        answers: list[tuple[int, str]] = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (answers and answers[-1][0] == 200):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                    answers.append((r.status, r.read().decode()))
            except urllib.error.HTTPError as exc:
                answers.append((exc.code, exc.read().decode()))
            except OSError:
                pass  # not listening yet
            time.sleep(0.05)
        assert (503, '{"status":"unavailable","reason":"the agents are starting"}') in answers
        assert answers[-1][0] == 200
        assert "agents running in this process: helper" in log.read_text()
    finally:
        proc.terminate()
        proc.wait(30)


def test_sigterm_while_the_agents_start_stops_the_server(tmp_path: Path) -> None:
    """A shutdown that comes while the agents start (their connections are closed under
    them) ends the start: the process exits, it does not wait for them forever."""
    proc, port, log = serve_slow_agent(tmp_path)
    try:
        deadline = time.monotonic() + 30
        while "the agents are starting" not in readyz(port) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the agent is connected, its MCP server not yet failed
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def readyz(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return str(response.read().decode())
    except urllib.error.HTTPError as exc:
        return str(exc.read().decode())
    except OSError:
        return ""  # not listening yet
