"""A small two-town world for the console tests (no tests here; imported by them).

Town A (吴宁街道) and town B (横店镇) under the city, a village and two grids each, a
coordinator per town and one for the city (passwords set), volunteers in both towns, a shift
in each town tomorrow, completed service last month, and a campaign of town B.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from bot.console.auth import set_password
from dispatcher.geo import cell
from models.tables import (
    Assignment,
    AssignmentStatus,
    Campaign,
    CampaignStatus,
    Certificate,
    GridUnit,
    Level,
    Person,
    PersonStatus,
    Task,
    TaskKind,
    TaskMode,
)

PASSWORD = "correct horse battery"


def cheap_argon2(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Still argon2id, with test-sized cost: the production cost (~0.3 s a hash here) would
    make each test wait seconds for hashing it does not test."""
    from argon2 import PasswordHasher

    import bot.console.auth as auth

    monkeypatch.setattr(auth, "_HASHER", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@dataclass
class ConsoleWorld:
    city: int
    town_a: int
    town_b: int
    grid_a1: int
    grid_a2: int
    grid_b1: int
    coord_city: int
    coord_a: int
    coord_b: int
    vol_a: list[int]
    vol_b: list[int]
    pending_a: int
    task_a: int
    task_b: int
    campaign_b: int
    now: datetime


def _unit(s: Session, code: str, name: str, level: Level, parent: GridUnit | None, lat: float, lng: float) -> GridUnit:
    u = GridUnit(code=code, name=name, level=level, parent_id=parent.id if parent else None, lat=lat, lng=lng,
                 h3=cell(lat, lng))
    s.add(u)
    s.flush()
    u.path = (parent.path if parent else "/") + f"{u.id}/"
    s.add(u)
    s.flush()
    return u


def _person(s: Session, openid: str, name: str, phone: str, grid: GridUnit | None, now: datetime, **kw: object) -> Person:
    p = Person(openid=openid, name=name, phone=phone, home_grid_id=grid.id if grid else None,
               lat=grid.lat if grid else None, lng=grid.lng if grid else None,
               h3=cell(grid.lat, grid.lng) if grid else None, status=PersonStatus.active,
               last_interaction_at=now - timedelta(hours=1), kinds=[k.value for k in TaskKind], **kw)
    s.add(p)
    s.flush()
    return p


def build_console_world(sessions: sessionmaker[Session], now: datetime) -> ConsoleWorld:
    with sessions() as s, s.begin():
        city = _unit(s, "330783", "东阳市", Level.city, None, 29.2785, 120.2282)
        a = _unit(s, "330783-01", "吴宁街道", Level.town, city, 29.2900, 120.2400)
        b = _unit(s, "330783-17", "横店镇", Level.town, city, 29.1550, 120.3050)
        va = _unit(s, "330783-01-001", "南街社区", Level.village, a, 29.2880, 120.2380)
        vb = _unit(s, "330783-17-001", "万盛社区", Level.village, b, 29.1560, 120.3070)
        a1 = _unit(s, "330783-01-001-1", "南街社区第1网格", Level.grid, va, 29.2870, 120.2370)
        a2 = _unit(s, "330783-01-001-2", "南街社区第2网格", Level.grid, va, 29.2890, 120.2390)
        b1 = _unit(s, "330783-17-001-1", "万盛社区第1网格", Level.grid, vb, 29.1565, 120.3075)
        cc = _person(s, "coord-city", "市协调员", "13700000001", None, now, is_coordinator=True,
                     coordinator_scope_id=city.id)
        ca = _person(s, "coord-a", "吴宁协调员", "13700000002", None, now, is_coordinator=True,
                     coordinator_scope_id=a.id)
        cb = _person(s, "coord-b", "横店协调员", "13700000003", None, now, is_coordinator=True,
                     coordinator_scope_id=b.id)
        vol_a = [_person(s, f"va-{i}", f"吴宁志愿者{i}", f"1380000100{i}", a1 if i % 2 else a2, now,
                         is_volunteer=True).id for i in range(1, 4)]
        vol_b = [_person(s, f"vb-{i}", f"横店志愿者{i}", f"1380000200{i}", b1, now, is_volunteer=True).id
                 for i in range(1, 3)]
        pending = _person(s, "va-pending", "吴宁待审", "13800001009", a1, now, is_volunteer=True)
        pending.status = PersonStatus.pending
        s.add(Certificate(person_id=vol_a[0], skill="first_aid", expires_on=(now + timedelta(days=400)).date()))
        tomorrow = now + timedelta(days=1)
        ta = Task(kind=TaskKind.fridge_restock, mode=TaskMode.signup, title="爱心冰柜补货", place="南街社区",
                  lat=a1.lat, lng=a1.lng, h3=a1.h3, grid_id=a1.id, starts_at=tomorrow, ends_at=tomorrow + timedelta(hours=2),
                  slots=3, accepted_count=1, created_by_id=ca.id)
        tb = Task(kind=TaskKind.checkpoint, mode=TaskMode.signup, title="横店卡口值守", place="横店卡口",
                  lat=b1.lat, lng=b1.lng, h3=b1.h3, grid_id=b1.id, starts_at=tomorrow, ends_at=tomorrow + timedelta(hours=3),
                  slots=2, accepted_count=1, created_by_id=cb.id)
        s.add_all([ta, tb])
        s.flush()
        s.add(Assignment(task_id=ta.id, person_id=vol_a[1], status=AssignmentStatus.accepted, responded_at=now))
        s.add(Assignment(task_id=tb.id, person_id=vol_b[0], status=AssignmentStatus.accepted, responded_at=now))
        # last month's completed service in both towns (for the export)
        last = now - timedelta(days=35)
        for grid, pid, title, hours in ((a1, vol_a[0], "吴宁演练", 2.5), (b1, vol_b[1], "横店演练", 4.0)):
            t = Task(kind=TaskKind.drill, mode=TaskMode.signup, title=title, lat=grid.lat, lng=grid.lng, h3=grid.h3,
                     grid_id=grid.id, starts_at=last, ends_at=last + timedelta(hours=3), slots=2, accepted_count=1,
                     status="done", created_by_id=cc.id)
            s.add(t)
            s.flush()
            s.add(Assignment(task_id=t.id, person_id=pid, status=AssignmentStatus.completed, hours=hours,
                             checked_in_at=last, checked_out_at=last + timedelta(hours=hours)))
        camp = Campaign(created_by_id=cb.id, audience={"grid_id": b.id, "roles": ["volunteer"]}, text="横店的广播",
                        status=CampaignStatus.done, targeted=2, sent=2)
        s.add(camp)
        s.flush()
        for p in (cc, ca, cb):
            set_password(s, person_id=int(p.id or 0), password=PASSWORD, now=now)
        return ConsoleWorld(int(city.id or 0), int(a.id or 0), int(b.id or 0), int(a1.id or 0), int(a2.id or 0),
                            int(b1.id or 0), int(cc.id or 0), int(ca.id or 0), int(cb.id or 0),
                            [int(i or 0) for i in vol_a], [int(i or 0) for i in vol_b], int(pending.id or 0),
                            int(ta.id or 0), int(tb.id or 0), int(camp.id or 0), now)


def csrf_of(html: str) -> str:
    m = re.search(r'name="csrf" value="([^"]+)"', html)
    assert m, "no CSRF field on the page"
    return m.group(1)
