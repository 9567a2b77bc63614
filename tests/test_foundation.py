"""Issue 2: schema, migrations, aware datetimes, settings errors, health endpoints, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import inspect, text
from sqlalchemy.engine import Engine
from sqlmodel import select

from bot.app import create_app
from models import AuditEntry, Person
from models.migrate import pending_diff
from models.settings import Settings


def test_migrations_match_models(engine: Engine) -> None:
    assert pending_diff(engine) == []
    names = set(inspect(engine).get_table_names())
    assert {"person", "task", "assignment", "delivery", "grid_unit", "aed", "audit_entry"} <= names


def test_unique_indexes_exist(engine: Engine) -> None:
    insp = inspect(engine)
    uniq = {tuple(u["column_names"]) for u in insp.get_unique_constraints("assignment")}
    uniq |= {tuple(i["column_names"]) for i in insp.get_indexes("assignment") if i["unique"]}
    assert ("task_id", "person_id") in uniq
    dl = {tuple(u["column_names"]) for u in insp.get_unique_constraints("delivery")}
    dl |= {tuple(i["column_names"]) for i in insp.get_indexes("delivery") if i["unique"]}
    assert ("dedupe_key",) in dl


def test_aware_datetime_round_trip(sessions) -> None:  # type: ignore[no-untyped-def]
    shanghai = timezone(timedelta(hours=8))
    moment = datetime(2026, 12, 6, 9, 0, 0, 123456, tzinfo=shanghai)
    with sessions() as s:
        s.add(AuditEntry(action="t", entity="x", at=moment))
        s.commit()
    with sessions() as s:
        got = s.exec(select(AuditEntry)).one().at
    assert got.tzinfo is not None and got.utcoffset() == timedelta(0)
    assert got == moment
    assert got.hour == 1  # 09:00 in Shanghai is 01:00 UTC


def test_naive_datetime_refused(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        s.add(Person(name="x", last_interaction_at=datetime(2026, 1, 1)))
        with pytest.raises(Exception, match="naive datetime"):
            s.commit()


async def test_healthz_and_readyz(settings: Settings) -> None:
    async with TestClient(TestServer(create_app(settings))) as client:
        r = await client.get("/healthz")
        assert r.status == 200 and (await r.json())["status"] == "ok"
        r = await client.get("/readyz")
        body = await r.json()
        assert r.status == 200, body
        assert body == {"status": "ok", "database": "ok", "redis": "ok"}
        r = await client.get("/metrics")
        assert r.status == 200 and "redgrid_http_requests" in await r.text()


async def test_readyz_reports_redis_down(settings: Settings) -> None:
    down = settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
    async with TestClient(TestServer(create_app(down))) as client:
        r = await client.get("/readyz")
        assert r.status == 503
        assert (await r.json())["redis"] == "unavailable"


def _redgrid(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "redgrid.cli", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def test_help_lists_commands() -> None:
    out = _redgrid("--help")
    assert out.returncode == 0
    for cmd in ("db", "demo", "web", "worker", "cron", "run"):
        assert f"  {cmd}" in out.stdout


@pytest.mark.parametrize(
    ("var", "value"),
    [("DATABASE_URL", "nonsense"), ("REDIS_URL", "localhost:6379"), ("PORT", "http"), ("TZ", "Mars/Base")],
)
def test_bad_setting_is_one_line_and_exit_2(var: str, value: str) -> None:
    out = _redgrid("web", env={var: value})
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert var in lines[0]
    assert "Traceback" not in out.stderr


def test_secrets_are_not_in_repr() -> None:
    s = Settings(wechat_app_secret="s3cr3t-value", wechat_token="tok-value")
    assert "s3cr3t-value" not in repr(s) and "tok-value" not in repr(s)
    assert datetime.now(UTC).tzinfo is UTC


def test_read_transaction_refuses_writes_on_sqlite(sqlite_database_url: str, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from models.db import is_read_only_refusal, make_engine, read_transaction, session_factory, transaction
    from models.migrate import upgrade
    from models.settings import load_settings

    engine = make_engine(load_settings(database_url=sqlite_database_url, var_dir=tmp_path))
    upgrade(engine)
    factory = session_factory(engine)
    try:
        with pytest.raises(Exception) as err, read_transaction(factory) as s:
            s.add(AuditEntry(action="t", entity="x"))
            s.flush()
        assert is_read_only_refusal(err.value)
        with transaction(factory) as s:  # the same connection is a writer again afterwards
            s.add(AuditEntry(action="ok", entity="x"))
        with read_transaction(factory) as s:
            assert [a.action for a in s.exec(select(AuditEntry))] == ["ok"]
    finally:
        with transaction(factory) as s:
            for a in s.exec(select(AuditEntry)):
                s.delete(a)
        engine.dispose()


def test_read_transaction_refuses_writes_on_both_back_ends(sessions) -> None:  # type: ignore[no-untyped-def]
    """A read-only turn that tried to write is refused by the database itself (SQLite's
    query_only, PostgreSQL's BEGIN READ ONLY), and the connection is a writer again after."""
    from models.db import is_read_only_refusal, read_transaction, transaction

    for _ in range(3):  # pooled connections go back and forth between the two modes
        with pytest.raises(Exception) as err, read_transaction(sessions) as s:
            s.add(AuditEntry(action="t", entity="x"))
            s.flush()
        assert is_read_only_refusal(err.value)
        with transaction(sessions) as s:
            s.add(AuditEntry(action="ok", entity="x"))
    with read_transaction(sessions) as s:
        assert [a.action for a in s.exec(select(AuditEntry))] == ["ok"] * 3


def test_a_connection_dying_mid_transaction_surfaces_as_itself(pg_engine) -> None:  # type: ignore[no-untyped-def]
    """The server drops a connection inside a transaction (a restart): the error that comes
    out of both kinds of transaction is the database's, marked connection_invalidated (what a
    read-only turn retries on, bot/engine.py), and the next transaction works."""
    from sqlalchemy import create_engine as sa_create_engine
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from models.db import read_transaction, session_factory, transaction
    from tests.conftest import PG_URL

    database = make_url(pg_engine.url).database
    sessions = session_factory(pg_engine)
    for tx in (transaction, read_transaction):
        with pytest.raises(DBAPIError) as err, tx(sessions) as s:
            s.execute(text("SELECT 1"))
            admin = sa_create_engine(PG_URL, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                  "WHERE datname = :db AND pid <> pg_backend_pid()"), {"db": database})
            admin.dispose()
            s.execute(text("SELECT 1"))
        assert err.value.connection_invalidated
        with transaction(sessions) as s:
            assert s.execute(text("SELECT 1")).scalar() == 1
