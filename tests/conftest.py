"""Shared fixtures: real Redis, real PostgreSQL and SQLite, each test on clean state.

Under ``CI=true`` a missing PostgreSQL or Redis fails the tests that need it; elsewhere they
skip with the reason. Every database test runs on both back ends (``[sqlite]``/``[postgres]``).

Environment:
- ``REDGRID_TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/15``): the database is flushed
  around each test, so give concurrent test runs different db numbers.
- ``REDGRID_TEST_PG_URL`` (default ``postgresql+psycopg://postgres@127.0.0.1:5432/test``):
  a server where a throw-away database per test session is created and dropped.
- ``REDGRID_TEST_BACKENDS`` (default ``sqlite,postgres``): restrict the back ends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, SQLModel, create_engine

from models.db import make_engine, session_factory
from models.migrate import upgrade
from models.settings import Settings, load_settings

CI = os.environ.get("CI", "").lower() == "true"
REDIS_URL = os.environ.get("REDGRID_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
PG_URL = os.environ.get("REDGRID_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
BACKENDS = [b.strip() for b in os.environ.get("REDGRID_TEST_BACKENDS", "sqlite,postgres").split(",") if b]


def require(ok: bool, why: str) -> None:
    """Skip for want of a service, except under CI, where that is a failure."""
    if ok:
        return
    if CI:
        pytest.fail(f"required service unavailable under CI=true: {why}", pytrace=False)
    pytest.skip(why)


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> str:
    try:
        ok = bool(redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping())
    except (redis.ConnectionError, OSError):
        ok = False
    require(ok, f"no Redis at {REDIS_URL}")
    return REDIS_URL


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


# --- databases -----------------------------------------------------------------------------


def _pg_available() -> bool:
    try:
        eng = create_engine(PG_URL, connect_args={"connect_timeout": 3})
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def pg_database_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (created and dropped here)."""
    require(_pg_available(), f"no PostgreSQL at {PG_URL}")
    name = f"redgrid_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def sqlite_database_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('db') / 'redgrid.db'}"


@pytest.fixture(scope="session", params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_database_url"))
    return str(request.getfixturevalue("sqlite_database_url"))


def _engine_for(url: str, var_dir: Path) -> Engine:
    engine = make_engine(load_settings(database_url=url, var_dir=var_dir))
    upgrade(engine)
    return engine


@pytest.fixture(scope="session")
def engine(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    eng = _engine_for(database_url, tmp_path_factory.mktemp("var"))
    yield eng
    eng.dispose()


def wipe(engine: Engine) -> None:
    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("TRUNCATE " + ", ".join(f'"{t}"' for t in tables) + " RESTART IDENTITY CASCADE"))
        else:
            for t in tables:
                conn.execute(text(f'DELETE FROM "{t}"'))
            if _has_sqlite_sequence(conn):
                conn.execute(text("DELETE FROM sqlite_sequence"))


def _has_sqlite_sequence(conn: object) -> bool:
    row = conn.execute(  # type: ignore[attr-defined]
        text("SELECT 1 FROM sqlite_master WHERE name='sqlite_sequence'")
    ).first()
    return row is not None


@pytest.fixture(scope="session")
def pg_engine(pg_database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """PostgreSQL only, for tests that need it whatever the back-end parameter."""
    eng = _engine_for(pg_database_url, tmp_path_factory.mktemp("var"))
    yield eng
    eng.dispose()


@pytest.fixture
def pg_sessions(pg_engine: Engine) -> Iterator[sessionmaker[Session]]:
    wipe(pg_engine)
    yield session_factory(pg_engine)
    wipe(pg_engine)


@pytest.fixture
def sessions(engine: Engine) -> Iterator[sessionmaker[Session]]:
    """A session factory on a clean, migrated database (both back ends)."""
    wipe(engine)
    yield session_factory(engine)
    wipe(engine)


@pytest.fixture
def settings(
    database_url: str, redis_url: str, redis_client: redis.Redis, tmp_path: Path, engine: Engine
) -> Settings:
    """Settings pointing at the test database and a flushed Redis; WeChat at a loopback address."""
    return load_settings(
        database_url=database_url,
        redis_url=redis_url,
        var_dir=tmp_path / "var",
        wechat_token="test-token",
        wechat_app_id="wx1234567890abcdef",
        wechat_app_secret="test-secret",
        wechat_api_base="http://127.0.0.1:9",
    )
