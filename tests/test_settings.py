"""One settings object: defaults, ROOMCAST_* variables, then flags."""

from __future__ import annotations

import subprocess
import sys

import pytest

from roomcast.settings import Settings, SettingsError, parse_duration_ms


def test_environment_overrides_defaults_and_flags_override_environment() -> None:
    env = {"ROOMCAST_PORT": "9001", "ROOMCAST_PUBLISH_RATE": "0", "ROOMCAST_HOST": "0.0.0.0"}
    settings = Settings.load(env, port=9002)
    assert settings.port == 9002
    assert settings.publish_rate == 0
    assert settings.host == "0.0.0.0"
    assert settings.anonymous_enabled is False  # not loopback, and not allowed explicitly


def test_anonymous_is_on_by_default_only_on_loopback() -> None:
    assert Settings.load({}).anonymous_enabled is True
    assert Settings.load({"ROOMCAST_HOST": "::1"}).anonymous_enabled is True
    assert Settings.load(
        {"ROOMCAST_HOST": "0.0.0.0", "ROOMCAST_ALLOW_ANONYMOUS": "yes"}
    ).anonymous_enabled


def test_default_store_is_a_sqlite_file_in_the_user_data_directory() -> None:
    url = Settings.load({}).store_url
    assert url.startswith("sqlite:///") and url.endswith("roomcast.db")


@pytest.mark.parametrize(
    ("env", "words"),
    [
        ({"ROOMCAST_PORT": "eighty"}, "ROOMCAST_PORT"),
        ({"ROOMCAST_PRESENCE_GRACE_S": "-1"}, "presence_grace_s"),
        ({"ROOMCAST_RETENTION": "forever"}, "retention"),
        ({"ROOMCAST_ALLOW_ANONYMOUS": "perhaps"}, "ROOMCAST_ALLOW_ANONYMOUS"),
        ({"ROOMCAST_LOG_LEVEL": "loud"}, "log_level"),
    ],
)
def test_bad_values_name_the_setting(env: dict[str, str], words: str) -> None:
    with pytest.raises(SettingsError, match=words):
        Settings.load(env)


def test_durations() -> None:
    assert parse_duration_ms("30d", "x") == 30 * 86_400_000
    assert parse_duration_ms("12h", "x") == 12 * 3_600_000
    assert parse_duration_ms("0", "x") == 0
    assert parse_duration_ms("1.5s", "x") == 1500


def test_local_url_reaches_the_server_over_loopback() -> None:
    assert Settings.load({}, port=9000).local_url == "http://127.0.0.1:9000"
    wildcard = Settings.load({}, host="0.0.0.0", port=9000, allow_anonymous=True)
    assert wildcard.local_url == "http://127.0.0.1:9000"
    assert Settings.load({}, host="::1", port=9).local_url == "http://[::1]:9"


def test_settings_are_parsed_without_the_core() -> None:
    """The settings sit below the core: keys and capabilities are parsed by protocol/."""
    code = (
        "import sys, roomcast.settings\n"
        "print([m for m in sys.modules if m.startswith('roomcast.core')])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == "[]"


def test_allowed_hosts_default_to_loopback_names_on_loopback_and_any_name_elsewhere() -> None:
    local = Settings.load({})
    for host in ("127.0.0.1:8000", "localhost", "LocalHost.:1", "[::1]:9", "::1", None):
        assert local.host_allowed(host), host
    for host in ("evil.example:8000", "127.0.0.1.evil.example", "", "[::2]"):
        assert not local.host_allowed(host), host
    public = Settings.load({}, host="0.0.0.0", allow_anonymous=True)
    assert public.host_allowed("evil.example") and public.hosts == {"*"}
    named = Settings.load({"ROOMCAST_ALLOWED_HOSTS": "Chat.Example.com:443, *.rooms.example"})
    assert named.host_allowed("chat.example.com:8000") and named.host_allowed("a.b.rooms.example")
    assert not named.host_allowed("rooms.example") and not named.host_allowed("xrooms.example")
    assert named.host_allowed("localhost:1")  # loopback names always
    described = dict(local.describe())["allowed_hosts"]
    assert described == "auto (loopback names only)"
