# ruff: noqa: F811  (pytest fixtures imported from tests.fakewechat are redefined as arguments)
"""Issue 8: the AED map and SOS alerts.

- pure rules (hypothesis): town/village radius, roles in alerts and on accept, the AED a
  runner fetches, map links in GCJ-02, repeated calls, inspection due;
- the SOS service flow on both databases with a fixed clock: who is alerted (and who never
  is), roles, widening, the cap, late accepts, stand-down, the caller and coordinators, the
  event log; the monthly AED keeper reminder;
- nearest-AED answers through the real webhook (in service, open now, datum converted);
- end to end: the real webhook on loopback, a real RQ worker (burst) on real Redis, the fake
  WeChat API: 急救, a location, alerts in order with roles, two accepts, stand-down.
"""

from __future__ import annotations

import re
import time as _time
from collections.abc import AsyncIterator
from datetime import UTC, date, datetime, time, timedelta
from urllib.parse import unquote

import pytest
from aiohttp.test_utils import TestServer
from dispatch_world import ALL_KINDS, LAT, LNG, NOW, World, assign, build_world, coordinator, person, task
from hypothesis import given, settings
from hypothesis import strategies as st
from rq import Queue
from rq.registry import ScheduledJobRegistry
from sqlmodel import select

from bot.app import REDIS, SESSIONS, create_app
from bot.engine import Conversation
from bot.simulator import Simulator
from dispatcher import services
from dispatcher import sos as rules
from dispatcher.aed import AEDPoint, inspection_due
from dispatcher.effects import Effects
from dispatcher.geo import amap_link, cell, distance_m, tencent_map_link, wgs84_to_gcj02
from dispatcher.index import VolunteerIndex
from dispatcher.matching import geodesic_m
from jobs import aed as aed_jobs
from jobs import dispatch as jobs_dispatch
from jobs import sos
from jobs.schedule import SCHEDULE
from models.settings import DispatchPolicy
from models.tables import (
    AED,
    AEDStatus,
    Assignment,
    AssignmentStatus,
    Delivery,
    DeliveryStatus,
    Person,
    PersonStatus,
    SOSEvent,
    Task,
    TaskKind,
    TaskMode,
    TaskStatus,
    Urgency,
)
from tests.fakewechat import (  # noqa: F401  (fixtures)
    FakeWeChat,
    fake,
    fake_server,
    jobrt,
    run_due,
    work,
)

AS = AssignmentStatus
POLICY = DispatchPolicy()
M = 1 / 111_195  # degrees of latitude per metre
FIRST_AID = {"first_aid": date(2030, 6, 30)}
GOV_AED = (LAT + 40 * M, LNG)  # the AED in the government's lobby, 40 m north of the patient


def north(m: float) -> tuple[float, float]:
    return LAT + m * M, LNG


# --- pure rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("town", "village", "urban"),
    [
        ("江北街道", "东丰村", True),  # a street: town radius, villages in it too
        ("吴宁街道", "西街社区", True),
        ("横店镇", "横店村", False),  # a 镇's villages: village radius
        ("三单乡", "三单村", False),
        ("横店镇", "万盛社区", True),  # a 镇's built-up residential community: town radius
        (None, None, False),
    ],
)
def test_town_or_village_radius_from_the_ancestors(town: str | None, village: str | None, urban: bool) -> None:
    assert rules.area_is_urban(town, village) is urban


ROLE = st.sampled_from([rules.PATIENT, rules.FETCH_AED])


@given(
    order=st.lists(st.integers(1, 50), unique=True, max_size=8),
    covered=st.sets(ROLE),
    fetchers=st.sets(st.integers(1, 50)),
)
def test_offer_roles(order: list[int], covered: set[str], fetchers: set[int]) -> None:
    can = {p: p in fetchers for p in order}
    roles = rules.offer_roles(order, covered, can)
    assert set(roles) == set(order)
    assert all(roles[p] == rules.PATIENT or can[p] for p in order)  # fetch only with an AED in reach
    if not order:
        return
    patient_open, fetch_open = rules.PATIENT not in covered, rules.FETCH_AED not in covered
    if patient_open:
        assert roles[order[0]] == rules.PATIENT  # the nearest goes straight to the patient
    if patient_open and not fetch_open:
        assert set(roles.values()) == {rules.PATIENT}
    if fetch_open:
        rest = order[1:] if patient_open else order
        assert all((roles[p] == rules.FETCH_AED) == can[p] for p in rest)


@given(st.lists(st.tuples(st.one_of(st.none(), ROLE), st.booleans()), min_size=1, max_size=6))
def test_role_on_accept(accepts: list[tuple[str | None, bool]]) -> None:
    held: list[str] = []
    for offered, can_fetch in accepts:
        missing = [r for r in (rules.PATIENT, rules.FETCH_AED) if r not in held and (r == rules.PATIENT or can_fetch)]
        role = rules.role_on_accept(offered, held, can_fetch)
        assert role == rules.PATIENT or can_fetch
        if offered in missing:
            assert role == offered  # people act on what the alert said
        elif missing:
            assert role == missing[0]  # else the role still missing
        held.append(role)
    assert held.count(rules.FETCH_AED) <= 1
    if len(held) >= 2 and all(c for _, c in accepts[:2]):
        assert set(held[:2]) == {rules.PATIENT, rules.FETCH_AED}  # the first two cover both roles


COORD = st.tuples(st.floats(-0.01, 0.01), st.floats(-0.01, 0.01))


@settings(max_examples=50, deadline=None)
@given(runner=COORD, spots=st.lists(st.tuples(COORD, st.booleans(), st.booleans()), max_size=6))
def test_fetch_route_takes_the_shortest_way_through_an_open_aed(
    runner: tuple[float, float], spots: list[tuple[tuple[float, float], bool, bool]]
) -> None:
    points = [
        AEDPoint(i, f"AED{i}", LAT + dy, LNG + dx, "24h" if open_ else "08:00-09:00", ok)
        for i, ((dy, dx), open_, ok) in enumerate(spots)
    ]
    reach = rules.aeds_in_reach(points, LAT, LNG, time(22), 800.0)
    for r in reach:
        assert r.aed.in_service and r.aed.hours == "24h" and r.to_patient_m <= 800.0
    assert {r.aed.id for r in reach} == {
        p.id for p in points if p.in_service and p.hours == "24h" and geodesic_m(LAT, LNG, p.lat, p.lng) <= 800.0
    }
    rlat, rlng = LAT + runner[0], LNG + runner[1]
    route = rules.fetch_route(rlat, rlng, reach)
    if not reach:
        assert route is None
        return
    assert route is not None
    best = min(geodesic_m(rlat, rlng, r.aed.lat, r.aed.lng) + r.to_patient_m for r in reach)
    assert route.total_m == pytest.approx(best)


def _coords(url: str) -> tuple[float, float]:
    if "map.qq.com" in url:
        m = re.search(r"coord:([\d.]+),([\d.]+)", url)
        assert m
        return float(m.group(1)), float(m.group(2))
    m = re.search(r"position=([\d.]+),([\d.]+)", url)  # Amap: longitude first
    assert m
    return float(m.group(2)), float(m.group(1))


def test_map_links_carry_the_gcj02_of_the_stored_wgs84() -> None:
    lat, lng = GOV_AED
    glat, glng = wgs84_to_gcj02(lat, lng)
    for url in (tencent_map_link(lat, lng, "政府大厅"), amap_link(lat, lng, "政府大厅")):
        got = _coords(url)
        assert got == (round(glat, 6), round(glng, 6))
        assert distance_m(*got, lat, lng) > 100  # really shifted: a WGS-84 pin would be off
    assert "政府大厅" in unquote(tencent_map_link(lat, lng, "政府大厅"))


def test_repeat_and_inspection_rules() -> None:
    assert rules.is_repeat(then=NOW, now=NOW + timedelta(minutes=3), distance_m=50, window_s=600, radius_m=300)
    assert not rules.is_repeat(then=NOW, now=NOW + timedelta(minutes=11), distance_m=50, window_s=600, radius_m=300)
    assert not rules.is_repeat(then=NOW, now=NOW + timedelta(minutes=1), distance_m=900, window_s=600, radius_m=300)
    today = date(2026, 12, 1)
    assert inspection_due(None, today, 30)
    assert inspection_due(date(2026, 10, 31), today, 30)
    assert not inspection_due(date(2026, 11, 15), today, 30)


# --- the SOS service flow (both databases, fixed clock) -----------------------------------------


@pytest.fixture
def world(sessions) -> World:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        for name, (lat, lng), hours, status in [
            ("东阳市人民政府一楼大厅", GOV_AED, "24h", AEDStatus.in_service),
            ("江北社区卫生服务中心", north(-650), "08:00-17:00", AEDStatus.in_service),
            ("坏了的AED", north(10), "24h", AEDStatus.faulty),
        ]:
            s.add(AED(name=name, lat=lat, lng=lng, h3=cell(lat, lng), hours=hours, status=status))
        s.commit()
        return w


def _people(s, w: World, now: datetime) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """First-aiders around the patient (at LAT, LNG), and people who must never be alerted."""
    recent = dict(last_interaction_at=now - timedelta(hours=1), grid=w.grid3)
    ids = {
        "caller": person(s, "呼救人", lat=LAT, lng=LNG + 20 * M, skills=FIRST_AID, **recent),
        "fa1": person(s, "甲", lat=north(100)[0], skills=FIRST_AID, **recent),
        "fa2": person(s, "乙", lat=north(200)[0], skills=FIRST_AID, **recent),
        # asleep by their settings: an emergency ignores quiet hours
        "fa3": person(s, "丙", lat=north(-300)[0], skills=FIRST_AID, quiet_start_min=0, quiet_end_min=1440,
                      **recent),
        "fa4": person(s, "丁", lat=north(-400)[0], skills=FIRST_AID, **recent),
        "fa5": person(s, "戊", lat=north(480)[0], skills=FIRST_AID, **recent),  # fifth nearest: wave 1 asks 4
        "uncertified": person(s, "无证", lat=north(50)[0], **recent),
        "expired": person(s, "过期", lat=north(60)[0], skills={"first_aid": now.date() - timedelta(days=1)},
                          **recent),
        "suspended": person(s, "暂停", lat=north(70)[0], skills=FIRST_AID, status=PersonStatus.suspended, **recent),
        "unsubscribed": person(s, "取关", lat=north(80)[0], skills=FIRST_AID, subscribed=False, **recent),
        "busy": person(s, "忙碌", lat=north(90)[0], skills=FIRST_AID, **recent),
        "no_emergencies": person(s, "不接急救", lat=north(95)[0], skills=FIRST_AID,
                                 kinds=[k for k in ALL_KINDS if k != "emergency"], **recent),
        "far": person(s, "远处", lat=north(2_500)[0], skills=FIRST_AID, **recent),
        "coordinator": person(s, "江北协调", is_volunteer=False, is_coordinator=True,
                              coordinator_scope_id=w.jiangbei, **recent),
        "hd_coordinator": person(s, "横店协调", is_volunteer=False, is_coordinator=True,
                                 coordinator_scope_id=w.hengdian, **recent),
    }
    shift = task(s, grid=w.grid3, start=now - timedelta(hours=1), hours=3, mode=TaskMode.signup,
                 kind=TaskKind.checkpoint, title="卡口值守")  # fmt: skip
    assign(s, shift, ids["busy"], AS.accepted)
    return ids


def _start(sessions, caller: int, now: datetime, lat: float = LAT, lng: float = LNG, **kw):  # type: ignore[no-untyped-def]
    fx = Effects()
    with sessions() as s, s.begin():
        p = s.get(Person, caller)
        started = sos.start(s, fx, caller=p, lat=lat, lng=lng, now=now, policy=POLICY, **kw)
    return started, fx


def _wave(sessions, idx: VolunteerIndex, tid: int, wave: int, now: datetime):  # type: ignore[no-untyped-def]
    """What jobs.dispatch.run_wave does for an SOS, at a chosen moment."""
    fx = Effects()
    with sessions() as s, s.begin():
        services.refresh_index(s, idx, now=now)
        plan = sos.wave_policy(s, task_id=tid, policy=POLICY)
        assert plan is not None
        out = services.run_wave(s, fx, task_id=tid, wave=wave, now=now, index=idx, policy=plan.policy,
                                urban=plan.urban)  # fmt: skip
        sos.after_wave(s, fx, task_id=tid, out=out, now=now, policy=plan.policy)
    return out, fx


def _answer(sessions, person_id: int, tid: int, now: datetime, accept: bool = True):  # type: ignore[no-untyped-def]
    fx = Effects()
    with sessions() as s, s.begin():
        reply = sos.answer(s, fx, person_id=person_id, task_id=tid, accept=accept, now=now, policy=POLICY)
    return reply, fx


def _events(sessions, tid: int) -> list[tuple[str, int | None]]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return [(e.kind, e.person_id) for e in s.exec(select(SOSEvent).where(SOSEvent.task_id == tid)
                                                       .order_by(SOSEvent.at, SOSEvent.id))]  # fmt: skip


def test_sos_alerts_the_nearest_certified_free_people_with_roles(sessions, world) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        ids = _people(s, world, NOW)
    started, fx = _start(sessions, ids["caller"], NOW, label="东阳市人民政府")
    assert started.status == "started" and fx.urgent and fx.waves == [(started.task_id, 1, NOW)]
    tid = int(started.task_id or 0)
    with sessions() as s:
        t = s.get(Task, tid)
        assert (t.kind, t.urgency, t.mode, t.required_skills, t.slots) == (
            TaskKind.emergency, Urgency.emergency, TaskMode.dispatch, ["first_aid"], POLICY.sos_responders)
        assert (t.lat, t.lng, t.grid_id, t.contact_id, t.place) == (LAT, LNG, world.grid3, ids["caller"], "东阳市人民政府")
        assert t.starts_at == NOW and t.ends_at == NOW + timedelta(minutes=POLICY.sos_task_minutes)

    out, fx = _wave(sessions, VolunteerIndex(), tid, 1, NOW)
    assert out.status == "offered" and out.radius_m == 500  # 江北街道: town radius
    assert out.offered == [ids["fa1"], ids["fa2"], ids["fa3"], ids["fa4"]]  # nearest first, 4 of 3-5
    assert fx.urgent and fx.waves == [(tid, 2, NOW + timedelta(seconds=60))]
    with sessions() as s:
        roles = {a.person_id: a.role for a in s.exec(select(Assignment).where(Assignment.task_id == tid))}
        assert roles == {ids["fa1"]: "patient", ids["fa2"]: "fetch_aed", ids["fa3"]: "fetch_aed",
                         ids["fa4"]: "fetch_aed"}  # fmt: skip
        rows = list(s.exec(select(Delivery).where(Delivery.id.in_(fx.deliveries)).order_by(Delivery.id)))  # type: ignore[attr-defined]
        alerts = [d for d in rows if d.purpose == "offer"]
        assert [d.person_id for d in alerts] == out.offered
        # the coordinator of 江北 hears after the alerts are queued; 横店's does not
        assert [d.person_id for d in rows if d.purpose == "sos_coord"] == [ids["coordinator"]]
        assert max(d.id for d in alerts) < min(d.id for d in rows if d.purpose == "sos_coord")
        coord = next(d for d in rows if d.purpose == "sos_coord")
        assert coord.text.startswith(f"【急救呼叫 T{tid}】10:00 东阳市人民政府有人呼救（呼** 138****5678）")
        assert "已呼叫附近4位持证救护员" in coord.text
        first, second = alerts[0].text, alerts[1].text
        assert first.startswith(f"【急救呼叫 T{tid}】东阳市人民政府附近有人需要急救，距您约100米。")
        assert "请直接赶往患者身边" in first and "取AED" not in first
        assert "请先到「东阳市人民政府一楼大厅」取AED（距您约160米），再赶往患者身边。" in second
        assert "坏了的AED" not in second  # a faulty AED is never sent for
        assert f"回复「接受 {tid}」" in first and "1分钟内" in first
        aed_link = re.findall(r'href="([^"]+)"', second)[0]
        assert _coords(aed_link) == tuple(round(c, 6) for c in wgs84_to_gcj02(*GOV_AED))
        patient_link = re.findall(r'href="([^"]+)"', first)[0]
        assert _coords(patient_link) == tuple(round(c, 6) for c in wgs84_to_gcj02(LAT, LNG))
        asked = {a.person_id for a in s.exec(select(Assignment).where(Assignment.task_id == tid))}
        for who in ("caller", "uncertified", "expired", "suspended", "unsubscribed", "busy", "no_emergencies",
                    "far", "fa5"):
            assert ids[who] not in asked, who
    assert _events(sessions, tid) == [
        ("called", ids["caller"]), ("wave", None),
        *[("alerted", ids[k]) for k in ("fa1", "fa2", "fa3", "fa4")],
        ("coordinator_told", ids["coordinator"]),
    ]


def test_accepts_take_roles_then_everyone_else_is_stood_down(sessions, world) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        ids = _people(s, world, NOW)
    tid = int(_start(sessions, ids["caller"], NOW)[0].task_id or 0)
    _wave(sessions, VolunteerIndex(), tid, 1, NOW)
    with sessions() as s, s.begin():  # fa3's alert went out; fa4's is still waiting to be sent
        d = s.exec(select(Delivery).where(Delivery.dedupe_key == f"offer:{tid}:{ids['fa3']}")).one()
        d.status, d.sent_at = DeliveryStatus.sent, NOW
        s.add(d)

    # the runner asked to fetch the AED answers first: keeps that role
    t1 = NOW + timedelta(seconds=20)
    reply, fx = _answer(sessions, ids["fa2"], tid, t1)
    assert fx.urgent and reply.startswith("谢谢您！请先到「东阳市人民政府一楼大厅」取AED")
    assert "患者位置" in reply and "高德地图" in reply
    with sessions() as s:
        told = s.exec(select(Delivery).where(Delivery.purpose == "sos_caller")).one()
        assert told.person_id == ids["caller"]
        assert told.text == "已有1位持证救护员正在赶来，约200米。这位救护员先去取AED（东阳市人民政府一楼大厅）。请继续胸外按压，等待120。"

    # the patient-role one answers second: the task is full, the rest are stood down
    t2 = NOW + timedelta(seconds=30)
    reply, fx = _answer(sessions, ids["fa1"], tid, t2)
    assert reply.startswith("谢谢您！请立即赶往患者身边")
    with sessions() as s:
        t = s.get(Task, tid)
        assert t.status == TaskStatus.filled and t.accepted_count == 2
        states = {a.person_id: (a.status, a.role) for a in s.exec(select(Assignment).where(Assignment.task_id == tid))}
        assert states == {
            ids["fa1"]: (AS.accepted, "patient"), ids["fa2"]: (AS.accepted, "fetch_aed"),
            ids["fa3"]: (AS.withdrawn, "fetch_aed"), ids["fa4"]: (AS.withdrawn, "fetch_aed"),
        }  # fmt: skip
        down = list(s.exec(select(Delivery).where(Delivery.purpose == "sos_standdown")))
        assert [(d.person_id, d.text) for d in down] == [(ids["fa3"], f"【急救呼叫 T{tid}】已有志愿者赶往现场，感谢您！")]
        unsent = s.exec(select(Delivery).where(Delivery.dedupe_key == f"offer:{tid}:{ids['fa4']}")).one()
        assert unsent.status == DeliveryStatus.cancelled  # never sent, so never taken back either
        callers = [d.text for d in s.exec(select(Delivery).where(Delivery.purpose == "sos_caller").order_by(Delivery.id))]
        assert callers[1].startswith("已有2位持证救护员正在赶来，约100米。")
        filled = s.exec(select(Delivery).where(Delivery.purpose == "sos_filled")).one()
        assert filled.person_id == ids["coordinator"]
        assert filled.text == f"【急救呼叫 T{tid}】已有2位救护员赶往现场：乙**（取AED）、甲**（直奔患者）。"

    # a late yes is thanked; the next wave finds the task full
    reply, _ = _answer(sessions, ids["fa3"], tid, t2 + timedelta(seconds=5))
    assert reply == "已有志愿者赶往现场，感谢您！"
    out, fx = _wave(sessions, VolunteerIndex(), tid, 2, NOW + timedelta(seconds=60))
    assert out.status == "stopped" and not fx.deliveries

    kinds = [k for k, _ in _events(sessions, tid)]
    assert kinds == ["called", "wave", "alerted", "alerted", "alerted", "alerted", "coordinator_told",
                     "accepted", "caller_told", "accepted", "caller_told", "filled", "stood_down", "stood_down",
                     "coordinator_told"]  # fmt: skip
    with sessions() as s:
        steps = sos.timeline(s, task_id=tid)
        assert [st.at for st in steps] == sorted(st.at for st in steps)
        accepted = [st for st in steps if st.kind == "accepted"]
        assert [(st.person_id, st.at, st.detail["role"]) for st in accepted] == [
            (ids["fa2"], t1, "fetch_aed"), (ids["fa1"], t2, "patient")]
        assert any(st.kind == "sent" and st.person_id == ids["fa3"] and st.at == NOW for st in steps)
        lines = sos.timeline_text(s, task_id=tid)
        assert lines[0].startswith("10:00:00.000 收到呼救位置 · 呼**")
        assert any("接受 · 乙** · 取AED · 200米" in line for line in lines)


def test_the_patient_role_is_filled_even_if_only_runners_answer(sessions, world) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        ids = _people(s, world, NOW)
    tid = int(_start(sessions, ids["caller"], NOW)[0].task_id or 0)
    _wave(sessions, VolunteerIndex(), tid, 1, NOW)
    r1, _ = _answer(sessions, ids["fa3"], tid, NOW + timedelta(seconds=10))
    r2, _ = _answer(sessions, ids["fa4"], tid, NOW + timedelta(seconds=15))
    assert "取AED" in r1
    assert r2.startswith("谢谢您！已有救护员去取AED，请立即赶往患者身边")  # the role still missing
    with sessions() as s:
        roles = {a.person_id: a.role for a in s.exec(
            select(Assignment).where(Assignment.task_id == tid, Assignment.status == AS.accepted))}
        assert roles == {ids["fa3"]: "fetch_aed", ids["fa4"]: "patient"}


def test_waves_widen_every_60_s_and_a_late_yes_still_counts(sessions, world) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        caller = person(s, "呼救人", is_volunteer=False)
        near = person(s, "近", lat=north(300)[0], skills=FIRST_AID, grid=world.grid3)
        mid = person(s, "中", lat=north(-800)[0], skills=FIRST_AID, grid=world.grid3)
        far = person(s, "远", lat=north(1_800)[0], skills=FIRST_AID, grid=world.grid3)
    tid = int(_start(sessions, caller, NOW)[0].task_id or 0)
    idx = VolunteerIndex()
    out, fx = _wave(sessions, idx, tid, 1, NOW)
    assert (out.radius_m, out.offered) == (500, [near]) and fx.waves == [(tid, 2, NOW + timedelta(seconds=60))]
    out, fx = _wave(sessions, idx, tid, 2, NOW + timedelta(seconds=60))
    assert (out.radius_m, out.offered, out.expired) == (1_000, [mid], 1)
    out, _ = _wave(sessions, idx, tid, 3, NOW + timedelta(seconds=120))
    assert (out.radius_m, out.offered) == (2_000, [far])
    # the first one, whose alert lapsed two waves ago, answers now: still wanted
    reply, _ = _answer(sessions, near, tid, NOW + timedelta(seconds=130))
    assert reply.startswith("谢谢您！请立即赶往患者身边")
    with sessions() as s:
        a = s.exec(select(Assignment).where(Assignment.person_id == near)).one()
        assert a.status == AS.accepted and s.get(Task, tid).accepted_count == 1


def test_village_radius_cap_and_exhaustion(sessions, world) -> None:  # type: ignore[no-untyped-def]
    hd = (29.15, 120.30)  # 横店村, under 横店镇
    with sessions() as s:
        caller = person(s, "呼救人", lat=hd[0], lng=hd[1], is_volunteer=False, last_interaction_at=NOW)
        in_reach = person(s, "村里", lat=hd[0] + 800 * M, lng=hd[1], skills=FIRST_AID, grid=world.hd_grid)
        beyond = person(s, "县城", lat=hd[0] + 4_000 * M, lng=hd[1], skills=FIRST_AID, grid=world.hd_grid)
        hd_coord = coordinator(s, "横店协调", world.hengdian)
    tid = int(_start(sessions, caller, NOW, lat=hd[0], lng=hd[1])[0].task_id or 0)
    idx = VolunteerIndex()
    out, _ = _wave(sessions, idx, tid, 1, NOW)
    assert (out.radius_m, out.offered) == (1_000, [in_reach])  # a village: 1 km at once
    t = NOW
    radii = []
    for wave in (2, 3, 4, 5):
        t += timedelta(seconds=60)
        out, _ = _wave(sessions, idx, tid, wave, t)
        radii.append(out.radius_m)
        if out.status == "exhausted":
            break
    assert out.status == "exhausted" and radii[-1] == POLICY.sos_max_radius_m  # capped at 3 km, not 8
    with sessions() as s:
        asked = {a.person_id for a in s.exec(select(Assignment).where(Assignment.task_id == tid))}
        assert asked == {in_reach} and beyond not in asked
        told = {d.purpose: d for d in s.exec(select(Delivery).where(Delivery.person_id == caller))}
        assert told["sos_caller"].text.startswith("附近暂时没有能赶来的持证救护员")
        assert {d.purpose for d in s.exec(select(Delivery).where(Delivery.person_id == hd_coord))} == {
            "sos_coord", "exhausted"}
    assert ("exhausted", None) in _events(sessions, tid)


def test_repeat_and_outside_and_decline(sessions, world) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        ids = _people(s, world, NOW)
    first, _ = _start(sessions, ids["caller"], NOW)
    again, fx = _start(sessions, ids["caller"], NOW + timedelta(seconds=40), lat=LAT + 30 * M)
    assert again.status == "repeat" and again.task_id == first.task_id and not fx.waves
    assert ("repeat", ids["caller"]) in _events(sessions, int(first.task_id or 0))
    assert _start(sessions, ids["caller"], NOW, lat=31.2, lng=121.4)[0].status == "outside"  # Shanghai
    with sessions() as s:
        assert len(s.exec(select(Task).where(Task.kind == TaskKind.emergency)).all()) == 1
    tid = int(first.task_id or 0)
    _wave(sessions, VolunteerIndex(), tid, 1, NOW)
    fx = Effects()
    for k in ("fa1", "fa2", "fa3", "fa4"):
        reply, step = _answer(sessions, ids[k], tid, NOW + timedelta(seconds=5), accept=False)
        assert reply == rules.DECLINE_REPLY
        fx.merge(step)
    assert fx.waves == [(tid, 2, NOW + timedelta(seconds=5))]  # all said no: the next wave now
    assert [k for k, _ in _events(sessions, tid)].count("declined") == 4
    # one of them finds a way to go after all: while places are free, that yes counts
    reply, _ = _answer(sessions, ids["fa2"], tid, NOW + timedelta(seconds=20))
    assert reply.startswith("谢谢您！")
    with sessions() as s:
        assert s.exec(select(Assignment).where(Assignment.task_id == tid, Assignment.person_id == ids["fa2"])
                      ).one().status == AS.accepted


def test_monthly_aed_inspection_reminder(sessions, world) -> None:  # type: ignore[no-untyped-def]
    assert any(p.func is aed_jobs.inspection_reminders and p.cron == "0 9 1 * *" for p in SCHEDULE)
    with sessions() as s:
        keeper = person(s, "管理员", is_volunteer=False)
        other = person(s, "另一位", is_volunteer=False)
        for name, last, status, who in [
            ("久未检查", date(2026, 9, 1), AEDStatus.in_service, keeper),
            ("从未检查", None, AEDStatus.in_service, keeper),
            ("刚检查过", date(2026, 11, 20), AEDStatus.in_service, keeper),
            ("已报废", None, AEDStatus.retired, keeper),
            ("故障待修", date(2026, 8, 1), AEDStatus.faulty, other),
        ]:
            s.add(AED(name=name, lat=LAT, lng=LNG, h3=cell(LAT, LNG), status=status, keeper_person_id=who,
                      last_inspected_on=last))  # fmt: skip
        s.commit()
    first_of_month = datetime(2026, 12, 1, 1, 0, tzinfo=UTC)  # 09:00 in Shanghai
    fx = Effects()
    with sessions() as s, s.begin():
        told = aed_jobs.queue_inspection_reminders(s, fx, now=first_of_month, every_days=30)
    assert told == sorted([keeper, other]) and len(fx.deliveries) == 2
    with sessions() as s, s.begin():  # the cron fired twice (or after a lost Redis): nothing new
        assert aed_jobs.queue_inspection_reminders(s, Effects(), now=first_of_month, every_days=30) == []
    with sessions() as s:
        rows = {d.person_id: d for d in s.exec(select(Delivery).where(Delivery.purpose == "aed_inspect"))}
        assert rows[keeper].dedupe_key == f"aed_inspect:2026-12:{keeper}"
        text = rows[keeper].text
        assert text.startswith("【AED月检提醒 2026-12】") and "久未检查 · 上次检查：2026-09-01" in text
        assert "从未检查 · 上次检查：未记录" in text and "刚检查过" not in text and "已报废" not in text
        assert "故障待修（已报故障，请跟进维修）" in rows[other].text
    with sessions() as s, s.begin():
        assert aed_jobs.queue_inspection_reminders(
            s, Effects(), now=first_of_month + timedelta(days=31), every_days=30) == sorted([keeper, other])


# --- nearest AEDs through the webhook -----------------------------------------------------------


def _sim(settings_, srv: TestServer, openid: str) -> Simulator:
    return Simulator.from_settings(settings_, str(srv.make_url("/wechat")), openid)


async def test_nearest_aeds_in_service_open_now_datum_converted(settings, world, sessions) -> None:  # type: ignore[no-untyped-def]
    night = datetime(2026, 12, 2, 14, 0, tzinfo=UTC)  # 22:00 in Shanghai: the clinic is closed

    def factory(app):  # type: ignore[no-untyped-def]
        return Conversation(settings=settings, sessions=app[SESSIONS], redis_client=app[REDIS], clock=lambda: night)

    srv = TestServer(create_app(settings, handler_factory=factory), host="127.0.0.1")
    await srv.start_server()
    try:
        u = _sim(settings, srv, "passer-by")
        reply = await u.send(u.location(LAT + 550 * M, LNG, "路口"))  # sent as GCJ-02, as WeChat does
    finally:
        await srv.close()
    assert reply is not None
    lines = reply.splitlines()
    assert lines[0] == "离您最近的AED："
    # the government lobby is ~510 m away (the WGS-84 distance: the GCJ-02 shift of ~500 m was
    # undone), open all day; the clinic is 1.2 km away and closed at 22:00
    assert lines[1].startswith("1 东阳市人民政府一楼大厅 · 约510米 · 全天开放")
    assert lines[2].startswith("2 江北社区卫生服务中心 · 约1.2公里 · 现在未开放，08:00开放")
    assert "坏了的AED" not in reply
    links = re.findall(r'href="([^"]+)"', lines[1])
    assert len(links) == 2 and all(_coords(x) == tuple(round(c, 6) for c in wgs84_to_gcj02(*GOV_AED)) for x in links)


# --- end to end: webhook, RQ worker, fake WeChat -----------------------------------------------


@pytest.fixture
async def server(settings, world) -> AsyncIterator[TestServer]:  # type: ignore[no-untyped-def]
    srv = TestServer(create_app(settings), host="127.0.0.1")
    await srv.start_server()
    yield srv
    await srv.close()


async def test_sos_end_to_end(settings, server, sessions, world, jobrt, fake: FakeWeChat, redis_client) -> None:  # type: ignore[no-untyped-def]
    now = datetime.now(UTC)
    with sessions() as s:
        ids = _people(s, world, now)
        openid = {k: s.get(Person, v).openid for k, v in ids.items()}
    for o in openid.values():
        fake.set_user(o, last_interaction=_time.time())
    jobs_dispatch.forget_indexes()  # the worker's index must start from this database
    jobrt.extras["clock"] = lambda: datetime.now(UTC)  # the jobs see real time, as the web does
    try:
        caller = _sim(settings, server, openid["caller"])
        first = await caller.send(caller.text("急救"))
        assert first is not None and first.startswith("请立即拨打120！")
        located = await caller.send(caller.location(LAT, LNG, "东阳市人民政府"))
        assert located is not None
        assert located.splitlines()[0] == "请立即拨打120！"  # the first thing said, again
        assert "已呼叫附近的持证救护员" in located and "东阳市人民政府一楼大厅" in located
        assert len(located.encode()) <= 2048
        with sessions() as s:
            t = s.exec(select(Task).where(Task.kind == TaskKind.emergency)).one()
            tid = int(t.id or 0)
        # the first wave waits on the high-priority queue
        assert f"wave-{tid}-1" in Queue("high", connection=redis_client).job_ids

        work(redis_client)  # the wave, then the alerts, then the coordinator
        alerts = [m for m in fake.received() if m.text.startswith(f"【急救呼叫 T{tid}】") and "需要急救" in m.text]
        assert [m.openid for m in alerts] == [openid[k] for k in ("fa1", "fa2", "fa3", "fa4")]
        assert "请直接赶往患者身边" in alerts[0].text
        assert all("取AED" in m.text for m in alerts[1:])
        never = ("caller", "uncertified", "expired", "suspended", "unsubscribed", "busy", "no_emergencies", "far", "fa5")
        assert not any(m.openid == openid[k] for m in fake.received() for k in never)
        coord = fake.received(openid["coordinator"])
        assert len(coord) == 1 and "已呼叫附近4位持证救护员" in coord[0].text
        assert not fake.received(openid["hd_coordinator"])
        # the next, wider wave is planned 60 s on, on the same high queue
        assert f"wave-{tid}-2" in ScheduledJobRegistry(queue=Queue("high", connection=redis_client)).get_job_ids()

        # the AED runner accepts first, then the nearest; the others are stood down
        fa2, fa1, fa3 = (_sim(settings, server, openid[k]) for k in ("fa2", "fa1", "fa3"))
        r2 = await fa2.send(fa2.text(f"接受 {tid}"))
        assert r2 is not None and r2.startswith("谢谢您！请先到「东阳市人民政府一楼大厅」取AED")
        r1 = await fa1.send(fa1.text(f"接受 {tid}"))
        assert r1 is not None and r1.startswith("谢谢您！请立即赶往患者身边")
        work(redis_client)
        heard = [m.text for m in fake.received(openid["caller"])]
        assert heard[0].startswith("已有1位持证救护员正在赶来，约") and "取AED" in heard[0]
        assert heard[1].startswith("已有2位持证救护员正在赶来，约100米")
        for k in ("fa3", "fa4"):
            assert [m.text for m in fake.received(openid[k])][-1] == f"【急救呼叫 T{tid}】已有志愿者赶往现场，感谢您！"
        for k in ("fa1", "fa2"):
            assert not any("感谢您！" in m.text and "已有志愿者" in m.text for m in fake.received(openid[k]))
        assert "已有2位救护员赶往现场：乙**（取AED）、甲**（直奔患者）" in fake.received(openid["coordinator"])[-1].text
        late = await fa3.send(fa3.text(f"接受 {tid}"))
        assert late == "已有志愿者赶往现场，感谢您！"

        # a minute later the planned wave finds the task full: nobody else is disturbed
        before = len(fake.received())
        run_due(redis_client, datetime.now(UTC) + timedelta(seconds=61))
        work(redis_client)
        assert len(fake.received()) == before, [m.text for m in fake.received()[before:]]
        assert not any(m.openid in (openid["fa5"], openid["far"]) for m in fake.received())

        with sessions() as s:
            roles = {a.person_id: (a.status, a.role) for a in s.exec(select(Assignment).where(Assignment.task_id == tid))}
            assert roles[ids["fa1"]] == (AS.accepted, "patient") and roles[ids["fa2"]] == (AS.accepted, "fetch_aed")
            assert roles[ids["fa3"]][0] == roles[ids["fa4"]][0] == AS.withdrawn
            steps = sos.timeline(s, task_id=tid)
        kinds = [st.kind for st in steps]
        for k in ("called", "wave", "alerted", "sent", "coordinator_told", "accepted", "caller_told", "filled",
                  "stood_down"):
            assert k in kinds, k
        assert kinds[0] == "called" and kinds.index("alerted") < kinds.index("sent") < kinds.index("accepted")
        assert kinds.index("accepted") < kinds.index("filled") < kinds.index("stood_down")
        assert [st.at for st in steps] == sorted(st.at for st in steps)
        assert all(st.at.tzinfo is not None for st in steps)
        sent_alerts = [st for st in steps if st.kind == "sent" and st.detail and st.detail["purpose"] == "offer"]
        assert {st.person_id for st in sent_alerts} == {ids[k] for k in ("fa1", "fa2", "fa3", "fa4")}
    finally:
        jobs_dispatch.forget_indexes()
