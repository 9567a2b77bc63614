"""When each person last wrote to us: buffered in Redis, flushed to ``Person.last_interaction_at``.

Most messages only read (帮助, 班次, 我的, a location). Writing the person row for each of them
made every such message a database writer (on SQLite: a turn in the one write lock), which
was most of the webhook's time under load (bench/README.md, Webhook). Instead a turn records
the time in one Redis hash, keyed by openid, when it starts (HSET, at most once a minute per
person and process), and a periodic job (``jobs.interactions.flush_interactions``, every
minute) writes the hash to the database in one batched, guarded UPDATE.

Nothing that judges WeChat's 48-hour window sees the lag: ``latest`` gives the newer of the
row's time and the buffered one, and the outbound sender asks it (and asks again after it
deferred a message: jobs/outbound.py). A flush that dies half-way loses nothing: the hash is
renamed before it is read and deleted only after the commit; the next flush finishes a
renamed hash it finds first (the UPDATE only ever moves a time forward, so doing it twice is
harmless). Flushes never overlap: each holds a lock while it works.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import redis
from sqlalchemy import bindparam, update
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from models.tables import Person

KEY = "rg:interactions"  # openid -> epoch milliseconds
FLUSHING = "rg:interactions:flushing"  # the batch a flush is writing (or died writing)
LOCK = "rg:interactions:lock"
LOCK_S = 300  # a flush that takes longer than this is presumed dead

# Take the buffer for writing, unless an earlier flush died with one: that one goes first.
_CLAIM_LUA = """
if redis.call('EXISTS', KEYS[2]) == 0 then
  if redis.call('EXISTS', KEYS[1]) == 0 then return {} end
  redis.call('RENAME', KEYS[1], KEYS[2])
end
return redis.call('HGETALL', KEYS[2])
"""


def record(client: redis.Redis, openid: str, at: datetime) -> None:
    client.hset(KEY, openid, str(_ms(at)))


def latest(client: redis.Redis, openid: str | None, stored: datetime | None) -> datetime | None:
    """The newer of the row's time (``stored``) and any buffered one not yet flushed."""
    if not openid:
        return stored
    pipe = client.pipeline(transaction=False)
    pipe.hget(KEY, openid)
    pipe.hget(FLUSHING, openid)
    times = [_from_ms(v) for v in pipe.execute() if v is not None]
    if stored is not None:
        times.append(stored)
    return max(times, default=None)


def flush(client: redis.Redis, sessions: sessionmaker[Session]) -> int:
    """Write the buffered times to the database; how many people were in the batch (0 when
    another flush is at work)."""
    token = uuid.uuid4().hex
    if not client.set(LOCK, token, nx=True, ex=LOCK_S):
        return 0
    try:
        raw: list[Any] = client.eval(_CLAIM_LUA, 2, KEY, FLUSHING)  # type: ignore[assignment]
        pairs = dict(zip(raw[::2], raw[1::2], strict=True))
        if pairs:
            # in openid order: two flushes' UPDATEs (or a flush's and a turn's) take row locks
            # in one order (PostgreSQL)
            rows = [{"who": _text(o), "at": _from_ms(ms)} for o, ms in sorted(pairs.items())]
            with sessions() as session, session.begin():
                session.connection().execute(_flush_query(), rows)
        # done: the batch goes with the lock, if the lock is still ours (a flush that took
        # longer than LOCK_S may have been overtaken: then the batch there is another's)
        client.eval(_IF_OURS_DELETE, 2, LOCK, FLUSHING, token)
        return len(pairs)
    finally:
        client.eval(_IF_OURS_DELETE, 2, LOCK, LOCK, token)


# KEYS[1] the lock, KEYS[2] what to delete; ARGV[1] our token
_IF_OURS_DELETE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[2]) end
return 0
"""


def _flush_query() -> Any:
    t = Person.__table__.c  # type: ignore[attr-defined]
    last = t.last_interaction_at
    return (
        update(Person.__table__)  # type: ignore[arg-type, attr-defined]
        .where(t.openid == bindparam("who"))
        .where(last.is_(None) | (last < bindparam("at")))
        .values(last_interaction_at=bindparam("at"))
    )


def _ms(at: datetime) -> int:
    return int(at.timestamp() * 1000)


def _text(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _from_ms(raw: bytes | str) -> datetime:
    return datetime.fromtimestamp(int(raw) / 1000, UTC)
