"""Demo data for Dongyang: the real towns, synthetic villages, grids, people, AEDs and shifts.

Two halves:

- ``build_demo`` is pure: from a seed it makes plain rows keyed by natural keys (unit codes,
  openids, AED names), never by database ids. Each part draws from its own
  ``random.Random(f"{seed}:<part>")``, so the same seed gives the same names and positions,
  and ``--volunteers`` changes only the people after the ones it would make anyway.
- ``seed_demo`` writes what is missing in one transaction with bulk INSERT ... RETURNING
  (3,000 volunteers in about a second on SQLite), so ``redgrid run`` can seed on first start.

Idempotency: units are matched by code, people by openid (every demo person's openid starts
with ``demo-``), AEDs by name; shifts have no natural key (their times are relative to now),
so they are written once, together with their assignments, and never again while the city
coordinator ``demo-coord-city`` who created them still has shifts. A second run therefore
adds nothing. An existing demo is kept, not replaced: to change the seed, start from an
empty database.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, insert, select, update
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, col

from dispatcher.geo import cell, haversine_m
from models.db import transaction, utcnow
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
    TaskStatus,
    Urgency,
)
from redgrid import dongyang as dy

LOCAL = ZoneInfo("Asia/Shanghai")  # shift hours are chosen on Dongyang's clock
ALL_KINDS = [k.value for k in TaskKind]
DEMO_PREFIX = "demo-"
HORIZON_DAYS = 14

# --- plain rows (natural keys only) ----------------------------------------------------------


@dataclass
class UnitRow:
    code: str
    name: str
    level: Level
    parent_code: str | None
    lat: float
    lng: float


@dataclass
class PersonRow:
    openid: str
    name: str
    phone: str
    lat: float
    lng: float
    home_grid: str | None  # unit code
    status: PersonStatus = PersonStatus.active
    is_volunteer: bool = False
    is_grid_worker: bool = False
    is_coordinator: bool = False
    scope: str | None = None  # unit code of a coordinator's subtree
    grids: list[str] = field(default_factory=list)  # unit codes a grid worker serves
    kinds: list[str] = field(default_factory=list)
    quiet: tuple[int, int] | None = None
    weekly_cap_hours: float | None = None
    subscribed: bool = True
    last_interaction_at: datetime | None = None
    created_at: datetime | None = None
    certs: list[tuple[str, date | None]] = field(default_factory=list)


@dataclass
class AEDRow:
    name: str
    address: str
    lat: float
    lng: float
    grid: str  # unit code
    hours: str
    status: AEDStatus
    keeper: str
    last_inspected_on: date


@dataclass
class ShiftRow:
    kind: TaskKind
    title: str
    description: str
    place: str
    lat: float
    lng: float
    grid: str  # unit code
    starts_at: datetime
    ends_at: datetime
    slots: int
    skills: list[str]
    urgency: Urgency = Urgency.routine
    recurrence: str | None = None
    series: str | None = None  # rows with the same key form one weekly series
    accepted: list[str] = field(default_factory=list)  # openids
    waitlisted: list[str] = field(default_factory=list)  # openids, in queue order
    contact: str | None = None  # openid
    creator: str = dy.CITY_COORDINATOR


@dataclass
class DemoData:
    units: list[UnitRow]
    people: list[PersonRow]
    aeds: list[AEDRow]
    shifts: list[ShiftRow]


# --- geometry helpers ----------------------------------------------------------------------

_KM_PER_DEG_LAT = 110.574


def _km_per_deg_lng(lat: float) -> float:
    return 111.320 * math.cos(math.radians(lat))


def _scatter(rng: random.Random, lat: float, lng: float, radius_km: float) -> tuple[float, float]:
    """A point uniformly inside a disc of radius_km around (lat, lng)."""
    r = radius_km * math.sqrt(rng.random())
    a = rng.random() * 2 * math.pi
    return (
        round(lat + r * math.sin(a) / _KM_PER_DEG_LAT, 6),
        round(lng + r * math.cos(a) / _km_per_deg_lng(lat), 6),
    )


def _nearest(units: list[UnitRow], lat: float, lng: float) -> UnitRow:
    # Equirectangular is plenty to pick the nearest of a few hundred points 30 km apart.
    k = math.cos(math.radians(lat)) ** 2
    return min(units, key=lambda u: (u.lat - lat) ** 2 + k * (u.lng - lng) ** 2)


def _town_idx(code: str) -> int:
    return int(code.split("-")[1])


def _village_code(grid_code: str) -> str:
    return grid_code.rsplit("-", 1)[0]


# --- building (pure) -----------------------------------------------------------------------


def build_demo(*, seed: int = 1, volunteers: int = 3000, now: datetime | None = None) -> DemoData:
    """Every demo row for this seed, keyed by natural keys; no database involved."""
    now = now or utcnow()
    units = _build_units(random.Random(f"{seed}:units"))
    people = _build_people(random.Random(f"{seed}:people"), units, volunteers, now)
    aeds = _build_aeds(random.Random(f"{seed}:aeds"), units, now)
    shifts = _build_shifts(random.Random(f"{seed}:shifts"), units, people, now)
    return DemoData(units=units, people=people, aeds=aeds, shifts=shifts)


def _place_name(rng: random.Random, used: set[str], community: bool) -> str:
    first, second, suffix = (
        (dy.COMMUNITY_FIRST, dy.COMMUNITY_SECOND, "社区")
        if community
        else (dy.VILLAGE_FIRST, dy.VILLAGE_SECOND, "村")
    )
    while True:
        a, b = rng.choice(first), rng.choice(second)
        name = f"{a}{b}{suffix}"
        # Names are unique city-wide, so "回复所在村社名称" never needs a follow-up question.
        if a != b and name not in used:
            used.add(name)
            return name


def _build_units(rng: random.Random) -> list[UnitRow]:
    units = [UnitRow(dy.CITY_CODE, dy.CITY_NAME, Level.city, None, *dy.CITY_GOV)]
    used = {dy.DONGFENG}
    for town in dy.TOWNS:
        units.append(UnitRow(town.code, town.name, Level.town, dy.CITY_CODE, town.lat, town.lng))
        for v in range(1, town.villages + 1):
            if town.idx == dy.JIANGBEI and v == 1:
                name, (lat, lng), grids = dy.DONGFENG, dy.DONGFENG_POS, dy.DONGFENG_GRIDS
            else:
                community = rng.random() < (0.55 if town.street else 0.06)
                name = _place_name(rng, used, community)
                lat, lng = _scatter(rng, town.lat, town.lng, town.radius_km)
                grids = rng.randint(3, 5)
            vcode = f"{town.code}-{v:03d}"
            units.append(UnitRow(vcode, name, Level.village, town.code, lat, lng))
            for g in range(1, grids + 1):
                glat, glng = _scatter(rng, lat, lng, 0.5)
                units.append(UnitRow(f"{vcode}-{g}", f"{name}第{g}网格", Level.grid, vcode, glat, glng))
    return units


def _person_name(rng: random.Random) -> str:
    surnames, weights = zip(*dy.SURNAMES, strict=True)
    given = "".join(rng.choice(dy.GIVEN_CHARS) for _ in range(1 if rng.random() < 0.3 else 2))
    return rng.choices(surnames, weights)[0] + given


def _phone(rng: random.Random, used: set[str]) -> str:
    while True:
        phone = f"1{rng.choice('35789')}{rng.randrange(10**9):09d}"
        if phone not in used:
            used.add(phone)
            return phone


def _certs(rng: random.Random, today: date) -> list[tuple[str, date | None]]:
    held: list[tuple[str, date | None]] = []
    for skill, share, expires in dy.SKILLS:
        p = share
        if skill == "aed":
            # AED training comes with the first-aid course, so the two go together.
            has_first_aid = any(s == "first_aid" for s, _ in held)
            p = 0.33 if has_first_aid else 0.03
        if rng.random() >= p:
            continue
        expiry: date | None = None
        if expires:
            u = rng.random()
            if u < 0.12:
                expiry = today - timedelta(days=rng.randint(1, 400))  # lapsed
            elif u < 0.22:
                expiry = today + timedelta(days=rng.randint(0, 30))  # renew soon
            else:
                expiry = today + timedelta(days=rng.randint(31, 3 * 365))
        held.append((skill, expiry))
    return held


def _kinds(rng: random.Random) -> list[str]:
    if rng.random() < 0.5:
        return list(ALL_KINDS)
    chosen = set(rng.sample(ALL_KINDS, rng.randint(3, 8)))
    return [k for k in ALL_KINDS if k in chosen]


def _build_people(rng: random.Random, units: list[UnitRow], n: int, now: datetime) -> list[PersonRow]:
    by_code = {u.code: u for u in units}
    grids = [u for u in units if u.level is Level.grid]
    towns = {t.idx: t for t in dy.TOWNS}
    today = now.astimezone(LOCAL).date()
    phones = {"13857912345", "13957923315", "13757906688"}

    def ago(max_days: float) -> datetime:
        return now - timedelta(seconds=rng.randint(0, int(max_days * 86400)))

    dongfeng = f"{dy.CITY_CODE}-{dy.JIANGBEI:02d}-001"
    jiangbei = f"{dy.CITY_CODE}-{dy.JIANGBEI:02d}"
    g3 = by_code[f"{dongfeng}-3"]
    people = [
        PersonRow(
            dy.PERSONA_VOLUNTEER, "王丽", "13857912345", round(g3.lat + 0.0006, 6), round(g3.lng + 0.0004, 6),
            g3.code, is_volunteer=True, kinds=list(ALL_KINDS), last_interaction_at=now,
            created_at=now - timedelta(days=200),
            certs=[("first_aid", today + timedelta(days=2 * 365)), ("driver", today + timedelta(days=4 * 365))],
        ),
        PersonRow(
            dy.PERSONA_GRID_WORKER, "陈建军", "13957923315", by_code[f"{dongfeng}-1"].lat,
            by_code[f"{dongfeng}-1"].lng, f"{dongfeng}-1", is_grid_worker=True,
            grids=[f"{dongfeng}-1", f"{dongfeng}-3"], last_interaction_at=now,
            created_at=now - timedelta(days=400),
        ),
        PersonRow(
            dy.PERSONA_COORDINATOR, "楼晓燕", "13757906688", by_code[jiangbei].lat, by_code[jiangbei].lng,
            None, is_coordinator=True, scope=jiangbei, last_interaction_at=now,
            created_at=now - timedelta(days=600),
        ),
        PersonRow(
            dy.CITY_COORDINATOR, _person_name(rng), _phone(rng, phones), *dy.CITY_GOV, None,
            is_coordinator=True, scope=dy.CITY_CODE, last_interaction_at=ago(2),
            created_at=now - timedelta(days=700),
        ),
    ]
    for town in dy.TOWNS:
        if town.idx == dy.JIANGBEI:
            continue  # the persona coordinates 江北街道
        people.append(PersonRow(
            f"demo-coord-{town.idx:02d}", _person_name(rng), _phone(rng, phones), town.lat, town.lng, None,
            is_coordinator=True, scope=town.code, last_interaction_at=ago(5),
            created_at=now - timedelta(days=rng.randint(200, 700)),
        ))

    # Urban grids are denser: streets get more volunteers per grid.
    weights = [1.6 if towns[_town_idx(g.code)].street else 1.0 for g in grids]
    residents: dict[str, list[PersonRow]] = {}
    statuses = [PersonStatus.active, PersonStatus.pending, PersonStatus.suspended, PersonStatus.left]
    for i in range(1, n + 1):
        home = rng.choices(grids, weights)[0]
        lat, lng = _scatter(rng, home.lat, home.lng, 0.4)
        last = ago(10)
        p = PersonRow(
            f"demo-v-{i:05d}", _person_name(rng), _phone(rng, phones), lat, lng, home.code,
            status=rng.choices(statuses, [85, 10, 3, 2])[0],
            is_volunteer=True,
            kinds=_kinds(rng),
            quiet=rng.choice(dy.QUIET_HOURS) if rng.random() < 0.3 else None,
            weekly_cap_hours=rng.choice([4.0, 6.0, 8.0]) if rng.random() < 0.1 else None,
            subscribed=rng.random() < 0.94,
            last_interaction_at=last,
            created_at=last - timedelta(days=rng.randint(1, 720)),
            certs=_certs(rng, today),
        )
        people.append(p)
        residents.setdefault(_village_code(home.code), []).append(p)

    # Grid workers: every grid is served; a worker takes 1-3 grids of one village, and most are
    # volunteers living in that village (the usual case in Dongyang's 网格).
    k = 0
    for village in (u for u in units if u.level is Level.village):
        codes = [u.code for u in grids if u.code.startswith(village.code + "-")]
        if village.code == dongfeng:
            chunks = [[c for c in codes if c.endswith(("-2", "-4"))]]  # the persona has 1 and 3
        else:
            chunks, i = [], 0
            while i < len(codes):
                size = rng.randint(1, 3)
                chunks.append(codes[i : i + size])
                i += size
        pool = residents.get(village.code, [])
        for chunk in chunks:
            if pool and rng.random() < 0.6:
                p = pool.pop(rng.randrange(len(pool)))
                p.is_grid_worker, p.status, p.subscribed, p.grids = True, PersonStatus.active, True, chunk
            else:
                k += 1
                home = by_code[chunk[0]]
                lat, lng = _scatter(rng, home.lat, home.lng, 0.3)
                last = ago(10)
                people.append(PersonRow(
                    f"demo-g-{k:05d}", _person_name(rng), _phone(rng, phones), lat, lng, home.code,
                    is_grid_worker=True, grids=chunk, last_interaction_at=last,
                    created_at=last - timedelta(days=rng.randint(30, 720)),
                ))
    return people


def _keeper(rng: random.Random) -> str:
    return _person_name(rng)


def _build_aeds(rng: random.Random, units: list[UnitRow], now: datetime) -> list[AEDRow]:
    grids = [u for u in units if u.level is Level.grid]
    today = now.astimezone(LOCAL).date()
    names: set[str] = set()
    rows: list[AEDRow] = []

    def add(name: str, lat: float, lng: float, hours: str, address: str) -> None:
        names.add(name)
        rows.append(AEDRow(
            name, address, lat, lng, _nearest(grids, lat, lng).code, hours, AEDStatus.in_service,
            _keeper(rng), today - timedelta(days=rng.randint(5, 120)),
        ))

    def away_from_gov(draw: Any) -> tuple[float, float] | None:
        # Keep the three landmark AEDs the nearest to the city government (see dongyang.py).
        for _ in range(20):
            lat, lng = draw()
            if haversine_m(lat, lng, *dy.CITY_GOV) > 1200:
                return lat, lng
        return None

    for name, lat, lng, hours, address in dy.AED_LANDMARKS:
        add(name, lat, lng, hours, address)
    for town in dy.TOWNS:
        clinic = f"{town.name}社区卫生服务中心" if town.street else f"{town.short}{town.name[-1]}卫生院"
        school = f"{town.short}小学" if town.street else f"{town.short}{town.name[-1]}中心小学"
        for name, hours in (
            (f"{town.name}便民服务中心", "08:30-17:00"),
            (clinic, "08:00-17:00" if town.street else "24h"),
            (f"东阳市公安局{town.short}派出所", "24h"),
            (school, "07:30-17:30"),
        ):
            pos = away_from_gov(lambda t=town: _scatter(rng, t.lat, t.lng, 1.2))
            if name in names or pos is None:
                continue
            add(name, *pos, hours, f"东阳市{town.name}{rng.choice(dy.ROADS)}{rng.randint(1, 300)}号")
    villages = [u for u in units if u.level is Level.village]
    rng.shuffle(villages)
    for v in villages:
        if len(rows) >= dy.AED_TOTAL:
            break
        name = f"{v.name}文化礼堂"
        pos = away_from_gov(lambda v=v: _scatter(rng, v.lat, v.lng, 0.15))
        if name in names or pos is None:
            continue
        town = dy.TOWNS[_town_idx(v.code) - 1]
        add(name, *pos, "08:00-21:00", f"东阳市{town.name}{v.name}{rng.randint(1, 200)}号")
    # A few out of service, never one of the three the CONVERSATIONS example names.
    for row in rng.sample(rows[3:], 4):
        row.status = AEDStatus.faulty
        row.last_inspected_on = today - timedelta(days=rng.randint(100, 300))
    return rows


def _local(day: date, hm: tuple[int, int]) -> datetime:
    return datetime.combine(day, time(*hm), LOCAL).astimezone(UTC)


def _build_shifts(
    rng: random.Random, units: list[UnitRow], people: list[PersonRow], now: datetime
) -> list[ShiftRow]:
    by_code = {u.code: u for u in units}
    grids = [u for u in units if u.level is Level.grid]
    villages = [u for u in units if u.level is Level.village]
    today = now.astimezone(LOCAL).date()
    days = [today + timedelta(days=d) for d in range(1, HORIZON_DAYS + 1)]  # each weekday twice

    contact_of: dict[str, str] = {}
    for p in people:
        for g in p.grids:
            contact_of[g] = p.openid
    personas = {dy.PERSONA_VOLUNTEER, dy.PERSONA_GRID_WORKER, dy.PERSONA_COORDINATOR}
    pool: dict[int, list[PersonRow]] = {}
    for p in people:
        if (
            p.is_volunteer and p.status is PersonStatus.active and p.subscribed
            and p.openid not in personas and p.home_grid
        ):
            pool.setdefault(_town_idx(p.home_grid), []).append(p)
    busy: dict[str, list[tuple[datetime, datetime]]] = {}

    def fill(s: ShiftRow, n_accept: int, n_wait: int = 0) -> None:
        """Sign up volunteers who could really take this shift (kind, skills, free)."""
        town = _town_idx(s.grid)
        local_pool = list(pool.get(town, []))
        rng.shuffle(local_pool)
        others = [p for t, ps in sorted(pool.items()) if t != town for p in ps]
        rng.shuffle(others)
        chosen: list[str] = []
        for p in local_pool + others:
            if len(chosen) >= n_accept + n_wait:
                break
            valid = {sk for sk, exp in p.certs if exp is None or exp >= s.starts_at.astimezone(LOCAL).date()}
            if s.kind.value not in p.kinds or not set(s.skills) <= valid:
                continue
            if any(a < s.ends_at and s.starts_at < b for a, b in busy.get(p.openid, [])):
                continue
            chosen.append(p.openid)
            busy.setdefault(p.openid, []).append((s.starts_at, s.ends_at))
        s.accepted, s.waitlisted = chosen[:n_accept], chosen[n_accept:]

    def make(
        t: dy.ShiftTemplate, day: date, lat: float, lng: float, place: str, slots: int | None = None,
        series: str | None = None, recurrence: str | None = None,
    ) -> ShiftRow:
        grid = _nearest(grids, lat, lng)
        start = _local(day, t.start)
        return ShiftRow(
            kind=TaskKind(t.kind), title=t.title, description=t.description, place=place,
            lat=lat, lng=lng, grid=grid.code, starts_at=start, ends_at=start + timedelta(minutes=t.minutes),
            slots=slots or rng.randint(*t.slots), skills=list(t.skills),
            urgency=Urgency.urgent if t.kind == "emergency" else Urgency.routine,
            series=series, recurrence=recurrence, contact=contact_of.get(grid.code),
        )

    shifts: list[ShiftRow] = []
    tpl: dict[str, dy.ShiftTemplate] = {}
    for t in dy.SHIFT_TEMPLATES:
        tpl.setdefault(t.title, t)  # the first template of a title is the canonical one
    dongfeng = by_code[f"{dy.CITY_CODE}-{dy.JIANGBEI:02d}-001"]
    home = (dongfeng.lat, dongfeng.lng)

    # Near 东丰村, so the demo volunteer's 「班次」 has something to show (CONVERSATIONS.md).
    for day in days:
        if day.weekday() in (1, 4):  # Tuesday, Friday
            s = make(tpl["爱心冰柜补货"], day, 29.2929, 120.2401, "东丰村博爱家园", 3,
                     "dongfeng-fridge", "WEEKLY:TU,FR")
            fill(s, 1)
            shifts.append(s)
    s = make(tpl["应急救护演练"], days[1], 29.2880, 120.2385, "江北街道文化礼堂", 8)
    fill(s, 3)
    shifts.append(s)
    wuning = [v for v in villages if _town_idx(v.code) == 1]
    near_wuning = _nearest(wuning, *home)
    s = make(tpl["关爱阿尔兹海默症走访"], days[2], near_wuning.lat, near_wuning.lng,
             f"吴宁街道{near_wuning.name}", 3)
    fill(s, 3, 2)  # the one full shift, with a waitlist
    shifts.append(s)
    s = make(tpl["赛事救护保障"], days[4], 29.2730, 120.2420, "东阳江滨公园", 6)
    fill(s, 2)
    shifts.append(s)
    s = make(tpl["独居老人探访"], days[0], dongfeng.lat, dongfeng.lng, "东丰村", 2)
    shifts.append(s)
    s = make(tpl["红十字知识宣传"], days[5], 29.2960, 120.2300, "江北农贸市场", 6)
    fill(s, 1)
    shifts.append(s)
    # Two more weekly series elsewhere.
    chengdong = dy.TOWNS[3]
    for day in days:
        if day.weekday() in (0, 2, 4):
            s = make(tpl["卡口值守"], day, chengdong.lat + 0.012, chengdong.lng + 0.018,
                     "甬金高速东阳出口卡口", 4, "chengdong-checkpoint", "WEEKLY:MO,WE,FR")
            fill(s, rng.randint(0, 3))
            shifts.append(s)
    nanma = _nearest([v for v in villages if _town_idx(v.code) == 15], dy.TOWNS[14].lat, dy.TOWNS[14].lng)
    for day in days:
        if day.weekday() == 5:
            s = make(tpl["独居老人探访"], day, nanma.lat, nanma.lng, f"南马镇{nanma.name}", 3,
                     "nanma-visit", "WEEKLY:SA")
            fill(s, rng.randint(0, 2))
            shifts.append(s)

    # The rest: every template at least once, more of the common ones, and a few emergencies.
    templates = [*dy.SHIFT_TEMPLATES, *rng.choices(dy.SHIFT_TEMPLATES, k=35), *dy.EMERGENCY_TEMPLATES]
    town_weights = [t.villages for t in dy.TOWNS]
    seen: set[tuple[str, str, date]] = set()
    for t in templates:
        while True:
            town = rng.choices(dy.TOWNS, town_weights)[0]
            day = rng.choice(days)
            if t.at_village:
                v = rng.choice([u for u in villages if _town_idx(u.code) == town.idx])
                lat, lng = _scatter(rng, v.lat, v.lng, 0.2)
                place = t.place.format(village=f"{town.name}{v.name}")
            else:
                lat, lng = _scatter(rng, town.lat, town.lng, 0.8)
                place = t.place.format(town=town.name, short=town.short)
            if (t.title, place, day) not in seen:
                seen.add((t.title, place, day))
                break
        s = make(t, day, lat, lng, place)
        fill(s, int(s.slots * rng.choice([0, 0, 0.25, 0.5, 0.75])))
        shifts.append(s)
    # As dispatcher.shifts expects: the first occurrence is the series template and carries the
    # rule; the later ones point at it (series_id) and carry none, so nothing expands them twice.
    firsts: set[str] = set()
    for s in shifts:
        if s.series and s.series in firsts:
            s.recurrence = None
        elif s.series:
            firsts.add(s.series)
    return shifts


# --- writing -------------------------------------------------------------------------------


def seed_demo(
    sessions: sessionmaker[Session], *, seed: int = 1, volunteers: int = 3000, if_empty: bool = False
) -> dict[str, int]:
    """Write the demo for this seed (what is missing of it) and return the counts per entity.

    With ``if_empty`` and a database that already has grid units, do nothing and return {}.
    """
    with transaction(sessions) as session:
        if if_empty and session.scalar(select(col(GridUnit.id)).limit(1)) is not None:
            return {}
        write_demo(session, build_demo(seed=seed, volunteers=volunteers))
        return count_demo(session)


def write_demo(session: Session, data: DemoData) -> None:
    """Insert the rows of ``data`` that the database does not hold yet (by natural key)."""
    now = utcnow()
    units = _write_units(session, data.units)
    people = _write_people(session, data.people, units, now)
    _write_aeds(session, data.aeds, units)
    _write_shifts(session, data.shifts, units, people, now)


def _write_units(session: Session, rows: list[UnitRow]) -> dict[str, tuple[int, str]]:
    """code -> (id, path) of every unit; parents go in before children, level by level."""
    known = {code: (uid, path) for code, uid, path in session.execute(
        select(col(GridUnit.code), col(GridUnit.id), col(GridUnit.path))
    )}
    for level in (Level.city, Level.town, Level.village, Level.grid):
        new = [u for u in rows if u.level is level and u.code not in known]
        if not new:
            continue
        result = session.execute(
            insert(GridUnit).returning(col(GridUnit.id), col(GridUnit.code)),
            [
                {
                    "code": u.code, "name": u.name, "level": u.level,
                    "parent_id": known[u.parent_code][0] if u.parent_code else None,
                    "path": "/", "lat": u.lat, "lng": u.lng, "h3": cell(u.lat, u.lng),
                }
                for u in new
            ],
        )
        ids = {code: uid for uid, code in result}
        # The path holds the row's own id, so it is set once the id is known.
        paths = []
        for u in new:
            uid = ids[u.code]
            path = (known[u.parent_code][1] if u.parent_code else "/") + f"{uid}/"
            known[u.code] = (uid, path)
            paths.append({"id": uid, "path": path})
        session.execute(update(GridUnit), paths)
    return known


def _demo_people(session: Session) -> dict[str, int]:
    stmt = select(col(Person.openid), col(Person.id)).where(col(Person.openid).like(f"{DEMO_PREFIX}%"))
    return {openid: pid for openid, pid in session.execute(stmt)}


def _write_people(
    session: Session, rows: list[PersonRow], units: dict[str, tuple[int, str]], now: datetime
) -> dict[str, int]:
    existing = _demo_people(session)
    new = [p for p in rows if p.openid not in existing]
    if new:
        result = session.execute(
            insert(Person).returning(col(Person.id), col(Person.openid)),
            [
                {
                    "openid": p.openid, "name": p.name, "phone": p.phone,
                    "is_volunteer": p.is_volunteer, "is_grid_worker": p.is_grid_worker,
                    "is_coordinator": p.is_coordinator,
                    "coordinator_scope_id": units[p.scope][0] if p.scope else None,
                    "home_grid_id": units[p.home_grid][0] if p.home_grid else None,
                    "lat": p.lat, "lng": p.lng, "h3": cell(p.lat, p.lng),
                    "share_live_location": False, "kinds": p.kinds,
                    "quiet_start_min": p.quiet[0] if p.quiet else None,
                    "quiet_end_min": p.quiet[1] if p.quiet else None,
                    "weekly_cap_hours": p.weekly_cap_hours, "status": p.status,
                    "subscribed": p.subscribed, "last_interaction_at": p.last_interaction_at,
                    "created_at": p.created_at or now,
                }
                for p in new
            ],
        )
        ids = {openid: pid for pid, openid in result}
        existing.update(ids)
        certs = [
            {"person_id": ids[p.openid], "skill": skill, "expires_on": exp}
            for p in new
            for skill, exp in p.certs
        ]
        if certs:
            session.execute(insert(Certificate), certs)
        links = [{"person_id": ids[p.openid], "grid_id": units[g][0]} for p in new for g in p.grids]
        if links:
            session.execute(insert(GridWorkerGrid), links)
    return existing


def _write_aeds(session: Session, rows: list[AEDRow], units: dict[str, tuple[int, str]]) -> None:
    names = set(session.scalars(select(col(AED.name))))
    new = [a for a in rows if a.name not in names]
    if new:
        session.execute(insert(AED), [
            {
                "name": a.name, "address": a.address, "lat": a.lat, "lng": a.lng,
                "h3": cell(a.lat, a.lng), "grid_id": units[a.grid][0], "hours": a.hours,
                "status": a.status, "keeper": a.keeper, "keeper_person_id": None,
                "last_inspected_on": a.last_inspected_on,
            }
            for a in new
        ])


def _write_shifts(
    session: Session, rows: list[ShiftRow], units: dict[str, tuple[int, str]], people: dict[str, int],
    now: datetime,
) -> None:
    creator = people[dy.CITY_COORDINATOR]
    if session.scalar(select(col(Task.id)).where(col(Task.created_by_id) == creator).limit(1)) is not None:
        return  # written by an earlier run (shifts have no natural key to match one by one)
    result = session.execute(
        insert(Task).returning(col(Task.id), sort_by_parameter_order=True),
        [
            {
                "kind": s.kind, "mode": TaskMode.signup, "title": s.title, "description": s.description,
                "place": s.place, "lat": s.lat, "lng": s.lng, "h3": cell(s.lat, s.lng),
                "grid_id": units[s.grid][0], "starts_at": s.starts_at, "ends_at": s.ends_at,
                "slots": s.slots, "accepted_count": len(s.accepted), "required_skills": s.skills,
                "urgency": s.urgency, "status": TaskStatus.open, "beneficiary": None,
                "recurrence": s.recurrence, "series_id": None, "report_id": None,
                "contact_id": people[s.contact] if s.contact else None, "created_by_id": people[s.creator],
                "wave": 0, "created_at": now,
            }
            for s in rows
        ],
    )
    ids = [tid for (tid,) in result]
    heads: dict[str, int] = {}
    series = []
    for s, tid in zip(rows, ids, strict=True):
        if s.series and s.series in heads:
            series.append({"id": tid, "series_id": heads[s.series]})
        elif s.series:
            heads[s.series] = tid  # the template itself keeps series_id NULL
    if series:
        session.execute(update(Task), series)
    assignments = []
    for s, tid in zip(rows, ids, strict=True):
        at = min(now, s.starts_at - timedelta(days=3))  # people signed up a few days ahead
        for openid in s.accepted:
            assignments.append(_assignment(tid, people[openid], AssignmentStatus.accepted, None, at))
        for pos, openid in enumerate(s.waitlisted, start=1):
            assignments.append(_assignment(tid, people[openid], AssignmentStatus.waitlisted, pos, at))
    if assignments:
        session.execute(insert(Assignment), assignments)


def _assignment(
    task_id: int, person_id: int, status: AssignmentStatus, pos: int | None, at: datetime
) -> dict[str, Any]:
    return {
        "task_id": task_id, "person_id": person_id, "status": status, "role": None, "wave": 0,
        "waitlist_pos": pos, "offered_at": None, "expires_at": None, "responded_at": at,
        "checked_in_at": None, "checked_out_at": None, "hours": 0.0, "created_at": at,
    }


# --- reporting -----------------------------------------------------------------------------


def count_demo(session: Session) -> dict[str, int]:
    """Rows per entity as the database holds them now (not what this run added)."""

    def n(model: Any, *where: Any) -> int:
        return int(session.scalar(select(func.count()).select_from(model).where(*where)) or 0)

    return {
        "towns": n(GridUnit, GridUnit.level == Level.town),
        "villages": n(GridUnit, GridUnit.level == Level.village),
        "grids": n(GridUnit, GridUnit.level == Level.grid),
        "people": n(Person),
        "volunteers": n(Person, Person.is_volunteer),
        "grid_workers": n(Person, Person.is_grid_worker),
        "coordinators": n(Person, Person.is_coordinator),
        "certificates": n(Certificate),
        "aeds": n(AED),
        "shifts": n(Task, Task.mode == TaskMode.signup),
        "assignments": n(Assignment),
    }


def summary_table(counts: dict[str, int]) -> str:
    if not counts:
        return "demo data: nothing seeded (the database already has grid units)"
    width = max(len(k) for k in [*counts, "entity"])
    lines = [f"{'entity':<{width}}  {'count':>7}", f"{'-' * width}  {'-' * 7}"]
    lines += [f"{k:<{width}}  {v:>7,}" for k, v in counts.items()]
    return "\n".join(lines)
