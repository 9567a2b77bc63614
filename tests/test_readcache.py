"""Per-process snapshots (models/readcache.py): reused for a moment, dropped by this process's
own writes at once, and by other processes' writes within READ_CACHE_S."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from sqlalchemy import text

from bot.app import create_app
from bot.simulator import Simulator
from models.db import utcnow
from models.readcache import ReadCache, generation
from models.settings import Settings
from models.tables import AuditEntry, Person
from tests.world import World, build_world


def test_snapshots_expire_and_writes_drop_them(sessions) -> None:  # type: ignore[no-untyped-def]
    t = [100.0]
    cache = ReadCache(2.0, clock=lambda: t[0])
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        return len(loads)

    def get() -> int:
        return cache.get("k", load, tables=("person",))

    assert get() == 1
    assert get() == 1  # reused
    t[0] += 2.5
    assert get() == 2  # expired
    # a read-only transaction leaves it
    with sessions() as s, s.begin():
        s.exec(text("SELECT 1"))  # type: ignore[call-overload]
    assert get() == 2
    # a commit that wrote to a table it was read from drops it at once...
    before = generation(["person"])
    with sessions() as s, s.begin():
        s.add(Person(openid="o-cache"))
    assert generation(["person"]) == before + 2  # counted just before and just after the commit
    assert get() == 3
    # ...a write to another table does not
    with sessions() as s, s.begin():
        s.add(AuditEntry(actor_id=None, action="test", entity="test"))
    assert get() == 3
    # nor does a write rolled back
    with pytest.raises(RuntimeError), sessions() as s, s.begin():
        s.add(Person(openid="o-cache-2"))
        s.flush()
        raise RuntimeError
    assert generation(["person"]) == before + 2 and get() == 3
    # a write whose table cannot be told counts against every table
    with sessions() as s, s.begin():
        s.connection().exec_driver_sql(
            "WITH ids AS (SELECT id FROM person WHERE id < 0) UPDATE person SET name = name "
            "WHERE id IN (SELECT id FROM ids)")
    assert get() == 4
    assert ReadCache(0).get("k", load, tables=()) == 5  # 0: off


@pytest.fixture
def world(sessions) -> World:  # type: ignore[no-untyped-def]
    return build_world(sessions, utcnow())


@pytest.fixture
async def server(settings: Settings, world: World) -> AsyncIterator[TestServer]:
    srv = TestServer(create_app(settings.model_copy(update={"read_cache_s": 0.5})), host="127.0.0.1")
    await srv.start_server()
    yield srv
    await srv.close()


def _line(listing: str, title: str) -> str:
    return next(line for line in listing.splitlines() if title in line)


async def test_shift_counts_stay_true(settings, server, world, sessions, engine) -> None:  # type: ignore[no-untyped-def]
    url = str(server.make_url("/wechat"))
    a = Simulator.from_settings(settings, url, "demo-volunteer")
    b = Simulator.from_settings(settings, url, "v-1")
    assert "还差2人" in _line(await b.send(b.text("班次")) or "", "爱心冰柜补货")
    # a sign-up in this process shows in the next list at once
    assert "报名成功" in (await a.send(a.text(f"报名 T{world.shift_near}")) or "")
    assert "还差1人" in _line(await b.send(b.text("班次")) or "", "爱心冰柜补货")
    # a write from elsewhere (raw SQL, as another process would) shows within READ_CACHE_S
    with engine.connect() as conn:
        raw = conn.connection.dbapi_connection
        cur = raw.cursor()
        cur.execute(f"UPDATE task SET accepted_count = 2 WHERE id = {int(world.shift_near)}")
        raw.commit()
    time.sleep(0.6)
    assert "已满" in _line(await b.send(b.text("班次")) or "", "爱心冰柜补货")


async def test_an_emergency_never_uses_the_cached_aed_map(settings, world, sessions, engine) -> None:  # type: ignore[no-untyped-def]
    """A location reply may use this process's recent AED map; an SOS reads the database."""
    srv = TestServer(create_app(settings.model_copy(update={"read_cache_s": 60})), host="127.0.0.1")
    await srv.start_server()
    try:
        v = Simulator.from_settings(settings, str(srv.make_url("/wechat")), "demo-volunteer")
        gov = "东阳市人民政府一楼大厅"
        assert gov in (await v.send(v.location(29.2785, 120.2282, "政府")) or "")
        with engine.connect() as conn:  # marked faulty elsewhere (raw SQL: no event here)
            raw = conn.connection.dbapi_connection
            raw.cursor().execute(f"UPDATE aed SET status = 'faulty' WHERE name = '{gov}'")
            raw.commit()
        assert gov in (await v.send(v.location(29.2785, 120.2282, "政府")) or "")  # cached
        assert "120" in (await v.send(v.text("急救")) or "")
        sos = await v.send(v.location(29.2785, 120.2282, "政府")) or ""
        assert "120" in sos and "AED" in sos and gov not in sos
    finally:
        await srv.close()


def test_a_snapshot_read_across_a_commit_is_not_kept(sessions) -> None:  # type: ignore[no-untyped-def]
    """The counts are taken as the reading transaction begins; a commit that lands before
    the load (which that transaction may not see) leaves the loaded value unkept."""
    from models.readcache import snapshot

    cache = ReadCache(60.0)
    loads: list[int] = []

    def load() -> int:
        loads.append(1)
        return len(loads)

    seen = snapshot()
    with sessions() as s, s.begin():
        s.add(Person(openid="o-between"))
    assert cache.get("k", load, tables=("person",), since=seen) == 1
    assert cache.get("k", load, tables=("person",), since=snapshot()) == 2  # not kept
    assert cache.get("k", load, tables=("person",), since=snapshot()) == 2  # kept now
