"""Tokens read from the OS's random source in bulk (core/secret_tokens.py): shaped like
``secrets.token_urlsafe``'s, never handed out twice, and not shared with a forked child."""

from __future__ import annotations

import base64
import secrets
import subprocess
import sys
import threading

from roomcast.core.secret_tokens import token_urlsafe


def test_a_token_is_shaped_like_one_from_secrets() -> None:
    for nbytes in (1, 9, 18, 32, 5000):
        token = token_urlsafe(nbytes)
        assert len(token) == len(secrets.token_urlsafe(nbytes))
        assert len(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))) == nbytes


def test_no_two_tokens_are_the_same_across_threads() -> None:
    tokens: list[str] = []

    def take() -> None:
        tokens.extend(token_urlsafe(9) for _ in range(5000))

    threads = [threading.Thread(target=take) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(tokens) == len(set(tokens)) == 20000


# Run in a fresh interpreter: forking the test process itself (with its threads) would be
# unsafe, and deprecated from Python 3.12.
FORK_SCRIPT = """
import base64, os
from roomcast.core import secret_tokens
from roomcast.core.secret_tokens import token_urlsafe

token_urlsafe(1)  # the parent now holds bytes read ahead
ahead = bytes(secret_tokens._pool)
assert len(ahead) >= 9
read, write = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        os.close(read)
        os.write(write, f"{len(secret_tokens._pool)} {token_urlsafe(9)}".encode())
    finally:
        os._exit(0)
os.close(write)
with os.fdopen(read) as pipe:
    left, child_token = pipe.read().split()
os.waitpid(pid, 0)
parent_next = base64.urlsafe_b64encode(ahead[:9]).rstrip(b"=").decode()
print(left, child_token != parent_next, token_urlsafe(9) == parent_next)
"""


def test_a_forked_child_does_not_hand_out_its_parents_bytes() -> None:
    done = subprocess.run(
        [sys.executable, "-c", FORK_SCRIPT], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    # the child started with nothing read ahead and took other bytes; the parent went on
    # where it was
    assert done.stdout.split() == ["0", "True", "True"]
