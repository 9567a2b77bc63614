"""The Dongyang demo seed: size, shape, determinism, idempotency, and the chat personas.

Most tests seed 300 volunteers (every volunteer is made the same way, so that is enough to
check their properties); the counts test seeds the full default of 3,000.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session, SQLModel, select

from dispatcher.geo import cell, haversine_m
from models import (
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
)
from redgrid import dongyang as dy
from redgrid.demo import build_demo, count_demo, seed_demo, summary_table
from tests.conftest import wipe

LAT_MIN, LAT_MAX, LNG_MIN, LNG_MAX = dy.BBOX
PHONE = re.compile(r"1[3-9]\d{9}")
SKILLS = {"first_aid", "aed", "driver", "medical", "psych", "water"}
TOWN_NAMES = [
    "吴宁街道", "白云街道", "江北街道", "城东街道", "南市街道", "六石街道", "巍山镇", "虎鹿镇", "歌山镇",
    "佐村镇", "东阳江镇", "湖溪镇", "马宅镇", "千祥镇", "南马镇", "画水镇", "横店镇", "三单乡",
]
SMALL = 300
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _seed(sessions: sessionmaker[Session], **kw: int) -> dict[str, int]:
    kw.setdefault("volunteers", SMALL)
    return seed_demo(sessions, seed=kw.pop("seed", 1), **kw)


def _rows_per_table(s: Session) -> dict[str, int]:
    return {
        t.name: int(s.scalar(select(func.count()).select_from(t)) or 0)
        for t in SQLModel.metadata.sorted_tables
    }


def _inside(lat: float | None, lng: float | None) -> bool:
    return lat is not None and lng is not None and LAT_MIN <= lat <= LAT_MAX and LNG_MIN <= lng <= LNG_MAX


# --- size and idempotency ------------------------------------------------------------------


def test_full_seed_counts_and_second_run_adds_nothing(sessions: sessionmaker[Session]) -> None:
    first = seed_demo(sessions, seed=1)
    with sessions() as s:
        assert count_demo(s) == first
        tables = _rows_per_table(s)
    assert first["towns"] == 18
    assert first["villages"] >= 150
    assert first["grids"] >= 600
    assert first["volunteers"] >= 3000
    assert first["grid_workers"] >= 150
    assert first["coordinators"] >= 19  # the city and every town
    assert first["aeds"] >= 120
    assert first["shifts"] >= 40
    assert first["certificates"] >= 1000
    assert first["assignments"] > 0

    second = seed_demo(sessions, seed=1)
    assert second == first
    with sessions() as s:
        assert _rows_per_table(s) == tables  # every table, not only what the dict reports


def test_if_empty_seeds_an_empty_database_and_then_skips(sessions: sessionmaker[Session]) -> None:
    counts = _seed(sessions, if_empty=True)
    assert counts["towns"] == 18
    with sessions() as s:
        before = _rows_per_table(s)
    assert _seed(sessions, if_empty=True, seed=2) == {}
    with sessions() as s:
        assert _rows_per_table(s) == before


def test_if_empty_leaves_a_database_with_other_units_alone(sessions: sessionmaker[Session]) -> None:
    with sessions() as s, s.begin():
        s.add(GridUnit(code="X", name="别处", level=Level.city, lat=30.0, lng=120.0, h3=cell(30.0, 120.0)))
    assert _seed(sessions, if_empty=True) == {}
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(Person)) == 0


# --- determinism ---------------------------------------------------------------------------


def _sample(s: Session) -> list[tuple[object, ...]]:
    people = s.exec(
        select(Person.openid, Person.name, Person.phone, Person.lat, Person.lng)
        .where(Person.openid.in_(["demo-v-00001", "demo-v-00150", "demo-v-00300", "demo-g-00001"]))  # type: ignore[union-attr]
        .order_by(Person.openid)
    ).all()
    units = s.exec(
        select(GridUnit.code, GridUnit.name, GridUnit.lat, GridUnit.lng).where(GridUnit.level == Level.village)
        .order_by(GridUnit.code)
    ).all()
    aeds = s.exec(select(AED.name, AED.lat, AED.lng).order_by(AED.name)).all()
    shifts = s.exec(select(Task.title, Task.place, Task.slots, Task.accepted_count).order_by(Task.id)).all()
    return [tuple(r) for r in [*people, *units, *aeds, *shifts]]


def test_same_seed_same_data_in_a_fresh_database(sessions: sessionmaker[Session], engine: Engine) -> None:
    _seed(sessions)
    with sessions() as s:
        first = _sample(s)
    wipe(engine)
    _seed(sessions)
    with sessions() as s:
        again = _sample(s)
    assert len(first) > 300 and first == again


def test_stored_rows_are_what_build_demo_makes() -> None:
    now = datetime(2026, 7, 1, 2, 0, tzinfo=UTC)
    a, b = build_demo(seed=5, volunteers=200, now=now), build_demo(seed=5, volunteers=200, now=now)
    assert a == b
    other = build_demo(seed=6, volunteers=200, now=now)
    assert [p.name for p in a.people] != [p.name for p in other.people]
    assert [u.name for u in a.units] != [u.name for u in other.units]
    # More volunteers add people after the same ones.
    more = build_demo(seed=5, volunteers=250, now=now)
    firsts = {p.openid: (p.name, p.phone, p.lat, p.lng) for p in a.people if p.openid.startswith("demo-v-")}
    assert all(
        (p.name, p.phone, p.lat, p.lng) == firsts[p.openid] for p in more.people if p.openid in firsts
    )
    assert [(u.code, u.name, u.lat, u.lng) for u in a.units] == [(u.code, u.name, u.lat, u.lng) for u in more.units]


@settings(max_examples=8, deadline=None)
@given(seed=st.integers(min_value=0, max_value=10**9))
def test_any_seed_stays_inside_dongyang_with_valid_phones(seed: int) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    d = build_demo(seed=seed, volunteers=60, now=now)
    positions = [(u.lat, u.lng) for u in d.units] + [(p.lat, p.lng) for p in d.people]
    positions += [(a.lat, a.lng) for a in d.aeds] + [(t.lat, t.lng) for t in d.shifts]
    assert all(_inside(lat, lng) for lat, lng in positions)
    phones = [p.phone for p in d.people]
    assert all(PHONE.fullmatch(ph) for ph in phones) and len(set(phones)) == len(phones)
    villages = [u.name for u in d.units if u.level is Level.village]
    assert len(set(villages)) == len(villages)
    assert all(now < t.starts_at < t.ends_at <= now + timedelta(days=16) for t in d.shifts)
    assert len({u.code for u in d.units}) == len(d.units)


# --- shape ---------------------------------------------------------------------------------


def test_every_position_inside_dongyang_and_h3_matches(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    with sessions() as s:
        for model in (GridUnit, Person, AED, Task):
            rows = s.exec(select(model)).all()
            assert rows
            for r in rows:
                assert _inside(r.lat, r.lng), (model.__name__, r)
                assert r.h3 == cell(r.lat, r.lng)


def test_hierarchy_paths_and_codes(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    with sessions() as s:
        units = {u.id: u for u in s.exec(select(GridUnit)).all()}
    city = [u for u in units.values() if u.level is Level.city]
    assert [(u.code, u.name, u.path) for u in city] == [("330783", "东阳市", f"/{city[0].id}/")]
    towns = sorted((u for u in units.values() if u.level is Level.town), key=lambda u: u.code)
    assert [t.name for t in towns] == TOWN_NAMES
    assert all(t.parent_id == city[0].id for t in towns)
    parent_level = {Level.town: Level.city, Level.village: Level.town, Level.grid: Level.village}
    for u in units.values():
        if u.level is Level.city:
            continue
        parent = units[u.parent_id]  # type: ignore[index]
        assert parent.level is parent_level[u.level]
        assert u.path == f"{parent.path}{u.id}/"
        assert u.code.startswith(parent.code + "-")
        if u.level is Level.grid:
            assert u.name.startswith(parent.name) and re.fullmatch(r".+第\d+网格", u.name)
            assert haversine_m(u.lat, u.lng, parent.lat, parent.lng) < 1000
    dongfeng = [u for u in units.values() if u.name == "东丰村"]
    assert len(dongfeng) == 1 and units[dongfeng[0].parent_id].name == "江北街道"  # type: ignore[index]
    # Subtree queries work as the path prefix says.
    with sessions() as s:
        under = s.exec(select(GridUnit.name).where(GridUnit.path.like(dongfeng[0].path + "%"))).all()  # type: ignore[attr-defined]
    assert sorted(under) == sorted(["东丰村", *(f"东丰村第{i}网格" for i in range(1, 5))])


def test_town_centroids_are_where_dongyang_is(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    with sessions() as s:
        towns = {u.name: u for u in s.exec(select(GridUnit).where(GridUnit.level == Level.town)).all()}
        hd_villages = s.exec(
            select(GridUnit).where(GridUnit.path.like(towns["横店镇"].path + "%"))  # type: ignore[attr-defined]
        ).all()
    assert haversine_m(towns["江北街道"].lat, towns["江北街道"].lng, *dy.CITY_GOV) < 2000
    hd = towns["横店镇"]
    assert 14_000 < haversine_m(hd.lat, hd.lng, *dy.CITY_GOV) < 20_000
    assert hd.lat < dy.CITY_GOV[0] and hd.lng > dy.CITY_GOV[1]  # south-east
    assert all(29.09 <= u.lat <= 29.22 and 120.24 <= u.lng <= 120.37 for u in hd_villages)
    assert towns["白云街道"].lng < towns["江北街道"].lng < towns["城东街道"].lng
    assert towns["巍山镇"].lng > 120.4 and towns["三单乡"].lat < 29.15


def test_personas_and_coordinators(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    now = datetime.now(UTC)
    with sessions() as s:
        people = {p.openid: p for p in s.exec(select(Person).where(Person.is_coordinator | Person.openid.in_(  # type: ignore[union-attr, operator]
            [dy.PERSONA_VOLUNTEER, dy.PERSONA_GRID_WORKER]
        ))).all()}
        units = {u.id: u for u in s.exec(select(GridUnit)).all()}
        vol = people[dy.PERSONA_VOLUNTEER]
        certs = {c.skill: c.expires_on for c in s.exec(select(Certificate).where(Certificate.person_id == vol.id))}
        served = s.exec(select(GridUnit.name).join(GridWorkerGrid, GridWorkerGrid.grid_id == GridUnit.id).where(
            GridWorkerGrid.person_id == people[dy.PERSONA_GRID_WORKER].id
        )).all()
        vol_assignments = s.exec(select(Assignment).where(Assignment.person_id == vol.id)).all()
    assert vol.is_volunteer and vol.status is PersonStatus.active and vol.subscribed
    assert units[vol.home_grid_id].name == "东丰村第3网格"  # type: ignore[index]
    assert certs["first_aid"] is not None and certs["first_aid"] > now.date()
    assert vol.kinds == [k.value for k in TaskKind]
    assert vol.last_interaction_at is not None and now - vol.last_interaction_at < timedelta(minutes=10)
    assert vol.quiet_start_min is None and vol_assignments == []  # the simulator starts clean

    gw = people[dy.PERSONA_GRID_WORKER]
    assert gw.is_grid_worker and gw.status is PersonStatus.active
    assert sorted(served) == ["东丰村第1网格", "东丰村第3网格"]

    co = people[dy.PERSONA_COORDINATOR]
    assert co.is_coordinator and units[co.coordinator_scope_id].name == "江北街道"  # type: ignore[index]
    scopes = Counter(units[p.coordinator_scope_id].name for p in people.values() if p.is_coordinator)  # type: ignore[index]
    assert scopes["东阳市"] >= 1
    assert all(scopes[t] >= 1 for t in TOWN_NAMES)


def test_volunteers_are_varied_like_real_ones(sessions: sessionmaker[Session]) -> None:
    _seed(sessions, volunteers=600)
    now = datetime.now(UTC)
    with sessions() as s:
        vols = s.exec(select(Person).where(Person.is_volunteer)).all()
        certs = s.exec(select(Certificate).join(Person).where(Person.is_volunteer)).all()
        gws = s.exec(select(Person).where(Person.is_grid_worker)).all()
        links = s.exec(select(GridWorkerGrid)).all()
        grid_village = dict(s.exec(select(GridUnit.id, GridUnit.parent_id).where(GridUnit.level == Level.grid)).all())
        grids = len(grid_village)
    status = Counter(v.status for v in vols)
    assert status[PersonStatus.active] > 0.75 * len(vols)
    assert status[PersonStatus.pending] > 0 and status[PersonStatus.suspended] + status[PersonStatus.left] > 0
    assert 0.85 < sum(v.subscribed for v in vols) / len(vols) < 1
    ages = [now - v.last_interaction_at for v in vols]  # type: ignore[operator]
    assert any(a < timedelta(hours=48) for a in ages) and any(a > timedelta(hours=48) for a in ages)
    assert max(ages) <= timedelta(days=11)
    assert any(v.quiet_start_min == 22 * 60 and v.quiet_end_min == 7 * 60 for v in vols)
    assert all(set(v.kinds) <= {k.value for k in TaskKind} and v.kinds for v in vols)
    assert all(v.home_grid_id is not None for v in vols)
    assert all(re.fullmatch(r"[\u4e00-\u9fff]{2,3}", v.name) for v in vols)

    assert {c.skill for c in certs} == SKILLS
    first_aid = [c for c in certs if c.skill == "first_aid"]
    assert 0.3 < len(first_aid) / len(vols) < 0.5
    today = now.date()
    assert any(c.expires_on and c.expires_on < today for c in first_aid)  # lapsed
    assert any(c.expires_on and today <= c.expires_on <= today + timedelta(days=30) for c in first_aid)

    # Grid workers: every grid is served, each worker within one village, many also volunteers.
    assert len({link.grid_id for link in links}) == grids
    per_worker: dict[int, set[int]] = {}
    for link in links:
        per_worker.setdefault(link.person_id, set()).add(link.grid_id)
    assert all(1 <= len(g) <= 3 and len({grid_village[i] for i in g}) == 1 for g in per_worker.values())
    assert set(per_worker) == {p.id for p in gws}
    assert sum(p.is_volunteer for p in gws) > 0.3 * len(gws)


def test_phones_valid_and_unique(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    with sessions() as s:
        phones = s.exec(select(Person.phone)).all()
        openids = s.exec(select(Person.openid)).all()
    assert all(p is not None and PHONE.fullmatch(p) for p in phones)
    assert len(set(phones)) == len(phones)
    assert all(o is not None and o.startswith("demo-") for o in openids)


def test_aeds(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    with sessions() as s:
        aeds = s.exec(select(AED)).all()
        grid_ids = set(s.exec(select(GridUnit.id).where(GridUnit.level == Level.grid)).all())
    assert len(aeds) == dy.AED_TOTAL and len({a.name for a in aeds}) == len(aeds)
    assert all(a.hours == "24h" or re.fullmatch(r"\d\d:\d\d-\d\d:\d\d", a.hours) for a in aeds)
    assert {a.hours == "24h" for a in aeds} == {True, False}
    status = Counter(a.status for a in aeds)
    assert 0 < status[AEDStatus.faulty] <= 6 and status[AEDStatus.in_service] == len(aeds) - status[AEDStatus.faulty]
    assert all(a.grid_id in grid_ids and a.address and a.keeper and a.last_inspected_on for a in aeds)
    names = {a.name for a in aeds}
    assert {"东阳市人民政府一楼大厅", "东阳市人民医院门诊楼", "东丰村博爱家园", "横店影视城秦王宫景区"} <= names
    # The nearest three to the city government, as the conversation examples show them.
    nearest = sorted(aeds, key=lambda a: haversine_m(a.lat, a.lng, *dy.CITY_GOV))[:3]
    assert [a.name for a in nearest] == ["东阳市人民政府一楼大厅", "江北街道社区卫生服务中心", "东阳市人民医院门诊楼"]
    assert all(a.status is AEDStatus.in_service for a in nearest)


# --- shifts --------------------------------------------------------------------------------


def test_shifts_cover_every_kind_over_the_next_two_weeks(sessions: sessionmaker[Session]) -> None:
    before = datetime.now(UTC)
    _seed(sessions)
    with sessions() as s:
        tasks = s.exec(select(Task)).all()
        vol = s.exec(select(Person).where(Person.openid == dy.PERSONA_VOLUNTEER)).one()
        grid_ids = set(s.exec(select(GridUnit.id).where(GridUnit.level == Level.grid)).all())
    assert {t.kind for t in tasks} == set(TaskKind)
    assert 1 <= sum(t.kind is TaskKind.emergency for t in tasks) <= 5
    assert all(t.mode is TaskMode.signup and t.status is TaskStatus.open for t in tasks)
    assert all(before < t.starts_at < t.ends_at <= before + timedelta(days=15, hours=12) for t in tasks)
    assert all(t.starts_at.tzinfo is not None and t.grid_id in grid_ids for t in tasks)
    assert all(2 <= t.slots <= 10 and re.search(r"[\u4e00-\u9fff]", t.title) and t.place for t in tasks)
    local_hours = {t.starts_at.astimezone(SHANGHAI).hour for t in tasks}
    assert min(local_hours) >= 7 and max(local_hours) <= 20
    assert all(set(t.required_skills) <= SKILLS for t in tasks)
    assert all(t.required_skills for t in tasks if t.kind is TaskKind.first_aid_cover)
    assert any(not t.required_skills for t in tasks)
    # Something to sign up for near the demo volunteer within the week.
    near = [t for t in tasks if haversine_m(t.lat, t.lng, vol.lat, vol.lng) < 3000  # type: ignore[arg-type]
            and t.starts_at < before + timedelta(days=7)]
    assert len(near) >= 4
    assert any(t.title == "爱心冰柜补货" and t.place == "东丰村博爱家园" for t in near)


def test_weekly_series(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    with sessions() as s:
        tasks = s.exec(select(Task).order_by(Task.starts_at)).all()
    templates = [t for t in tasks if t.recurrence]
    assert len(templates) >= 3
    for tpl in templates:
        assert tpl.series_id is None and re.fullmatch(r"WEEKLY:[A-Z]{2}(,[A-Z]{2})*", tpl.recurrence or "")
        members = [t for t in tasks if t.series_id == tpl.id]
        assert members and all(m.recurrence is None and m.starts_at > tpl.starts_at for m in members)
        local = {(m.starts_at.astimezone(SHANGHAI).time(), m.ends_at - m.starts_at, m.title) for m in [tpl, *members]}
        assert len(local) == 1  # same clock time, length and title every week
    fridge = next(t for t in templates if t.place == "东丰村博爱家园")
    assert fridge.recurrence == "WEEKLY:TU,FR"
    assert {t.starts_at.astimezone(SHANGHAI).weekday() for t in tasks if t.id == fridge.id or t.series_id == fridge.id} == {1, 4}


def test_accepted_counts_match_assignments_and_nobody_is_double_booked(sessions: sessionmaker[Session]) -> None:
    _seed(sessions)
    with sessions() as s:
        tasks = {t.id: t for t in s.exec(select(Task)).all()}
        rows = s.exec(select(Assignment)).all()
        people = {p.id: p for p in s.exec(select(Person)).all()}
        certs = s.exec(select(Certificate)).all()
    accepted = Counter(a.task_id for a in rows if a.status is AssignmentStatus.accepted)
    for tid, t in tasks.items():
        assert t.accepted_count == accepted[tid] <= t.slots
    assert sum(accepted.values()) > 20
    full = [t for t in tasks.values() if t.accepted_count == t.slots]
    waitlist = [a for a in rows if a.status is AssignmentStatus.waitlisted]
    assert len(full) >= 1 and waitlist
    for tid in {a.task_id for a in waitlist}:
        assert tasks[tid].accepted_count == tasks[tid].slots
        assert sorted(a.waitlist_pos for a in waitlist if a.task_id == tid) == list(  # type: ignore[type-var]
            range(1, 1 + sum(a.task_id == tid for a in waitlist))
        )
    assert {a.status for a in rows} == {AssignmentStatus.accepted, AssignmentStatus.waitlisted}
    valid: dict[int, dict[str, object]] = {}
    for c in certs:
        valid.setdefault(c.person_id, {})[c.skill] = c.expires_on
    by_person: dict[int, list[Task]] = {}
    for a in rows:
        p, t = people[a.person_id], tasks[a.task_id]
        assert p.is_volunteer and p.status is PersonStatus.active and t.kind.value in p.kinds
        for skill in t.required_skills:
            exp = valid.get(p.id, {}).get(skill, "missing")  # type: ignore[arg-type]
            assert exp is None or (exp != "missing" and exp >= t.starts_at.date())  # type: ignore[operator]
        assert a.responded_at is not None and a.responded_at <= datetime.now(UTC)
        by_person.setdefault(a.person_id, []).append(t)
    for ts in by_person.values():
        ts.sort(key=lambda t: t.starts_at)
        assert all(a.ends_at <= b.starts_at for a, b in pairwise(ts))


# --- output and CLI ------------------------------------------------------------------------


def test_summary_table_is_aligned() -> None:
    text = summary_table({"towns": 18, "volunteers": 3001, "grid_workers": 452})
    lines = text.splitlines()
    assert len(lines) == 5 and len({len(ln) for ln in lines}) == 1
    assert lines[2].split() == ["towns", "18"] and lines[3].split() == ["volunteers", "3,001"]
    assert "nothing" in summary_table({})


def test_cli_seed_twice_prints_the_same_table(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'demo.db'}"
    outs = []
    for _ in range(2):
        out = subprocess.run(
            [sys.executable, "-m", "redgrid.cli", "demo", "seed", "--seed", "1", "--volunteers", "100"],
            capture_output=True, text=True, env=env, timeout=120,
        )
        assert out.returncode == 0, out.stderr
        outs.append(out.stdout)
    assert outs[0] == outs[1]
    table = dict(ln.split() for ln in outs[0].splitlines()[2:])
    assert table["towns"] == "18" and table["volunteers"] == "101"
