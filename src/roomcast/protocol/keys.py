"""API keys and the tokens they sign (docs/protocol.md §6).

A key is ``NAME:SECRET[:CAPABILITY_JSON]`` (split on the first two colons only); without a
capability it grants everything. A token is an HS256 JWT whose header ``kid`` names the key
that signed it, with the claims ``client_id``, ``exp`` and ``capability``. A token never
grants more than its key, and removing a key invalidates every token it signed.

Keys and tokens are values, parsed, signed and checked without I/O, so the settings read
their keys with this module alone.
"""

from __future__ import annotations

import hmac
import json
import re
import time
import warnings
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import jwt
from jwt.warnings import InsecureKeyLengthWarning

from roomcast.protocol.capabilities import ALL, Capability
from roomcast.protocol.errors import BadRequest, Forbidden, RoomcastError, Unauthorized
from roomcast.protocol.messages import CHANNEL_PATTERN

DEFAULT_TTL_S = 3600
MAX_TTL_S = 86400
LEEWAY_S = 1.0
ALGORITHM = "HS256"

_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class KeySpecError(ValueError):
    """A key that cannot be used; the message says why, never showing the secret."""


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A configured key: its name (the token's ``kid``), its secret, what it grants."""

    name: str
    secret: str = field(repr=False)
    capability: Capability

    @classmethod
    def parse(cls, spec: str) -> ApiKey:
        """``NAME:SECRET[:CAPABILITY_JSON]``, split on the first two colons only."""
        parts = spec.strip().split(":", 2)
        if len(parts) < 2:
            raise KeySpecError("a key is NAME:SECRET[:CAPABILITY_JSON] (no ':' found)")
        name, secret = parts[0], parts[1]
        if not _NAME.fullmatch(name):
            raise KeySpecError(f"key name {name!r} must be 1-64 characters of A-Z a-z 0-9 _ . -")
        if not secret:
            raise KeySpecError(f"key {name!r} has an empty secret")
        capability = ALL
        if len(parts) == 3 and parts[2].strip():
            try:
                raw = json.loads(parts[2])
            except ValueError as exc:
                raise KeySpecError(f"key {name!r}: the capability is not JSON: {exc}") from None
            try:
                capability = Capability.parse(raw)
            except BadRequest as exc:
                raise KeySpecError(f"key {name!r}: {exc.message}") from None
        return cls(name, secret, capability)


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """A verified token."""

    key_name: str
    client_id: str
    capability: Capability
    exp: float  # seconds since the epoch


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A signed token and when it expires."""

    token: str
    expires_at: int  # ms since the epoch


def check_client_id(client_id: str) -> None:
    if not re.fullmatch(CHANNEL_PATTERN, client_id):
        raise BadRequest("client_id must be 1-200 characters of A-Z a-z 0-9 _ . : -")


def issue_token(
    key: ApiKey,
    client_id: str,
    capability: Capability | None = None,
    ttl_s: int = DEFAULT_TTL_S,
    *,
    now: float | None = None,
) -> IssuedToken:
    """A token for ``client_id`` signed by ``key``; ``capability`` defaults to the key's and
    may not be wider (40300)."""
    check_client_id(client_id)
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int) or not 1 <= ttl_s <= MAX_TTL_S:
        raise BadRequest(f"ttl_s must be a whole number of seconds from 1 to {MAX_TTL_S}")
    if capability is None:
        capability = key.capability
    elif not key.capability.covers(capability):
        raise Forbidden(f"the capability asked for is wider than key {key.name!r} grants")
    exp = int(time.time() if now is None else now) + ttl_s
    claims = {"client_id": client_id, "exp": exp, "capability": capability.to_json()}
    with warnings.catch_warnings():  # the operator chose the secret; short ones still work
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        token = jwt.encode(claims, key.secret, algorithm=ALGORITHM, headers={"kid": key.name})
    return IssuedToken(token, exp * 1000)


class KeyRing:
    """The configured keys, by name."""

    def __init__(self, keys: Iterable[ApiKey] = ()) -> None:
        self._keys: dict[str, ApiKey] = {}
        for key in keys:
            if key.name in self._keys:
                raise KeySpecError(f"key {key.name!r} is configured twice")
            self._keys[key.name] = key

    @classmethod
    def parse(cls, specs: Sequence[str]) -> KeyRing:
        return cls(ApiKey.parse(spec) for spec in specs if spec.strip())

    def add(self, key: ApiKey) -> None:
        """Add a key at run time (the server's own key for its in-process agents)."""
        if key.name in self._keys:
            raise KeySpecError(f"key {key.name!r} is configured twice")
        self._keys[key.name] = key

    def __len__(self) -> int:
        return len(self._keys)

    def __iter__(self) -> Iterator[ApiKey]:
        return iter(self._keys.values())

    @property
    def names(self) -> list[str]:
        return list(self._keys)

    def get(self, name: str) -> ApiKey | None:
        return self._keys.get(name)

    def authenticate(self, name_secret: str) -> ApiKey:
        """The key for ``NAME:SECRET``, or 40100."""
        name, _, secret = name_secret.partition(":")
        key = self._keys.get(name)
        # Compare even for an unknown name, so the time taken says nothing.
        expected = key.secret if key is not None else "\0" * max(len(secret), 1)
        if not hmac.compare_digest(expected.encode(), secret.encode()) or key is None:
            raise Unauthorized("invalid API key")
        return key

    def verify(self, token: str, *, now: float | None = None) -> TokenClaims:
        """The claims of a valid token, or 40100 (unknown key, bad signature, expired)."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise Unauthorized("invalid token: not a JWT") from None
        kid = header.get("kid")
        key = self._keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise Unauthorized("invalid token: signed by an unknown key")
        options: Any = {"require": ["exp", "client_id", "capability"]}
        if now is not None:
            options["verify_exp"] = False
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", InsecureKeyLengthWarning)
                claims = jwt.decode(
                    token, key.secret, algorithms=[ALGORITHM], leeway=LEEWAY_S, options=options
                )
        except jwt.ExpiredSignatureError:
            raise Unauthorized("token expired") from None
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        exp, client_id = claims["exp"], claims["client_id"]
        if now is not None and now > exp + LEEWAY_S:
            raise Unauthorized("token expired")
        if not isinstance(client_id, str) or not re.fullmatch(CHANNEL_PATTERN, client_id):
            raise Unauthorized("invalid token: bad client_id")
        try:
            capability = Capability.parse(claims["capability"])
        except RoomcastError as exc:
            raise Unauthorized(f"invalid token: {exc.message}") from None
        if not key.capability.covers(capability):
            raise Unauthorized(f"invalid token: wider than key {key.name!r} grants")
        return TokenClaims(key.name, client_id, capability, float(exp))


__all__ = [
    "ALGORITHM",
    "DEFAULT_TTL_S",
    "LEEWAY_S",
    "MAX_TTL_S",
    "ApiKey",
    "IssuedToken",
    "KeyRing",
    "KeySpecError",
    "TokenClaims",
    "check_client_id",
    "issue_token",
]
