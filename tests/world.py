"""A small, hand-made slice of Dongyang for conversation tests (the demo seed is bigger)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta

from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from dispatcher.geo import cell
from models.tables import (
    AED,
    AEDStatus,
    Assignment,
    AssignmentStatus,
    Certificate,
    GridUnit,
    GridWorkerGrid,
    Level,
    Person,
    PersonStatus,
    Task,
    TaskKind,
    TaskMode,
)

GOV = (29.2785, 120.2282)  # 东阳市人民政府, 江北街道
DONGFENG = (29.2862, 120.2330)


@dataclass
class World:
    city: int
    jiangbei: int
    wuning: int
    dongfeng: int
    grid1: int
    grid3: int
    wuning_grid: int
    volunteer: int
    gridworker: int
    coordinator: int
    town_coordinator: int
    shift_near: int
    shift_full: int
    shift_far: int


def _unit(s: Session, code: str, name: str, level: Level, parent: GridUnit | None, lat: float, lng: float) -> GridUnit:
    u = GridUnit(code=code, name=name, level=level, parent_id=parent.id if parent else None,
                 lat=lat, lng=lng, h3=cell(lat, lng))  # fmt: skip
    s.add(u)
    s.flush()
    u.path = (parent.path if parent else "/") + f"{u.id}/"
    s.add(u)
    return u


def _person(s: Session, openid: str, name: str, grid: GridUnit, **kw: object) -> Person:
    p = Person(openid=openid, name=name, home_grid_id=grid.id, lat=grid.lat, lng=grid.lng, h3=grid.h3, **kw)
    s.add(p)
    s.flush()
    return p


def build_world(sessions: sessionmaker[Session], now: datetime) -> World:
    with sessions() as s, s.begin():
        city = _unit(s, "330783", "东阳市", Level.city, None, *GOV)
        jb = _unit(s, "330783-03", "江北街道", Level.town, city, 29.2850, 120.2300)
        wn = _unit(s, "330783-01", "吴宁街道", Level.town, city, 29.2680, 120.2420)
        df = _unit(s, "330783-03-001", "东丰村", Level.village, jb, *DONGFENG)
        g1 = _unit(s, "330783-03-001-1", "东丰村第1网格", Level.grid, df, 29.2870, 120.2320)
        g3 = _unit(s, "330783-03-001-3", "东丰村第3网格", Level.grid, df, 29.2855, 120.2340)
        wv = _unit(s, "330783-01-001", "西街社区", Level.village, wn, 29.2670, 120.2410)
        wg = _unit(s, "330783-01-001-1", "西街社区第1网格", Level.grid, wv, 29.2668, 120.2412)
        recent = now - timedelta(hours=1)
        vol = _person(s, "demo-volunteer", "王丽", g3, phone="13812345678", is_volunteer=True,
                      status=PersonStatus.active, kinds=[k.value for k in TaskKind],
                      last_interaction_at=recent)  # fmt: skip
        s.add(Certificate(person_id=vol.id, skill="first_aid", expires_on=date(2028, 6, 30)))
        gw = _person(s, "demo-gridworker", "陈建国", g3, phone="13922312231", is_grid_worker=True,
                     status=PersonStatus.active, last_interaction_at=recent)  # fmt: skip
        s.add(GridWorkerGrid(person_id=gw.id, grid_id=g3.id))
        s.add(GridWorkerGrid(person_id=gw.id, grid_id=g1.id))
        co = _person(s, "demo-coordinator", "李娜", g1, phone="13700001111", is_coordinator=True,
                     coordinator_scope_id=jb.id, status=PersonStatus.active,
                     last_interaction_at=recent)  # fmt: skip
        city_co = _person(s, "demo-city-coordinator", "张伟", g1, phone="13700002222", is_coordinator=True,
                          coordinator_scope_id=city.id, status=PersonStatus.active)  # fmt: skip
        # a few more volunteers in 江北 for broadcasts (two outside the 48-hour window)
        extra = [
            _person(s, f"v-{i}", f"志愿者{i}", g1 if i % 2 else g3, phone=f"1350000000{i}", is_volunteer=True,
                    status=PersonStatus.active, kinds=[k.value for k in TaskKind],
                    last_interaction_at=recent if i < 3 else now - timedelta(days=5))
            for i in range(5)
        ]
        _person(s, "v-wuning", "吴宁人", wg, phone="13500000099", is_volunteer=True, status=PersonStatus.active,
                kinds=[k.value for k in TaskKind], last_interaction_at=recent)  # fmt: skip

        def shift(title: str, grid: GridUnit, days: int, hours: int, slots: int, **kw: object) -> Task:
            start = (now + timedelta(days=days)).replace(hour=1, minute=0, second=0, microsecond=0)
            t = Task(kind=kw.pop("kind", TaskKind.fridge_restock), mode=TaskMode.signup, title=title,
                     place=kw.pop("place", grid.name), lat=grid.lat, lng=grid.lng, h3=grid.h3,
                     grid_id=grid.id, starts_at=start, ends_at=start + timedelta(hours=hours), slots=slots,
                     **kw)  # fmt: skip
            s.add(t)
            s.flush()
            return t

        near = shift("爱心冰柜补货", g3, 2, 2, 2, place="东丰村")
        full = shift("关爱阿尔兹海默症走访", g1, 3, 2, 1, kind=TaskKind.dementia_outreach, accepted_count=1)
        far = shift("卡口值守", wg, 4, 3, 5, kind=TaskKind.checkpoint, place="西街路口")
        s.add(Assignment(task_id=full.id, person_id=extra[0].id, status=AssignmentStatus.accepted))
        for name, lat, lng, hours, status in [
            ("东阳市人民政府一楼大厅", 29.2787, 120.2284, "24h", AEDStatus.in_service),
            ("江北街道社区卫生服务中心", 29.2840, 120.2290, "08:00-17:00", AEDStatus.in_service),
            ("东阳市人民医院门诊楼", 29.2700, 120.2350, "24h", AEDStatus.in_service),
            ("东丰村博爱家园", 29.2860, 120.2332, "24h", AEDStatus.faulty),
        ]:
            s.add(AED(name=name, lat=lat, lng=lng, h3=cell(lat, lng), hours=hours, status=status))
        return World(city.id, jb.id, wn.id, df.id, g1.id, g3.id, wg.id, vol.id, gw.id, co.id,
                     city_co.id, near.id, full.id, far.id)  # type: ignore[arg-type]  # fmt: skip
