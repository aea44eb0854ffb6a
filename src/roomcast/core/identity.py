"""Who a caller is (docs/protocol.md §6), the same for every transport.

A caller presents a token (``kind="token"``), an API key ``NAME:SECRET`` (``kind="key"``,
client id the one it picked or ``key:NAME``), or nothing: then it is anonymous, if the
server allows that, with the client id it picked or one made up. Credentials that are
presented and do not verify are always refused (40100).

Reserved identities (40100): a ``key:`` client id (any case) belongs to the key of that
name, and to nobody else: not an anonymous client, not another key, and not a token (the
key holder that signs a token picks its client id, often for a user who asked for one, so a
token never speaks as a key). The names of the server's agents are only for API-key holders
(agent workers). A connection renews its token with a token for the same client id.

Transports only find the credentials in their request (a query parameter, a header) and
hand them to :meth:`Identities.resolve`.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

from roomcast.protocol.errors import BadRequest, Forbidden, Unauthorized
from roomcast.protocol.keys import LEEWAY_S, IssuedToken, issue_token
from roomcast.protocol.messages import CHANNEL_PATTERN
from roomcast.settings import Settings

from .authz import Capability, Principal, authorize_claim

KEY_PREFIX = "key:"
"""The client ids of API keys: ``key:NAME`` is key NAME's alone."""


@dataclass(frozen=True, slots=True)
class Identity:
    """A principal and, for a token, when it expires (seconds since the epoch)."""

    principal: Principal
    expires_at: float | None = None


def check_client_id(client_id: str) -> None:
    """40000 unless ``client_id`` follows the channel-name rule."""
    if not re.fullmatch(CHANNEL_PATTERN, client_id):
        raise BadRequest("client_id must be 1-200 characters of A-Z a-z 0-9 _ . : -")


class Identities:
    """The identity rules of one server: its settings, and the names it reserves."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # The agents configured on this server: their names are not for anonymous clients.
        self.reserved: frozenset[str] = frozenset()

    # Whether a caller may claim a key (core/authz.py); the node asks its identities.
    authorize_claim = staticmethod(authorize_claim)

    def _check_not_reserved(self, client_id: str) -> None:
        """40100 if ``client_id`` is a key's or an agent's: not for anonymous or token
        callers."""
        if client_id.lower().startswith(KEY_PREFIX):
            raise Unauthorized(f"{client_id!r} is the identity of an API key: pick another")
        if client_id.lower() in {name.lower() for name in self.reserved}:  # no look-alikes
            raise Unauthorized("that name belongs to an agent; pick another")

    def anonymous(self, client_id: str | None) -> Principal:
        """Who an anonymous caller is: the client_id it picked, or a new one."""
        settings = self.settings
        if not settings.anonymous_enabled:
            raise Unauthorized("credentials required: this server does not allow anonymous access")
        if client_id is None or client_id == "":
            client_id = "anon-" + secrets.token_hex(4)
        check_client_id(client_id)
        self._check_not_reserved(client_id)
        return Principal(client_id, Capability.parse(settings.anonymous_capability))

    def token(self, token: str, client_id: str | None = None) -> Identity:
        """A token's holder; a ``client_id`` given alongside must be the token's."""
        claims = self.settings.key_ring.verify(token)
        if client_id and client_id != claims.client_id:
            raise Unauthorized(f"client_id {client_id!r} is not the token's client_id")
        self._check_not_reserved(claims.client_id)
        return Identity(Principal(claims.client_id, claims.capability, "token"), claims.exp)

    def key(self, name_secret: str, client_id: str | None = None) -> Identity:
        """An API key's holder: ``client_id`` if given, else ``key:NAME``."""
        key = self.settings.key_ring.authenticate(name_secret)
        own = KEY_PREFIX + key.name
        if client_id is None or client_id == "":
            client_id = own
        check_client_id(client_id)
        if client_id.lower().startswith(KEY_PREFIX) and client_id != own:
            raise Unauthorized(f"{client_id!r} is another API key's identity; yours is {own!r}")
        return Identity(Principal(client_id, key.capability, "key"))

    def resolve(self, *, token: str | None, key: str | None, client_id: str | None) -> Identity:
        """The caller, from whichever credential it presented (or none)."""
        if token is not None:
            return self.token(token, client_id)
        if key is not None:
            return self.key(key, client_id)
        return Identity(self.anonymous(client_id))

    def issue(
        self,
        name_secret: str,
        client_id: str,
        capability: dict[str, list[str]] | None,
        ttl_s: int,
    ) -> IssuedToken:
        """A token for ``client_id`` signed by the API key ``name_secret``, granting the
        key's capability or a narrower one (40300 if wider), valid for ``ttl_s``."""
        key = self.settings.key_ring.authenticate(name_secret)
        try:
            self._check_not_reserved(client_id)
        except Unauthorized as exc:  # the key is good: it asks for what it may not sign
            raise Forbidden(f"no token for {client_id!r}: {exc.message}") from None
        narrowed = None if capability is None else Capability.parse(capability)
        return issue_token(key, client_id, narrowed, ttl_s)

    def renew(self, current: Principal, token: str) -> Identity:
        """A connection's new token: the same client_id, a new capability and expiry (else
        40100, and the caller keeps its current identity)."""
        claims = self.settings.key_ring.verify(token)
        if claims.client_id != current.client_id:
            raise Unauthorized(f"the token is for {claims.client_id!r}, not {current.client_id!r}")
        self._check_not_reserved(claims.client_id)
        return Identity(Principal(claims.client_id, claims.capability, "token"), claims.exp)


__all__ = ["KEY_PREFIX", "LEEWAY_S", "Identities", "Identity", "check_client_id"]
