"""Engine and session factory, and the aware-UTC datetime column type.

No module-level engine: callers build one from Settings and own its lifetime.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker
from sqlalchemy.types import DateTime, TypeDecorator
from sqlmodel import Session, create_engine

from models.settings import Settings

READ_ONLY = "redgrid_read_only"  # execution option: see read_transaction


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Stores aware datetimes as UTC and always returns them aware (UTC).

    PostgreSQL keeps ``timestamptz``; SQLite has no time zones, so the value is stored as
    naive UTC and the zone is put back on read. Naive input is refused: it is always a bug.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value!r}: RedGrid stores aware UTC only")
        value = value.astimezone(UTC)
        if dialect.name == "sqlite":
            return value.replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def make_engine(settings: Settings, **kwargs: Any) -> Engine:
    url = make_url(settings.effective_database_url)
    if url.get_backend_name() == "sqlite":
        if url.database and url.database != ":memory:":
            from pathlib import Path

            Path(url.database).parent.mkdir(parents=True, exist_ok=True)
        if url.database and url.database != ":memory:":
            _pool_defaults(kwargs)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _rec: Any) -> None:
            # WAL lets readers run beside the one writer; foreign keys are off by default.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL is still corruption-safe; it skips the fsync on every commit
            # (a power cut may lose the last commits, not the database): a write per
            # transaction went from ~3 ms to well under one (bench/README.md, Webhook).
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            read_only = bool(conn.get_execution_options().get(READ_ONLY))
            if conn.info.get("query_only", False) != read_only:
                # a read-only transaction cannot write by mistake: SQLite refuses it
                conn.exec_driver_sql(f"PRAGMA query_only={'ON' if read_only else 'OFF'}")
                conn.info["query_only"] = read_only
            if read_only:
                # a plain (deferred) BEGIN: readers never wait for the write lock (WAL)
                conn.exec_driver_sql("BEGIN")
            else:
                # BEGIN IMMEDIATE takes the write lock at the start, so a guarded read-then-write
                # (e.g. filling a task's last slot) cannot interleave with another writer.
                conn.exec_driver_sql("BEGIN IMMEDIATE")

        # Let SQLAlchemy's own BEGIN be replaced by ours (pysqlite's implicit BEGIN is off).
        @event.listens_for(engine, "connect", insert=True)
        def _sqlite_autocommit(dbapi_conn: Any, _rec: Any) -> None:
            dbapi_conn.isolation_level = None

        return engine
    # a ping at each checkout: a connection the server dropped (a restart) is replaced
    # before use, so a restart costs no request an error (tests/test_faults.py)
    kwargs.setdefault("pool_pre_ping", True)
    _pool_defaults(kwargs)
    return create_engine(url, **kwargs)


def _pool_defaults(kwargs: dict[str, Any]) -> None:
    # room for the engine's threads (WEB_THREADS, 8), the turn on the event loop and the
    # console's threads (a few); more threads than this need a bigger pool (README)
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    # SQL errors are logged; their parameters (openids, phone numbers) are not
    kwargs.setdefault("hide_parameters", True)


def session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(bind=engine, class_=Session, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose work commits on success and rolls back on any error."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def read_transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A transaction for work that only reads; any write in it fails (is_read_only_refusal)
    rather than happen.

    On SQLite it does not take the write lock (every ``transaction`` does, with BEGIN
    IMMEDIATE), so read-only work runs beside a writer instead of queueing behind it, and
    ``PRAGMA query_only`` refuses writes. On PostgreSQL it begins READ ONLY (the driver's
    ``read_only``, reset when the connection goes back to the pool; no extra round trip).
    """
    with factory() as session, session.begin():
        session.connection(execution_options={READ_ONLY: True, "postgresql_readonly": True})
        yield session


def is_read_only_refusal(exc: BaseException) -> bool:
    """A write attempted inside ``read_transaction`` (SQLite or PostgreSQL)."""
    text = str(exc)
    return "attempt to write a readonly database" in text or "in a read-only transaction" in text
