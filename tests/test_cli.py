"""``roomcast serve`` as a user runs it: what it prints, what it refuses, how it stops."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from roomcast.testing import ServerProcess, free_port


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_serve_refuses_a_public_address_with_no_way_in() -> None:
    result = run_cli("serve", "--host", "0.0.0.0", "--port", str(free_port()))
    assert result.returncode != 0
    assert "--allow-anonymous" in result.stderr


def test_serve_rejects_an_unknown_store_url() -> None:
    result = run_cli("serve", "--store", "postgres://db", "--port", str(free_port()))
    assert result.returncode != 0
    assert "unknown store URL" in result.stderr


def test_serve_reports_a_bad_setting_by_name() -> None:
    result = run_cli("serve", env={"ROOMCAST_PRESENCE_GRACE_S": "soon"})
    assert result.returncode != 0
    assert "ROOMCAST_PRESENCE_GRACE_S" in result.stderr


def test_a_second_server_on_the_same_file_says_who_holds_it(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'shared.db'}"
    with ServerProcess(store=store) as first:
        assert first.proc is not None
        result = run_cli("serve", "--store", store, "--port", str(free_port()))
        assert result.returncode == 3
        assert f"pid {first.proc.pid}" in result.stderr.replace("\n", " ")


def test_default_store_lives_in_the_user_data_directory_and_sigterm_stops_cleanly(
    tmp_path: Path,
) -> None:
    port = free_port()
    env = {**os.environ, "XDG_DATA_HOME": str(tmp_path), "COLUMNS": "200"}
    env.pop("ROOMCAST_STORE", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        proc.kill()
    database = tmp_path / "roomcast" / "roomcast.db"
    assert proc.returncode == 0, output
    assert database.exists()
    assert f"serving on http://127.0.0.1:{port}" in output
    assert f"sqlite:///{database}" in output
    assert "presence_grace_s" in output  # the settings are printed
    assert "store flushed and closed" in output
