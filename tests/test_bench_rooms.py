"""``python -m bench rooms --refine``: after the sweep, the sizes between the largest met
and the smallest missed, halved each time (docs/benchmarks.md "rooms")."""

from __future__ import annotations

import argparse

import pytest
from bench.rooms import add_arguments, refined_size, refinements


def test_a_refined_size_is_halfway_rounded_to_ten_rooms() -> None:
    assert refined_size(250, 500) == 380  # 375, rounded
    assert refined_size(250, 300) == 280
    assert refined_size(0, 250) == 120  # nothing met: below the smallest size
    assert refined_size(250, 270) == 260
    assert refined_size(250, 260) is None  # no more than ten rooms apart
    assert refined_size(250, None) is None  # nothing missed


def test_each_target_refines_its_own_gap_until_its_refinements_are_spent() -> None:
    best = {"roomcast": 250, "socketio": 300}
    # A size missed below the largest met (a noisy run) does not stop the refinement.
    missed = {"roomcast": {300, 500}, "socketio": {250, 350}}
    left = {"roomcast": 2, "socketio": 1}
    assert refinements(["roomcast", "socketio"], best, missed, left) == [
        (280, "roomcast"),
        (320, "socketio"),
    ]
    best["roomcast"] = 280  # met
    missed["socketio"].add(320)
    assert refinements(["roomcast", "socketio"], best, missed, left) == [(290, "roomcast")]
    assert refinements(["roomcast", "socketio"], best, missed, left) == []
    assert left == {"roomcast": 0, "socketio": 0}


@pytest.mark.parametrize("value", ["-1", "two", "1.5"])
def test_refine_takes_only_a_count(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--refine", "3"]).refine == 3
    with pytest.raises(SystemExit):
        parser.parse_args(["--refine", value])
    assert "is not a count of sizes (0 or more)" in capsys.readouterr().err
