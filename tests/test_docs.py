"""The docs describe what exists: every setting is documented."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from roomcast.settings import Settings

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_in_the_configuration_doc() -> None:
    text = (ROOT / "docs" / "configuration.md").read_text()
    for f in fields(Settings):
        flag = "--" + f.name.replace("_", "-")
        env = "ROOMCAST_" + f.name.upper()
        assert f"| {f.name} | `{flag}` | `{env}` |" in text, f"{f.name} is not documented"
