"""When each person last wrote to us: buffered in Redis, flushed to ``Person.last_interaction_at``.

Most messages only read (帮助, 班次, 我的, a location). Writing the person row for each of them
made every such message a database writer (on SQLite: a turn in the one write lock), which
was most of the webhook's time under load (bench/README.md, Webhook). Instead a read-only
turn records the time in one Redis hash (HSET, at most once a minute per person, as before)
and a periodic job (``jobs.interactions.flush_interactions``, every minute) writes the hash to
the database in one batched, guarded UPDATE.

Nothing that judges WeChat's 48-hour window sees the lag: ``latest`` gives the newer of the
row's time and the buffered one, and the outbound sender asks it. A flush that dies half-way
loses nothing: the hash is renamed before it is read and deleted only after the commit; the
next flush finishes a renamed hash it finds first (the UPDATE only ever moves a time forward,
so doing it twice is harmless).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import bindparam, update
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from models.tables import Person

KEY = "rg:interactions"  # person id -> epoch milliseconds
FLUSHING = "rg:interactions:flushing"  # the batch a flush is writing (or died writing)

# Take the buffer for writing, unless an earlier flush died with one: that one goes first.
_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
  redis.call('RENAME', KEYS[1], KEYS[2])
end
return redis.call('HGETALL', KEYS[2])
"""


def record(client: redis.Redis, person_id: int, at: datetime) -> None:
    client.hset(KEY, str(person_id), str(_ms(at)))


def latest(client: redis.Redis, person_id: int, stored: datetime | None) -> datetime | None:
    """The newer of the row's time (``stored``) and any buffered one not yet flushed."""
    pipe = client.pipeline(transaction=False)
    pipe.hget(KEY, str(person_id))
    pipe.hget(FLUSHING, str(person_id))
    times = [_from_ms(v) for v in pipe.execute() if v is not None]
    if stored is not None:
        times.append(stored)
    return max(times, default=None)


def flush(client: redis.Redis, sessions: sessionmaker[Session]) -> int:
    """Write the buffered times to the database; how many people were in the batch."""
    raw: list[Any] = client.eval(_CLAIM_LUA, 2, KEY, FLUSHING)  # type: ignore[assignment]
    pairs = dict(zip(raw[::2], raw[1::2], strict=True))
    if pairs:
        rows = [{"pid": int(pid), "at": _from_ms(ms)} for pid, ms in pairs.items()]
        with sessions() as session, session.begin():
            session.connection().execute(_flush_query(), rows)
    client.delete(FLUSHING)
    return len(pairs)


def _flush_query() -> Any:
    t = Person.__table__.c  # type: ignore[attr-defined]
    last = t.last_interaction_at
    return (
        update(Person.__table__)  # type: ignore[arg-type]
        .where(t.id == bindparam("pid"))
        .where(last.is_(None) | (last < bindparam("at")))
        .values(last_interaction_at=bindparam("at"))
    )


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _from_ms(raw: bytes | str) -> datetime:
    return datetime.fromtimestamp(int(raw) / 1000, UTC)
