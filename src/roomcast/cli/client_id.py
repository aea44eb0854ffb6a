"""The client_id the client commands use when no ``--client-id`` is given: one per user,
kept in the user's config directory (``$XDG_CONFIG_HOME/roomcast/client_id``, by default
``~/.config/roomcast/client_id`` on Linux), so a person's messages share an author.

The file is made on first use with the login name and a short random suffix (``alice-3f9c``:
two machines' ``ubuntu`` users are not one author). Edit it to be someone else, or delete it
to get a new one. An anonymous client may not pick an agent's name or a ``key:`` id
(``core/identity.py``); the login name is cut to the characters a client_id allows, so a
``:`` never gets in.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import secrets
from pathlib import Path

import platformdirs

from roomcast.protocol.messages import CHANNEL_PATTERN

LOGIN_CHARS = 40  # of the login name, at most


def client_id_path() -> Path:
    """Where the remembered client_id is kept."""
    return Path(platformdirs.user_config_dir("roomcast")) / "client_id"


def new_client_id() -> str:
    """The login name (cut to the characters a client_id allows) and 4 random hex digits."""
    try:
        login = getpass.getuser()
    except (OSError, KeyError):  # no USER variable and no passwd entry
        login = ""
    login = re.sub(r"[^A-Za-z0-9_.-]+", "-", login).strip("-.")[:LOGIN_CHARS] or "user"
    return f"{login}-{secrets.token_hex(2)}"


def remembered_client_id() -> str:
    """The user's client_id: the one in :func:`client_id_path`, made there on first use.

    Raises:
        ValueError: The file holds something that is not a client_id (one line).
        OSError: The file cannot be read or made.
    """
    path = client_id_path()
    with contextlib.suppress(FileNotFoundError):
        return _check(path, path.read_text(encoding="utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written aside, then linked into place: two commands starting at once agree on one.
    draft = path.with_name(f".client_id.{os.getpid()}.{secrets.token_hex(4)}")
    draft.write_text(new_client_id() + "\n", encoding="utf-8")
    try:
        with contextlib.suppress(FileExistsError):
            os.link(draft, path)
    finally:
        draft.unlink()
    return _check(path, path.read_text(encoding="utf-8"))


def _check(path: Path, text: str) -> str:
    client_id = text.strip()
    if not re.fullmatch(CHANNEL_PATTERN, client_id):
        raise ValueError(
            f"{path} holds {client_id!r}, which is not a client_id "
            "(1-200 of A-Z a-z 0-9 _ . : -): edit it or delete it to get a new one"
        )
    return client_id


__all__ = ["client_id_path", "new_client_id", "remembered_client_id"]
