"""Tokens read from the OS's random source in bulk (core/secret_tokens.py): shaped like
``secrets.token_urlsafe``'s, never handed out twice, and not shared with a forked child."""

from __future__ import annotations

import base64
import os
import secrets
import threading

from roomcast.core import secret_tokens
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


def test_a_forked_child_does_not_hand_out_its_parents_bytes() -> None:
    token_urlsafe(9)  # the parent now holds bytes read ahead
    ahead = bytes(secret_tokens._pool)
    assert ahead
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report what it would hand out next
        os.close(read)
        os.write(write, f"{len(secret_tokens._pool)} {token_urlsafe(9)}".encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        left, child_token = pipe.read().split()
    os.waitpid(pid, 0)
    assert left == "0"  # the child started with nothing read ahead
    parent_next = base64.urlsafe_b64encode(ahead[:9]).rstrip(b"=").decode()
    assert child_token != parent_next
    assert token_urlsafe(9) == parent_next  # the parent goes on where it was
