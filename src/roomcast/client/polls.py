"""Polls (docs/protocol.md §5 conventions), built on the channel's live objects.

A poll is a map ``{kind: "poll", question, options, votes, closed, created_by}``:
``options`` references a map option_id → label, ``votes`` a map client_id → option_id (one
vote per person; a new vote replaces the old). Polls are listed in ``root.polls``, a map
poll_id → reference, where poll_id is the poll map's object_id. The web UI and the agents'
tools use the same shapes, so a poll made by any of them shows in all.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from roomcast.protocol.errors import BadRequest, Conflict, NotFound

from .objects import LiveMap, LiveObjects
from .session import Session

POLLS_KEY = "polls"


@dataclass(frozen=True, slots=True)
class Poll:
    """A poll as read from the channel's objects.

    Attributes:
        poll_id: The poll map's object_id (its key in ``root.polls``).
        options: option_id → label, in the order they were given.
        votes: client_id → option_id.
        counts: option_id → number of votes (every option present, 0 included).
    """

    poll_id: str
    question: str
    options: dict[str, str]
    votes: dict[str, str]
    closed: bool
    created_by: str | None

    @property
    def counts(self) -> dict[str, int]:
        tally = Counter(v for v in self.votes.values() if v in self.options)
        return {option_id: tally.get(option_id, 0) for option_id in self.options}


class Polls:
    """``channel.polls``: create polls, vote, close them, read results."""

    def __init__(self, objects: LiveObjects, client: Session) -> None:
        self._objects = objects
        self._client = client

    async def create(self, question: str, options: list[str]) -> Poll:
        """Create a poll with 2 or more options (labels); returns it.

        Raises:
            BadRequest: Fewer than 2 options, or an empty question.
        """
        labels = [label.strip() for label in options if label.strip()]
        if not question.strip() or len(labels) < 2:
            raise BadRequest("a poll needs a question and at least 2 options")
        objects = self._objects
        await objects.sync()
        option_map = await objects.create_map(
            {f"opt-{i + 1}": label for i, label in enumerate(labels)}
        )
        votes = await objects.create_map({})
        poll = await objects.create_map(
            {
                "kind": "poll",
                "question": question.strip(),
                "options": option_map,
                "votes": votes,
                "closed": False,
                "created_by": self._client.client_id,
            }
        )
        index = await self._index()
        await index.set(poll.object_id, poll)
        return self.get(poll.object_id)

    async def vote(self, poll_id: str, option_id: str) -> None:
        """Vote (or move your vote) for ``option_id``.

        Raises:
            NotFound: No such poll or option.
            Conflict: The poll is closed.
        """
        await self._objects.sync()
        poll = self.get(poll_id)
        if option_id not in poll.options:
            raise NotFound(f"poll {poll_id} has no option {option_id}")
        if poll.closed:
            raise Conflict(f"poll {poll_id} is closed")
        votes = self._map(poll_id).get("votes")
        if not isinstance(votes, LiveMap):
            raise NotFound(f"poll {poll_id} has no votes map")
        await votes.set(me(self._client), option_id)

    async def unvote(self, poll_id: str) -> None:
        """Take your vote back."""
        await self._objects.sync()
        votes = self._map(poll_id).get("votes")
        if isinstance(votes, LiveMap) and me(self._client) in votes:
            await votes.remove(me(self._client))

    async def close(self, poll_id: str) -> None:
        """Close the poll: no more votes (the SDK, the UI and the agents' tools respect it)."""
        await self._objects.sync()
        await self._map(poll_id).set("closed", True)

    def get(self, poll_id: str) -> Poll:
        """The poll as the objects stand now (after ``await channel.objects.sync()``)."""
        poll = self._map(poll_id)
        options = poll.get("options")
        votes = poll.get("votes")
        created_by = poll.get("created_by")
        return Poll(
            poll_id=poll_id,
            question=str(poll.get("question", "")),
            options=_strings(options.entries()) if isinstance(options, LiveMap) else {},
            votes=_strings(votes.entries()) if isinstance(votes, LiveMap) else {},
            closed=bool(poll.get("closed", False)),
            created_by=created_by if isinstance(created_by, str) else None,
        )

    def list(self) -> list[Poll]:
        """Every poll of ``root.polls``, oldest first."""
        index = self._objects.get("root")
        assert isinstance(index, LiveMap)
        polls = index.get(POLLS_KEY)
        if not isinstance(polls, LiveMap):
            return []
        found = [self.get(pid) for pid in polls.keys() if self._is_poll(pid)]
        return sorted(found, key=lambda p: _created_serial(p.poll_id))

    def _is_poll(self, poll_id: str) -> bool:
        try:
            self._map(poll_id)
        except NotFound:
            return False
        return True

    def _map(self, poll_id: str) -> LiveMap:
        found = self._objects.get(poll_id)
        if not isinstance(found, LiveMap) or found.get("kind") != "poll":
            raise NotFound(f"no poll {poll_id}")
        return found

    async def _index(self) -> LiveMap:
        return await ensure_index(self._objects, POLLS_KEY)


async def ensure_index(objects: LiveObjects, key: str) -> LiveMap:
    """``root.<key>``: a map of references, made on first use. If two clients make it at
    once, the later reference wins; entries are then added to the one in place."""
    root = await objects.root()
    found = root.get(key)
    if isinstance(found, LiveMap):
        return found
    made = await objects.create_map({})
    await root.set(key, made)
    found = root.get(key)
    return found if isinstance(found, LiveMap) else made


def me(client: Session) -> str:
    """The client's client_id (known once connected)."""
    if client.client_id is None:
        raise BadRequest("the client is not connected yet")
    return client.client_id


def _strings(entries: dict[str, object]) -> dict[str, str]:
    return {key: str(value) for key, value in entries.items()}


def _created_serial(object_id: str) -> int:
    tail = object_id.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


__all__ = ["POLLS_KEY", "Poll", "Polls", "ensure_index", "me"]
