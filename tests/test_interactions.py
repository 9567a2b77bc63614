"""The interaction-time buffer (models/interactions.py): a flush that dies loses nothing."""

from __future__ import annotations

from datetime import timedelta

import pytest

from models import interactions
from models.db import utcnow
from models.tables import Person


def _person(sessions, openid: str) -> int:  # type: ignore[no-untyped-def]
    with sessions() as s, s.begin():
        p = Person(openid=openid, subscribed=True)
        s.add(p)
        s.flush()
        assert p.id is not None
        return p.id


def _last(sessions, pid: int):  # type: ignore[no-untyped-def]
    with sessions() as s:
        return s.get(Person, pid).last_interaction_at


def test_a_flush_that_dies_is_finished_by_the_next(sessions, redis_client) -> None:  # type: ignore[no-untyped-def]
    a, b = _person(sessions, "o-a"), _person(sessions, "o-b")
    t1 = utcnow().replace(microsecond=0)
    interactions.record(redis_client, "o-a", t1)

    def broken():  # type: ignore[no-untyped-def]
        raise RuntimeError("database gone mid-flush")

    with pytest.raises(RuntimeError):
        interactions.flush(redis_client, broken)  # type: ignore[arg-type]
    assert _last(sessions, a) is None
    # the batch it took is still there, and still counts for the 48-hour window
    assert interactions.latest(redis_client, "o-a", None) == t1
    assert not redis_client.exists(interactions.LOCK)  # the dead flush let go of its lock
    t2 = t1 + timedelta(seconds=90)
    interactions.record(redis_client, "o-b", t2)  # arrives while the dead batch waits

    assert interactions.flush(redis_client, sessions) == 1  # the dead batch first
    assert _last(sessions, a) == t1 and _last(sessions, b) is None
    assert interactions.flush(redis_client, sessions) == 1  # then the newer one
    assert _last(sessions, b) == t2
    assert interactions.flush(redis_client, sessions) == 0
    assert not redis_client.exists(interactions.KEY, interactions.FLUSHING)


def test_latest_is_the_newer_of_row_and_buffer(redis_client) -> None:  # type: ignore[no-untyped-def]
    now = utcnow().replace(microsecond=0)
    assert interactions.latest(redis_client, "o7", None) is None
    assert interactions.latest(redis_client, "o7", now) == now
    interactions.record(redis_client, "o7", now - timedelta(hours=1))
    assert interactions.latest(redis_client, "o7", now) == now
    interactions.record(redis_client, "o7", now + timedelta(minutes=2))
    assert interactions.latest(redis_client, "o7", now) == now + timedelta(minutes=2)
    assert interactions.latest(redis_client, None, now) == now


def test_flushes_never_overlap(sessions, redis_client) -> None:  # type: ignore[no-untyped-def]
    pid = _person(sessions, "o-c")
    interactions.record(redis_client, "o-c", utcnow())
    redis_client.set(interactions.LOCK, "another flush", ex=60)
    assert interactions.flush(redis_client, sessions) == 0  # busy: nothing taken
    assert _last(sessions, pid) is None and redis_client.hexists(interactions.KEY, "o-c")
    redis_client.delete(interactions.LOCK)
    assert interactions.flush(redis_client, sessions) == 1
    assert _last(sessions, pid) is not None


def test_a_flush_overtaken_leaves_the_newer_batch(sessions, redis_client) -> None:  # type: ignore[no-untyped-def]
    """A flush that outlived its lock (another flush took over) does not delete the batch
    that is now the other's."""
    pid = _person(sessions, "o-d")
    interactions.record(redis_client, "o-d", utcnow())

    def overtaken():  # type: ignore[no-untyped-def]
        redis_client.set(interactions.LOCK, "another flush's token")  # our lock expired, taken
        return sessions()

    assert interactions.flush(redis_client, overtaken) == 1  # type: ignore[arg-type]
    assert _last(sessions, pid) is not None  # its own write still landed
    assert redis_client.exists(interactions.FLUSHING)  # but the batch is left to its owner
    assert redis_client.get(interactions.LOCK) == b"another flush's token"
