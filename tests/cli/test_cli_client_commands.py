"""``pub``, ``sub``, ``history``, ``objects`` and ``channels`` as a newcomer meets them: a
mistyped server URL, multi-line text, the server's own channels, and who you are."""

from __future__ import annotations

import getpass
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from roomcast.testing import ServerProcess

ENV = {"ROOMCAST_PUBLISH_RATE": "0", "ROOMCAST_LOG_LEVEL": "warning"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    with ServerProcess(env=ENV) as proc:
        yield proc


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """The config directory the commands are given (XDG_CONFIG_HOME)."""
    return tmp_path / "config"


def roomcast(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "80", "XDG_CONFIG_HOME": str(config)},
    )


@pytest.mark.parametrize("url", ["localhost:8000", "ftp://example.org", "http://host:port"])
def test_client_commands_refuse_a_bad_server_url_in_one_line(config: Path, url: str) -> None:
    commands = [["pub", "room:x", "hi"], ["pub", "room:x", "--stream"], ["sub", "room:x"]]
    commands += [["history", "room:x"], ["objects", "room:x"], ["channels"]]
    for command in commands:
        result = roomcast(config, *command, "--server", url)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stderr.count("\n") == 1, (command, result.stderr)
        assert result.stderr.startswith(f"not a server URL: {url!r} ("), result.stderr
        assert "use http://host:port or ws://host:port" in result.stderr
        assert result.stdout == ""


def test_history_prints_text_as_it_is_with_continuation_lines_indented(
    server: ServerProcess, config: Path
) -> None:
    url = server.url
    for text in ("roses are red\nviolets are blue\n", "one line"):
        sent = roomcast(config, "pub", "room:poem", text, "--server", url, "--client-id", "ann")
        assert sent.returncode == 0, sent.stderr
    sent = roomcast(config, "pub", "room:poem", '{"a": [1]}', "--json", "--server", url)
    assert sent.returncode == 0, sent.stderr
    shown = roomcast(config, "history", "room:poem", "--server", url)
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert lines[:3] == ["1 ann roses are red", "      violets are blue", "2 ann one line"]
    assert re.fullmatch(r'3 \S+ \{"a":\[1\]\}', lines[3])
    raw = roomcast(config, "history", "room:poem", "--json", "--server", url)
    assert json.loads(raw.stdout.splitlines()[0])["data"] == "roses are red\nviolets are blue\n"


def test_channels_hides_the_servers_own_channels_unless_asked(
    server: ServerProcess, config: Path
) -> None:
    for channel in ("lobby", "room:a", "room:b"):
        roomcast(config, "pub", channel, "x", "--server", server.url)

    def listed(*args: str) -> list[str]:
        result = roomcast(config, "channels", "--json", "--server", server.url, *args)
        assert result.returncode == 0, result.stderr
        return [json.loads(line)["channel"] for line in result.stdout.splitlines()]

    assert "meta:channels" not in listed()
    assert listed("--limit", "2") == ["lobby", "room:a"]  # two shown, though meta: sorts first
    assert "meta:channels" in listed("--all")
    assert listed("--prefix", "meta:") == ["meta:channels"]  # asked for by name
    table = roomcast(config, "channels", "--server", server.url)
    assert "room:b" in table.stdout and "meta:" not in table.stdout


def test_pub_without_client_id_keeps_one_id_per_user_in_the_config_directory(
    server: ServerProcess, config: Path
) -> None:
    def author_of_the_newest() -> str:
        raw = roomcast(config, "history", "room:me", "--json", "--server", server.url)
        client_id: str = json.loads(raw.stdout.splitlines()[-1])["client_id"]
        return client_id

    kept = config / "roomcast" / "client_id"
    assert roomcast(config, "pub", "room:me", "one", "--server", server.url).returncode == 0
    first = author_of_the_newest()
    assert kept.read_text().strip() == first
    login = re.sub(r"[^A-Za-z0-9_.-]+", "-", getpass.getuser()).strip("-.")
    assert re.fullmatch(re.escape(login[:40]) + r"-[0-9a-f]{4}", first)
    roomcast(config, "pub", "room:me", "two", "--server", server.url)
    assert author_of_the_newest() == first  # the same author, call after call
    roomcast(config, "pub", "room:me", "three", "--server", server.url, "--client-id", "zoe")
    assert author_of_the_newest() == "zoe"  # --client-id wins, and is not remembered
    assert kept.read_text().strip() == first
    kept.write_text("pat\n")  # edited by hand: now pat
    roomcast(config, "pub", "room:me", "four", "--server", server.url)
    assert author_of_the_newest() == "pat"
    kept.unlink()  # deleted: a new one
    roomcast(config, "pub", "room:me", "five", "--server", server.url)
    assert author_of_the_newest() not in (first, "pat") and kept.exists()


def test_a_remembered_client_id_that_is_not_one_is_named_with_its_file(
    server: ServerProcess, config: Path
) -> None:
    kept = config / "roomcast" / "client_id"
    kept.parent.mkdir(parents=True)
    kept.write_text("not one\n")
    result = roomcast(config, "pub", "room:me", "hi", "--server", server.url)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert str(kept) in result.stderr and "'not one'" in result.stderr
