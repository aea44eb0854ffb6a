"""The sans-I/O session: the attach barrier, dedup by serial, and the token bucket."""

from __future__ import annotations

from roomcast.protocol.session import Attachment, Session, TokenBucket


def test_pending_attachment_holds_frames_and_releases_only_those_after_the_snapshot() -> None:
    attachment = Attachment("room:a")
    for serial in (4, 5, 6):
        assert attachment.offer(serial, f"e{serial}".encode()) is None
    assert attachment.offer(None, b"presence") is None
    assert attachment.go_live(5) == [b"e6", b"presence"]
    assert attachment.offer(6, b"e6") is None  # never twice
    assert attachment.offer(7, b"e7") == b"e7"
    assert attachment.offer(None, b"signal") == b"signal"


def test_a_reattach_replaces_the_attachment() -> None:
    session = Session("alice", "c-1")
    first = session.attach("room:a")
    first.go_live(3)
    second = session.attach("room:a")
    assert second is not first and second.state == "pending"
    assert session.detach("room:a") is second
    assert session.detach("room:a") is None


def test_token_bucket_allows_a_burst_then_the_rate() -> None:
    bucket = TokenBucket(rate=10, burst=5)
    assert all(bucket.take(100.0) for _ in range(5))
    assert not bucket.take(100.0)
    assert bucket.take(100.25) and bucket.take(100.25)  # 2.5 tokens back after 0.25 s
    assert not bucket.take(100.25)


def test_rate_zero_means_no_limit() -> None:
    bucket = TokenBucket(rate=0, burst=1)
    assert all(bucket.take(0.0) for _ in range(10_000))
