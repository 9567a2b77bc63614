"""A small Dongyang for dispatcher tests: a city, two towns, villages, grids and helpers.

Positions around 东丰村 (江北街道, near the city government at 29.2785 N, 120.2282 E); one
degree of latitude is ~111 km, so 0.001 deg ~ 111 m.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

from sqlmodel import Session

from dispatcher.geo import cell
from models.tables import (
    Assignment,
    AssignmentStatus,
    Certificate,
    GridUnit,
    Level,
    Person,
    PersonStatus,
    Task,
    TaskKind,
    TaskMode,
    Urgency,
)

LAT, LNG = 29.2785, 120.2282
# 10:00 Shanghai on a Wednesday: outside everyone's quiet hours
NOW = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
ALL_KINDS = [k.value for k in TaskKind]


@dataclass
class World:
    city: int
    jiangbei: int  # town (街道: urban)
    dongfeng: int  # village
    grid3: int  # grid in 东丰村
    grid4: int  # another grid in 东丰村
    hengdian: int  # town (镇)
    hd_village: int
    hd_grid: int


def build_world(s: Session) -> World:
    def unit(code: str, name: str, level: Level, parent: GridUnit | None, lat: float, lng: float) -> GridUnit:
        u = GridUnit(code=code, name=name, level=level, parent_id=parent.id if parent else None,
                     lat=lat, lng=lng, h3=cell(lat, lng))
        s.add(u)
        s.flush()
        u.path = (parent.path if parent else "/") + f"{u.id}/"
        s.add(u)
        s.flush()
        return u

    city = unit("330783", "东阳市", Level.city, None, LAT, LNG)
    jb = unit("330783001", "江北街道", Level.town, city, LAT, LNG)
    df = unit("330783001001", "东丰村", Level.village, jb, LAT, LNG)
    g3 = unit("330783001001003", "东丰村第3网格", Level.grid, df, LAT, LNG)
    g4 = unit("330783001001004", "东丰村第4网格", Level.grid, df, LAT + 0.003, LNG)
    hd = unit("330783013", "横店镇", Level.town, city, 29.15, 120.30)
    hv = unit("330783013001", "横店村", Level.village, hd, 29.15, 120.30)
    hg = unit("330783013001001", "横店村第1网格", Level.grid, hv, 29.15, 120.30)
    s.commit()
    return World(int(city.id), int(jb.id), int(df.id), int(g3.id), int(g4.id), int(hd.id), int(hv.id), int(hg.id))  # type: ignore[arg-type]


def person(
    s: Session,
    name: str,
    *,
    lat: float = LAT,
    lng: float = LNG,
    grid: int | None = None,
    kinds: list[str] | None = None,
    skills: dict[str, date | None] | None = None,
    **kw: Any,
) -> int:
    p = Person(
        name=name,
        openid=f"o-{name}-{lat:.5f}-{lng:.5f}",
        phone=kw.pop("phone", "13812345678"),
        is_volunteer=kw.pop("is_volunteer", True),
        status=kw.pop("status", PersonStatus.active),
        lat=lat,
        lng=lng,
        h3=cell(lat, lng),
        home_grid_id=grid,
        kinds=ALL_KINDS if kinds is None else kinds,
        **kw,
    )
    s.add(p)
    s.flush()
    for skill, exp in (skills or {}).items():
        s.add(Certificate(person_id=int(p.id), skill=skill, expires_on=exp))  # type: ignore[arg-type]
    s.commit()
    return int(p.id)  # type: ignore[arg-type]


def coordinator(s: Session, name: str, scope: int) -> int:
    return person(s, name, is_volunteer=False, is_coordinator=True, coordinator_scope_id=scope)


def task(
    s: Session,
    *,
    grid: int,
    lat: float = LAT,
    lng: float = LNG,
    start: datetime | None = None,
    hours: float = 2.0,
    slots: int = 1,
    mode: TaskMode = TaskMode.dispatch,
    kind: TaskKind = TaskKind.elderly_visit,
    urgency: Urgency = Urgency.routine,
    title: str = "帮独居老人取药",
    **kw: Any,
) -> int:
    start = start or NOW + timedelta(hours=1)
    t = Task(
        kind=kind, mode=mode, title=title, lat=lat, lng=lng, h3=cell(lat, lng), grid_id=grid,
        starts_at=start, ends_at=start + timedelta(hours=hours), slots=slots, urgency=urgency, **kw,
    )
    s.add(t)
    s.commit()
    return int(t.id)  # type: ignore[arg-type]


def assign(s: Session, task_id: int, person_id: int, status: AssignmentStatus, **kw: Any) -> int:
    a = Assignment(task_id=task_id, person_id=person_id, status=status, **kw)
    s.add(a)
    s.commit()
    return int(a.id)  # type: ignore[arg-type]
