"""Redis servers that tests start and stop themselves, on free ports (never the shared Redis
at 127.0.0.1:6379): a plain ``redis-server`` without persistence, which a test may stop,
start again (it comes back empty) or flush."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path

import pytest
import redis

from roomcast.testing import free_port


class RedisServer:
    """``redis-server`` on a free port; it can be stopped and started again on the same port.
    Without persistence (the default) it then comes back empty; with ``persistent`` it keeps
    every write in an append-only file (fsync always) and comes back as it was."""

    def __init__(
        self, folder: Path, password: str | None = None, *, persistent: bool = False
    ) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("these tests need redis-server on the PATH", pytrace=False)
        self.exe = exe
        self.folder = folder
        self.port = free_port()
        self.password = password
        self.persistent = persistent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, password=self.password, socket_connect_timeout=2)

    def start(self) -> None:
        cmd = [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
        if self.persistent:
            cmd += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            cmd += ["--appendonly", "no"]
        cmd += ["--dir", str(self.folder)]
        if self.password:
            cmd += ["--requirepass", self.password]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while True:
            client = self.client()
            try:
                client.ping()
                return
            except redis.RedisError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.05)
            finally:
                client.close()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None
