"""API keys, Capability.covers and tokens (docs/protocol.md §6), without a server."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest

from roomcast.core.authz import ALL, Capability
from roomcast.protocol.errors import BadRequest, Forbidden, Unauthorized
from roomcast.protocol.keys import ApiKey, KeyRing, KeySpecError, issue_token
from roomcast.settings import Settings, SettingsError

SECRET = "s" * 32


def cap(raw: dict[str, list[str]]) -> Capability:
    return Capability.parse(raw)


# --------------------------------------------------------------------------- key parsing


def test_a_key_without_a_capability_grants_everything() -> None:
    key = ApiKey.parse(f"ops:{SECRET}")
    assert key.name == "ops" and key.secret == SECRET and key.capability == ALL
    assert SECRET not in repr(key)


def test_a_key_splits_on_the_first_two_colons_only() -> None:
    key = ApiKey.parse('bot:pass:{"room:*": ["subscribe"]}')
    assert key.secret == "pass"
    assert key.capability.allows("subscribe", "room:a:b")
    assert not key.capability.allows("publish", "room:a")


@pytest.mark.parametrize(
    ("spec", "says"),
    [
        ("nocolon", "NAME:SECRET"),
        ("ops:", "empty secret"),
        ("bad name:x", "key name"),
        ("ops\n:x", "key name"),
        ("ops:x:{not json", "not JSON"),
        ('ops:x:{"room:*": ["fly"]}', "unknown operations"),
        ('ops:x:["subscribe"]', "JSON object"),
    ],
)
def test_bad_keys_are_refused_clearly(spec: str, says: str) -> None:
    with pytest.raises(KeySpecError, match=says) as refused:
        ApiKey.parse(spec)
    assert "x:{" not in str(refused.value)


def test_duplicate_key_names_are_refused() -> None:
    with pytest.raises(KeySpecError, match="twice"):
        KeyRing.parse(["a:1", "a:2"])


def test_a_key_added_at_run_time_authenticates_and_signs() -> None:
    ring = KeyRing.parse(["a:1"])
    ring.add(ApiKey("internal", SECRET, ALL))
    assert ring.authenticate(f"internal:{SECRET}").name == "internal"
    token = issue_token(ring.get("internal"), "bot", None, 60).token  # type: ignore[arg-type]
    assert ring.verify(token).client_id == "bot"
    with pytest.raises(KeySpecError, match="twice"):
        ring.add(ApiKey("a", "2", ALL))


def test_settings_take_keys_from_the_environment_one_per_line_and_mask_them() -> None:
    env = {"ROOMCAST_KEYS": f'ops:{SECRET}\n\nbot:hush:{{"room:*": ["*"]}}\n'}
    settings = Settings.load(env)
    assert settings.key_ring.names == ["ops", "bot"]
    assert not settings.anonymous_enabled  # loopback, but keys exist
    shown = dict(settings.describe())
    assert shown["keys"] == "ops, bot"
    assert SECRET not in str(settings.describe()) and "hush" not in str(settings.describe())
    assert Settings.load(env, allow_anonymous=True).anonymous_enabled


def test_settings_report_a_bad_key_by_name() -> None:
    with pytest.raises(SettingsError, match="keys: key 'a' is configured twice"):
        Settings.load({}, keys=["a:1", "a:2"])
    with pytest.raises(SettingsError, match="not JSON"):
        Settings.load({"ROOMCAST_KEYS": "a:1:{oops"})


# --------------------------------------------------------------------------- covers


@pytest.mark.parametrize(
    ("outer", "inner", "covered"),
    [
        ({"*": ["*"]}, {"*": ["*"]}, True),
        ({"*": ["*"]}, {"room:a": ["publish"]}, True),
        ({"room:*": ["*"]}, {"room:a": ["publish"]}, True),
        ({"room:*": ["*"]}, {"room:a:*": ["publish"]}, True),
        ({"room:*": ["*"]}, {"room:*": ["publish"]}, True),
        ({"room:*": ["*"]}, {"*": ["publish"]}, False),
        ({"room:*": ["*"]}, {"room": ["publish"]}, False),
        ({"room:a": ["*"]}, {"room:*": ["publish"]}, False),
        ({"room:*": ["subscribe"]}, {"room:a": ["publish"]}, False),
        ({"room:*": ["subscribe"]}, {"room:a": ["subscribe", "publish"]}, False),
        ({"room:*": ["cancel-any"]}, {"room:a": ["cancel-own"]}, True),
        ({"room:*": ["cancel-own"]}, {"room:a": ["cancel-any"]}, False),
        ({"room:*": ["publish"]}, {"room:*": ["*"]}, False),
        # each (pattern, operation) needs one key pattern covering it whole
        ({"room:a": ["publish"], "room:b": ["publish"]}, {"room:*": ["publish"]}, False),
        (
            {"a:*": ["subscribe"], "b:*": ["publish"]},
            {"a:x": ["subscribe"], "b:y": ["publish"]},
            True,
        ),
        ({"room:*": ["*"]}, {}, True),
    ],
)
def test_covers(outer: dict[str, list[str]], inner: dict[str, list[str]], covered: bool) -> None:
    assert cap(outer).covers(cap(inner)) is covered


def test_capability_round_trips_through_json() -> None:
    raw = {"room:*": ["publish", "subscribe"], "*": ["*"]}
    assert cap(cap(raw).to_json()) == cap(raw)
    assert cap(raw).to_json()["*"] == ["*"]


# --------------------------------------------------------------------------- tokens


def test_a_token_carries_kid_client_id_exp_and_capability() -> None:
    key = ApiKey.parse(f"ops:{SECRET}")
    before = time.time()
    issued = issue_token(key, "alice", cap({"room:*": ["subscribe"]}), 60)
    assert jwt.get_unverified_header(issued.token)["kid"] == "ops"
    claims = jwt.decode(issued.token, SECRET, algorithms=["HS256"])
    assert claims["client_id"] == "alice"
    assert claims["capability"] == {"room:*": ["subscribe"]}
    assert before + 59 <= claims["exp"] <= before + 61
    assert issued.expires_at == claims["exp"] * 1000
    verified = KeyRing([key]).verify(issued.token)
    assert verified.client_id == "alice" and verified.key_name == "ops"
    assert verified.capability == cap({"room:*": ["subscribe"]})


def test_an_omitted_capability_is_the_keys_own() -> None:
    key = ApiKey.parse('bot:x:{"room:*": ["subscribe", "publish"]}')
    claims = KeyRing([key]).verify(issue_token(key, "bot-1").token)
    assert claims.capability == key.capability


def test_a_token_wider_than_its_key_is_refused() -> None:
    key = ApiKey.parse('bot:x:{"room:*": ["subscribe"]}')
    with pytest.raises(Forbidden):
        issue_token(key, "a", cap({"*": ["subscribe"]}))
    with pytest.raises(Forbidden):
        issue_token(key, "a", cap({"room:a": ["publish"]}))


@pytest.mark.parametrize("ttl", [0, -1, 86401])
def test_ttl_is_bounded(ttl: int) -> None:
    with pytest.raises(BadRequest, match="ttl_s"):
        issue_token(ApiKey.parse("k:x"), "a", None, ttl)


def test_bad_client_id_is_refused() -> None:
    with pytest.raises(BadRequest, match="client_id"):
        issue_token(ApiKey.parse("k:x"), "has space")


def test_unknown_kid_bad_signature_and_garbage_are_40100() -> None:
    key = ApiKey.parse(f"ops:{SECRET}")
    token = issue_token(key, "alice").token
    with pytest.raises(Unauthorized, match="unknown key"):
        KeyRing([ApiKey.parse(f"other:{SECRET}")]).verify(token)  # the key was removed
    with pytest.raises(Unauthorized, match="invalid token"):
        KeyRing([ApiKey.parse("ops:" + "t" * 32)]).verify(token)  # another secret
    with pytest.raises(Unauthorized, match="not a JWT"):
        KeyRing([key]).verify("abc")


def test_a_token_wider_than_its_key_now_is_refused() -> None:
    """The key was narrowed after it signed the token."""
    token = issue_token(ApiKey.parse("ops:x"), "alice").token
    with pytest.raises(Unauthorized, match="wider"):
        KeyRing([ApiKey.parse('ops:x:{"room:*": ["subscribe"]}')]).verify(token)


def test_expiry_has_one_second_of_leeway() -> None:
    key = ApiKey.parse(f"ops:{SECRET}")
    ring = KeyRing([key])
    now = 1_000_000.0
    token = issue_token(key, "alice", None, 10, now=now).token
    assert ring.verify(token, now=now + 10.5).client_id == "alice"
    with pytest.raises(Unauthorized, match="expired"):
        ring.verify(token, now=now + 11.5)
    old = issue_token(key, "alice", None, 1, now=time.time() - 5).token
    with pytest.raises(Unauthorized, match="expired"):
        ring.verify(old)


def test_authenticate_checks_name_and_secret() -> None:
    ring = KeyRing([ApiKey.parse(f"ops:{SECRET}")])
    assert ring.authenticate(f"ops:{SECRET}").name == "ops"
    for wrong in (f"ops:{SECRET}x", "ops:", f"nope:{SECRET}", "ops"):
        with pytest.raises(Unauthorized):
            ring.authenticate(wrong)


def test_an_unsigned_alg_none_token_is_refused() -> None:
    import base64
    import json

    def part(obj: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    claims = {"client_id": "mallory", "exp": time.time() + 600, "capability": {"*": ["*"]}}
    forged = part({"alg": "none", "typ": "JWT", "kid": "ops"}) + "." + part(claims) + "."
    with pytest.raises(Unauthorized, match="invalid token"):
        KeyRing([ApiKey.parse(f"ops:{SECRET}")]).verify(forged)


def test_keys_come_from_a_keys_file_too(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text(f'# operators\nops:{SECRET}\n\nbot:b0t:{{"room:*": ["publish"]}}\n')
    settings = Settings.load({"ROOMCAST_KEYS_FILE": str(path), "ROOMCAST_KEYS": "cli:c"})
    assert [k.name for k in settings.key_ring] == ["cli", "ops", "bot"]
    assert settings.anonymous_enabled is False
    with pytest.raises(SettingsError, match="keys_file"):
        Settings.load({"ROOMCAST_KEYS_FILE": str(tmp_path / "missing")})
