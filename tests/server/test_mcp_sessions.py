"""MCP sessions (server/mcp_sessions.py): what a session id says and names, and which
signals nodes take from each other."""

from __future__ import annotations

import json

from roomcast.server.mcp_sessions import McpSession, signals_in


def test_a_session_id_carries_its_client_id_and_only_this_server_s_parse() -> None:
    session = McpSession.new("visitor")
    assert McpSession.parse(session.session_id) == session
    assert McpSession.parse("no-dot-here") is None
    assert McpSession.parse("x.!!!") is None


def test_the_digest_names_a_session_without_its_id() -> None:
    session = McpSession.new("visitor")
    assert session.digest == McpSession.parse(session.session_id).digest  # type: ignore[union-attr]
    assert session.session_id not in session.digest and len(session.digest) == 40
    assert McpSession.new("visitor").digest != session.digest


def frame(*signals: dict[str, object]) -> bytes:
    items = [{"action": "signal", "channel": "meta:mcp-ended", **s} for s in signals]
    return json.dumps(items[0] if len(items) == 1 else items).encode()


def test_only_the_server_s_own_signals_count() -> None:
    ours = {"client_id": None, "name": "mcp.session-ended", "data": {"session": "d1"}}
    forged = {"client_id": "mallory", "name": "mcp.session-ended", "data": {"session": "d2"}}
    other = {"client_id": None, "name": "typing", "data": {"session": "d3"}}
    assert list(signals_in(frame(ours), "mcp.session-ended")) == [{"session": "d1"}]
    assert list(signals_in(frame(forged, ours, other), "mcp.session-ended")) == [{"session": "d1"}]
    assert list(signals_in(frame(forged), "mcp.session-ended")) == []
    assert list(signals_in(b"not json", "mcp.session-ended")) == []
    assert list(signals_in(b'[1, "x"]', "mcp.session-ended")) == []
