"""Short-lived per-process snapshots of shared, read-mostly data (the week's shift board, the
AED map), so a busy web process does not rebuild them for every message.

A snapshot is reused for at most ``ttl_s`` seconds (``READ_CACHE_S``, default 2; 0 turns
caching off), and is dropped at once when anything in this process commits a write to a
table it was read from: a person who has just signed up sees the new count in their next
list. Writes made by other processes (workers, other web processes, the console) show
within ``ttl_s``.
Only what is the same for everyone is cached: never a person's own row or assignments, and
every write path (sign-up, accept) still decides from the database under its guards.
"""

from __future__ import annotations

import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as OrmSession

T = TypeVar("T")

_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")  # (the first six letters of REPLACE)
_TABLE = re.compile(r'\s*(?:INSERT\s+(?:OR\s+\w+\s+)?INTO|REPLACE\s+INTO|UPDATE|DELETE\s+FROM)\s+"?(\w+)', re.I)
_DML = re.compile(r"\b(?:INSERT|UPDATE|DELETE)\b", re.I)
ANY = "*"  # a write whose table could not be told: counts against every table
# per table: commits that wrote to it, in this process (only ever grow)
_generations: dict[str, int] = defaultdict(int)
_lock = threading.Lock()
_just_committed = threading.local()  # tables the last commit on this thread wrote


@event.listens_for(Engine, "after_cursor_execute")
def _note_write(conn: Any, _cursor: Any, statement: str, _params: Any, _context: Any, _many: bool) -> None:
    head = statement.lstrip()[:6].upper()
    if head in _WRITES:
        m = _TABLE.match(statement)
        conn.info.setdefault("redgrid_wrote", set()).add(m.group(1).lower() if m else ANY)
    elif head.startswith("WITH") and _DML.search(statement):
        conn.info.setdefault("redgrid_wrote", set()).add(ANY)  # a write behind a CTE


@event.listens_for(Engine, "commit")
def _committed(conn: Any) -> None:
    # SQLAlchemy calls this just before the database commits: a reader in between could
    # still load the old rows under the new count. The ORM session's after_commit (this
    # thread, right after) counts the same tables once more, which drops such a snapshot.
    tables = None if conn.invalidated else conn.info.pop("redgrid_wrote", None)
    _just_committed.tables = tables  # every commit overwrites it (an ORM one fires this first)
    if tables:
        _bump(tables)


@event.listens_for(OrmSession, "after_commit")
def _after_commit(_session: Any) -> None:
    tables = getattr(_just_committed, "tables", None)
    if tables:
        _just_committed.tables = None
        _bump(tables)


def _bump(tables: Iterable[str]) -> None:
    with _lock:
        for table in tables:
            _generations[table] += 1


@event.listens_for(Engine, "rollback")
def _rolled_back(conn: Any) -> None:
    if conn.invalidated:
        return  # its connection died (and with it conn.info): touching .info would reconnect
    conn.info.pop("redgrid_wrote", None)


def generation(tables: Iterable[str], counts: Mapping[str, int] | None = None) -> int:
    """How many writing commits to any of ``tables`` this process has made so far (or had
    made when ``counts`` was taken: ``snapshot``)."""
    c = _generations if counts is None else counts
    return c.get(ANY, 0) + sum(c.get(t, 0) for t in tables)


def snapshot() -> dict[str, int]:
    """The write counts now: taken as a transaction begins, a snapshot read in it is stored
    under them, so a commit that landed in between (which that transaction may not see, on
    SQLite its snapshot starts at its first read) drops it."""
    return dict(_generations)


class ReadCache:
    def __init__(self, ttl_s: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl_s = ttl_s
        self.clock = clock
        self._entries: dict[Hashable, tuple[float, int, Any]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, load: Callable[[], T], *, tables: tuple[str, ...],
            since: Mapping[str, int] | None = None) -> T:
        """The snapshot under ``key``, or a fresh one from ``load()`` (kept for ``ttl_s``);
        ``tables``: what it is read from (a write to any of them drops it); ``since``: the
        counts as the transaction ``load`` reads in began (``snapshot``)."""
        if self.ttl_s <= 0:
            return load()
        now = self.clock()
        entry = self._entries.get(key)
        if entry is not None and entry[0] > now and entry[1] == generation(tables):
            self.hits += 1
            return entry[2]  # type: ignore[no-any-return]
        gen = generation(tables, since)
        self.misses += 1
        value = load()
        # two threads may load the same key at once: both values are good, the last one stays
        self._entries[key] = (now + self.ttl_s, gen, value)
        return value

    def clear(self) -> None:
        self._entries.clear()
