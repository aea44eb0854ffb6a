"""The ``roomcast`` commands as a user runs them: ``serve`` (what it prints, what it refuses,
how it stops), and ``pub``, ``sub``, ``history`` and ``channels`` against a running server."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

import pytest

from roomcast.backends import StoreOptions, open_backend
from roomcast.cli.serve import host_agents
from roomcast.core.node import Node
from roomcast.settings import Settings
from roomcast.testing import ServerProcess, free_port


@pytest.fixture(autouse=True)
def own_config_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The client commands remember a client_id in the config directory: a fresh one here,
    not the real home's."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "roomcast", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def serve_until_answered(
    args: list[str], env: dict[str, str], port: int, path: str
) -> tuple[int | None, str, int | None]:
    """Start ``roomcast serve``, wait for ``path`` to answer, stop it with SIGTERM: the exit
    code, what it printed, and the HTTP status ``path`` answered with."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "roomcast", "serve", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    status = None
    try:
        deadline = time.monotonic() + 20
        while status is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                    status = r.status
            except urllib.error.HTTPError as refused:
                status = refused.code
            except OSError:
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, output, status


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
    for name in ("ROOMCAST_STORE", "ROOMCAST_AGENTS", "OPENAI_API_KEY", "OPENAI_BASE_URL"):
        env.pop(name, None)  # as a new user runs it: the default agent, no model configured
    env.pop("ANTHROPIC_API_KEY", None)
    code, output, status = serve_until_answered(["--port", str(port)], env, port, "/healthz")
    assert status == 200
    database = tmp_path / "roomcast" / "roomcast.db"
    assert code == 0, output
    assert database.exists()
    assert f"serving on http://127.0.0.1:{port}" in output
    assert f"sqlite:///{database}" in output
    assert "presence_grace_s" in output  # the settings are printed
    assert "store flushed and closed" in output
    assert "agents:    assistant (scripted (no model), mention)" in output


# --------------------------------------------------------------------------- client commands


class LiveCommand:
    """A long-running ``python -m roomcast ...`` whose output lines are read as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "roomcast", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        self.out: queue.Queue[str] = queue.Queue()
        self.err: queue.Queue[str] = queue.Queue()
        self._threads = [
            threading.Thread(target=_pump, args=(stream, lines), daemon=True)
            for stream, lines in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))
        ]
        for thread in self._threads:
            thread.start()

    def __enter__(self) -> LiveCommand:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @staticmethod
    def line(lines: queue.Queue[str], containing: str, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        seen = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                break
            if containing in line:
                return line
            seen.append(line)
        raise AssertionError(f"no line with {containing!r} in {timeout}s; saw {seen}")

    def interrupt(self) -> tuple[int, str]:
        """Ctrl-C; returns the exit code and the rest of stderr."""
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(15)
        for thread in self._threads:
            thread.join(5)
        rest = []
        while not self.err.empty():
            rest.append(self.err.get())
        return code, "".join(rest)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def _pump(stream: IO[str] | None, lines: queue.Queue[str]) -> None:
    assert stream is not None
    for line in stream:
        lines.put(line)


CLIENT_TEST_ENV = {
    "ROOMCAST_PUBLISH_RATE": "0",
    "ROOMCAST_PRESENCE_GRACE_S": "2",
    "ROOMCAST_LOG_LEVEL": "warning",
}


def test_pub_and_sub_as_the_readme_shows() -> None:
    with ServerProcess(env=CLIENT_TEST_ENV) as server:
        with LiveCommand("sub", "room:lunch", "--server", server.url, "--client-id", "bob") as sub:
            sub.line(sub.err, "attached to room:lunch")
            published = run_cli(
                "pub", "room:lunch", "tacos?", "--server", server.url, "--client-id", "alice"
            )
            assert published.returncode == 0, published.stderr
            assert published.stdout.strip() == "1"
            assert sub.line(sub.out, "tacos?").strip() == "1 alice tacos?"
            code, rest = sub.interrupt()
            assert code == 0, rest
            assert "Traceback" not in rest


def test_sub_resumes_after_the_server_restarts_with_nothing_lost_or_repeated() -> None:
    with ServerProcess(env=CLIENT_TEST_ENV) as server:  # SQLite: the log outlives a restart
        with LiveCommand("sub", "room:garden", "--server", server.url, "--json") as sub:
            sub.line(sub.err, "attached to room:garden")

            def pub(text: str) -> None:
                result = run_cli("pub", "room:garden", text, "--server", server.url)
                assert result.returncode == 0, result.stderr

            pub("one")
            assert json.loads(sub.line(sub.out, '"one"'))["serial"] == 1
            server.stop()
            server.start()
            pub("two")  # most likely before sub is back: it comes in the replay
            sub.line(sub.err, "reconnected")
            pub("three")
            events = [json.loads(sub.line(sub.out, text)) for text in ('"two"', '"three"')]
            assert [(e["serial"], e["data"]) for e in events] == [(2, "two"), (3, "three")]
            assert sub.out.empty()  # nothing repeated
            code, _ = sub.interrupt()
            assert code == 0


def test_pub_json_name_and_id_then_history_oldest_first() -> None:
    with ServerProcess(env=CLIENT_TEST_ENV) as server:
        url = server.url
        first = run_cli("pub", "room:poll", '{"vote": "yes"}', "--json", "--server", url)
        assert first.stdout.strip() == "1", first.stderr
        named = run_cli(
            "pub", "room:poll", "hi", "--name", "greeting", "--id", "k1", "--server", url
        )
        again = run_cli("pub", "room:poll", "hi again", "--id", "k1", "--server", url)
        assert named.stdout.strip() == again.stdout.strip() == "2"  # the id dedups
        for k in range(3):
            run_cli("pub", "room:poll", f"msg {k}", "--server", url, "--client-id", "carol")
        history = run_cli("history", "room:poll", "--limit", "3", "--server", url)
        assert history.returncode == 0, history.stderr
        assert history.stdout.splitlines() == [
            "3 carol msg 0",
            "4 carol msg 1",
            "5 carol msg 2",
        ]
        raw = run_cli("history", "room:poll", "--json", "--server", url)
        messages = [json.loads(line) for line in raw.stdout.splitlines()]
        assert [m["msg_serial"] for m in messages] == [1, 2, 3, 4, 5]
        assert messages[0]["data"] == {"vote": "yes"} and messages[1]["name"] == "greeting"
        bad = run_cli("pub", "room:poll", "{not json", "--json", "--server", url)
        assert bad.returncode != 0 and "not JSON" in bad.stderr


def _newest_message(url: str, channel: str) -> dict[str, object]:
    raw = run_cli("history", channel, "--json", "--server", url)
    assert raw.returncode == 0, raw.stderr
    message: dict[str, object] = json.loads(raw.stdout.splitlines()[-1])
    return message


def test_pub_stream_appends_each_line_of_stdin_as_it_comes() -> None:
    with ServerProcess(env=CLIENT_TEST_ENV) as server:
        cmd = [sys.executable, "-m", "roomcast", "pub", "room:live", "--stream"]
        proc = subprocess.Popen(
            [*cmd, "--server", server.url, "--client-id", "poet"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stdin is not None and proc.stdout is not None
        try:
            assert proc.stdout.readline().strip() == "1"  # the msg_serial, printed at once
            proc.stdin.write("roses are red\n")
            proc.stdin.flush()
            deadline = time.monotonic() + 20
            while (message := _newest_message(server.url, "room:live"))["data"] == "":
                assert time.monotonic() < deadline, message
                time.sleep(0.1)
            # The first line is in before the input ends, and the message still streams.
            assert message["data"] == "roses are red\n" and message["status"] == "streaming"
            proc.stdin.write("violets are blue\n")
            proc.stdin.close()
            assert proc.wait(30) == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            if proc.poll() is None:
                proc.kill()
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        message = _newest_message(server.url, "room:live")
        assert message["data"] == "roses are red\nviolets are blue\n"
        assert message["status"] == "complete" and message["client_id"] == "poet"
        refused = run_cli("pub", "room:live", "text", "--stream", "--server", server.url)
        assert refused.returncode != 0 and "--stream reads stdin" in refused.stderr


def test_sub_with_rewind_and_from_serial() -> None:
    with ServerProcess(env=CLIENT_TEST_ENV) as server:
        for k in range(5):
            run_cli("pub", "room:old", f"m{k}", "--server", server.url, "--client-id", "dan")
        with (
            LiveCommand("sub", "room:old", "--rewind", "2", "--server", server.url) as rewound,
            LiveCommand(
                "sub", "room:old", "--from-serial", "3", "--server", server.url
            ) as replayed,
        ):
            assert rewound.line(rewound.out, "m3").strip() == "4 dan m3"
            assert rewound.line(rewound.out, "m4").strip() == "5 dan m4"
            assert replayed.line(replayed.out, "m3").strip() == "4 dan m3"
            assert replayed.line(replayed.out, "m4").strip() == "5 dan m4"
            assert rewound.interrupt()[0] == replayed.interrupt()[0] == 0


def test_channels_lists_what_has_messages() -> None:
    with ServerProcess(env=CLIENT_TEST_ENV) as server:
        run_cli("pub", "room:a", "x", "--server", server.url)
        run_cli("pub", "room:b", "y", "--server", server.url)
        run_cli("pub", "room:b", "z", "--server", server.url)
        run_cli("pub", "team:c", "w", "--server", server.url)
        listed = run_cli("channels", "--prefix", "room:", "--json", "--server", server.url)
        assert listed.returncode == 0, listed.stderr
        items = [json.loads(line) for line in listed.stdout.splitlines()]
        assert [(i["channel"], i["serial"]) for i in items] == [("room:a", 1), ("room:b", 2)]
        assert all(isinstance(i["updated_at"], int) and i["occupancy"] == 0 for i in items)
        table = run_cli("channels", "--server", server.url)
        assert table.returncode == 0, table.stderr
        assert "room:b" in table.stdout and "team:c" in table.stdout


def test_client_commands_say_plainly_when_the_server_is_not_there() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["pub", "room:x", "hi"], ["history", "room:x"], ["channels"]):
        result = run_cli(*args, "--server", url)
        assert result.returncode == 2, (args, result.stderr)
        assert f"cannot reach the server at {url}" in result.stderr
        assert "Traceback" not in result.stderr


def test_sigterm_ends_open_event_streams_at_once() -> None:
    import threading
    import urllib.request

    with ServerProcess(env={"ROOMCAST_LOG_LEVEL": "warning"}) as server:
        opened = threading.Event()

        def listen() -> None:
            with urllib.request.urlopen(server.url + "/v1/channels/room:x/events", timeout=30) as r:
                opened.set()
                while r.readline():
                    pass

        reader = threading.Thread(target=listen, daemon=True)
        reader.start()
        assert opened.wait(10)
        started = time.monotonic()
        assert server.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 3  # not uvicorn's 5 s graceful timeout
        reader.join(5)
        assert not reader.is_alive()


def test_serve_with_keys_starts_on_a_public_address_without_anonymous_access() -> None:
    port = free_port()
    args = ["--host", "0.0.0.0", "--port", str(port), "--store", "memory://"]
    args += ["--key", "ops:topsecret", "--key", "bot:hush:{}"]
    env = {**os.environ, "COLUMNS": "200"}
    code, output, status = serve_until_answered(args, env, port, "/v1/channels")
    assert status == 401  # anonymous access is off
    assert code == 0, output
    assert "anonymous: off" in output and "ops, bot" in output
    assert "topsecret" not in output and "hush" not in output


def test_serve_refuses_bad_keys_clearly() -> None:
    for args, says in [
        (["--key", "nocolon"], "NAME:SECRET"),
        (["--key", "a:1", "--key", "a:2"], "configured twice"),
        (["--key", "a:1:{oops"], "not JSON"),
    ]:
        result = run_cli("serve", "--port", str(free_port()), *args)
        assert result.returncode != 0 and says in result.stderr, (args, result.stderr)


def test_token_prints_a_token_offline() -> None:
    import jwt

    result = run_cli("token", "--key", "ops:" + "s" * 32, "--client-id", "alice", "--ttl", "60")
    assert result.returncode == 0, result.stderr
    claims = jwt.decode(result.stdout.strip(), "s" * 32, algorithms=["HS256"])
    assert claims["client_id"] == "alice" and claims["capability"] == {"*": ["*"]}
    wider = run_cli(
        "token",
        "--key",
        'bot:x:{"room:*": ["subscribe"]}',
        "--client-id",
        "a",
        "--capability",
        '{"*": ["subscribe"]}',
    )
    assert wider.returncode != 0 and "40300" in wider.stderr


def test_objects_prints_the_tree_and_the_raw_snapshot() -> None:
    import httpx

    with ServerProcess(env=CLIENT_TEST_ENV) as server:
        url = f"{server.url}/v1/channels/room:plan/objects"
        ops = [
            {"type": "counter.create", "value": 3},
            {"type": "map.create", "entries": {"title": "Garden", "beds": 2}},
            {"type": "map.set", "object_id": "root", "key": "score", "value": {"object_id": "counter-1"}},  # noqa: E501
            {"type": "map.set", "object_id": "root", "key": "plan", "value": {"object_id": "map-2"}},  # noqa: E501
            {"type": "counter.create", "value": 9},
        ]  # fmt: skip
        for op in ops:
            assert httpx.post(url, json={"op": op}).status_code == 200
        shown = run_cli("objects", "room:plan", "--server", server.url)
        assert shown.returncode == 0, shown.stderr
        first, rest = shown.stdout.split("\n", 1)
        assert first == "room:plan as of serial 5"
        tree, orphans = rest.split("not referenced from root:\n")
        assert json.loads(tree) == {"score": 3, "plan": {"title": "Garden", "beds": 2}}
        assert json.loads(orphans) == {"counter-5": 9}
        raw = run_cli("objects", "room:plan", "--json", "--server", server.url)
        snapshot = json.loads(raw.stdout)
        assert snapshot["serial"] == 5 and snapshot["objects"]["map-2"]["entries"]["beds"] == 2


def test_agents_and_serve_refuse_a_bad_agents_file_clearly(tmp_path: Path) -> None:
    bad_tool = tmp_path / "tools.toml"
    bad_tool.write_text('[[agents]]\nname = "x"\nprovider = "scripted"\ntools = ["teleport"]\n')
    bad_provider = tmp_path / "provider.toml"
    bad_provider.write_text('[[agents]]\nname = "x"\nprovider = "nope"\n')
    worker = run_cli("agents", "--agents", str(bad_tool), "--key", "k:s")
    assert worker.returncode == 2 and "unknown tool 'teleport'" in worker.stderr
    assert "Traceback" not in worker.stderr + worker.stdout
    no_key = run_cli("agents", "--agents", str(bad_tool))
    assert no_key.returncode == 2 and "API key" in no_key.stderr
    served = run_cli("serve", "--port", str(free_port()), "--agents", str(bad_provider))
    assert served.returncode == 2, served.stdout + served.stderr
    assert "[[agents]] #1 ('x'): provider: must be one of" in served.stderr
    assert "Traceback" not in served.stderr + served.stdout


def test_hosted_agents_get_a_private_key_and_reserve_their_names() -> None:
    settings = Settings.load({})
    # A real node on a memory store (not started: serve only sets its agent lists).
    server = Node(open_backend("memory://", StoreOptions()), settings)
    hosted = host_agents(server, settings, {})
    assert server.agent_names == frozenset({"assistant"})
    assert [a.name for a in server.agents] == ["assistant"]
    [key] = [k for k in settings.key_ring if k.name.startswith("roomcast-agents-")]
    assert hosted.runtime is not None
    assert key.name not in dict(settings.describe())["keys"]  # never printed
    assert settings.anonymous_enabled  # the private key does not turn anonymous access off


def http_status(url: str, body: object = None) -> int:
    """The status ``url`` answers (a POST of ``body`` as JSON, if given)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "X-Roomcast-Client-Id": "alice"}
    request = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_serve_refuses_a_damaged_store_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    with ServerProcess(store=f"sqlite:///{path}") as server:
        for i in range(100):
            url = f"{server.url}/v1/channels/room:{i % 7}/messages"
            assert http_status(url, {"data": "x" * 2000}) == 200
    page = 4096
    with path.open("r+b") as file:  # garbage over pages 3 to 8; the header stays intact
        file.seek(2 * page)
        file.write(os.urandom(6 * page))
    result = run_cli("serve", "--store", f"sqlite:///{path}", "--port", str(free_port()))
    assert result.returncode == 3
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"cannot open the store sqlite:///{path}: {path} is damaged (")
    assert "Traceback" not in result.stdout + result.stderr


# The immutable journal is a store fault, provoked on purpose: the writer logs it at ERROR.
@pytest.mark.server_log(expect=[r"sqlite write transaction failed"])
def test_readyz_fails_while_the_store_takes_no_writes(tmp_path: Path) -> None:
    path = tmp_path / "x.db"
    wal = path.with_name(path.name + "-wal")
    with ServerProcess(store=f"sqlite:///{path}") as server:
        publish = f"{server.url}/v1/channels/room:x/messages"
        assert http_status(publish, {"data": "one"}) == 200
        if subprocess.run(["chattr", "+i", str(wal)], capture_output=True).returncode != 0:
            pytest.skip("chattr +i is not available here")
        try:  # the journal is immutable: no write commits, not even as root
            assert http_status(server.url + "/readyz") == 503
            assert http_status(publish, {"data": "two"}) == 503
        finally:
            subprocess.run(["chattr", "-i", str(wal)], check=True)
        assert http_status(server.url + "/readyz") == 200
        assert http_status(publish, {"data": "three"}) == 200
