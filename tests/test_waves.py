"""Offer waves: sizing, TTL, widening, exhaustion (coordinators told), and the RQ job."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis
from dispatch_world import LAT, LNG, NOW, build_world, coordinator, person, task
from rq import Queue
from rq.registry import ScheduledJobRegistry
from sqlmodel import select

from dispatcher import services, waves
from dispatcher.effects import Effects
from dispatcher.index import VolunteerIndex
from dispatcher.matching import geodesic_m
from models.settings import DispatchPolicy, Settings
from models.tables import Assignment, AssignmentStatus, Delivery, Task, TaskKind, TaskStatus, Urgency

AS = AssignmentStatus
KM = 1 / 111.195  # degrees of latitude per km
POLICY = DispatchPolicy()


def test_wave_rules() -> None:
    assert waves.ttl("routine", POLICY) == timedelta(minutes=30)
    assert waves.ttl("urgent", POLICY) == timedelta(minutes=5)
    assert waves.ttl("emergency", POLICY) == timedelta(seconds=60)
    assert waves.wave_size(1, "routine", POLICY) == 2
    assert waves.wave_size(3, "routine", POLICY) == 6
    assert waves.wave_size(1, "emergency", POLICY) == 3  # at least 3 responders
    assert waves.wave_size(4, "emergency", POLICY) == 5  # at most 5
    assert waves.wave_size(0, "routine", POLICY) == 0
    assert [waves.radius(w, "routine", POLICY, urban=True) for w in (1, 2, 3, 4, 5)] == [
        5_000,
        10_000,
        20_000,
        30_000,
        30_000,
    ]
    assert waves.radius(1, "emergency", POLICY, urban=True) == 500
    assert waves.radius(1, "emergency", POLICY, urban=False) == 1_000
    assert waves.can_widen(3, "routine", POLICY, urban=True)
    assert not waves.can_widen(4, "routine", POLICY, urban=True)  # already at the 30 km cap
    assert waves.plan(6, 1, "routine", POLICY, urban=True) is None
    assert waves.is_urban("江北街道") and not waves.is_urban("横店镇")


def _wave(sessions, idx: VolunteerIndex, tid: int, wave: int, now: datetime):  # type: ignore[no-untyped-def]
    fx = Effects()
    with sessions() as s, s.begin():
        services.refresh_index(s, idx, now=now)
        out = services.run_wave(s, fx, task_id=tid, wave=wave, now=now, index=idx, policy=POLICY)
    return out, fx


def test_silent_wave_then_wider_wave_then_exhausted(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        near = [person(s, f"近{i}", lat=LAT + d * KM) for i, d in enumerate((1.0, 2.0, 3.0))]
        far = [person(s, f"远{i}", lat=LAT - d * KM) for i, d in enumerate((7.0, 8.0))]
        town_c = coordinator(s, "江北协调", w.jiangbei)
        city_c = coordinator(s, "市协调", w.city)
        other_c = coordinator(s, "横店协调", w.hengdian)
        tid = task(s, grid=w.grid3, slots=1, start=NOW, hours=4)
    idx = VolunteerIndex()

    out, fx = _wave(sessions, idx, tid, 1, NOW)
    assert out.status == "offered" and out.radius_m == 5_000
    assert out.offered == near[:2]  # wave size 1 slot x 2
    assert fx.waves == [(tid, 2, NOW + timedelta(minutes=30))]
    with sessions() as s:
        offers = list(s.exec(select(Delivery).where(Delivery.purpose == "offer").order_by(Delivery.id)))
        assert [d.person_id for d in offers] == near[:2] and fx.deliveries == [d.id for d in offers]
        assert f"【任务邀请 T{tid}】东丰村需要1位志愿者" in offers[0].text
        assert f"回复「接受 {tid}」或「拒绝 {tid}」，30分钟内有效" in offers[0].text
        assert f"【任务邀请 T{tid}】东丰村需要1位志愿者帮独居老人取药，今天 14:00 前，距您约1000米" in offers[0].text
        rows = list(s.exec(select(Assignment).where(Assignment.task_id == tid)))
        assert {(r.person_id, r.status, r.wave, r.expires_at) for r in rows} == {
            (p, AS.offered, 1, NOW + timedelta(minutes=30)) for p in near[:2]
        }

    # nobody answers; the next wave runs after the TTL and reaches farther
    later = NOW + timedelta(minutes=30)
    out, fx = _wave(sessions, idx, tid, 2, later)
    assert out.status == "offered" and out.radius_m == 10_000 and out.expired == 2
    assert _wave(sessions, idx, tid, 1, later)[0].status == "stale"  # a late repeat is a no-op
    assert out.offered == [near[2], far[0]]
    with sessions() as s:
        t = s.get(Task, tid)
        dist = {p.id: geodesic_m(t.lat, t.lng, p.lat, p.lng) for p in (s.get(services.Person, i) for i in out.offered)}
        assert max(dist.values()) > 5_000  # beyond wave 1's reach
        states = {r.person_id: r.status for r in s.exec(select(Assignment).where(Assignment.task_id == tid))}
        assert states == {near[0]: AS.expired, near[1]: AS.expired, near[2]: AS.offered, far[0]: AS.offered}
        assert t.wave == 2
    assert _wave(sessions, idx, tid, 2, later)[0].status == "stale"

    # third wave: one person left, then nobody at any radius
    out, _ = _wave(sessions, idx, tid, 3, later + timedelta(minutes=30))
    assert out.offered == [far[1]]
    out, fx = _wave(sessions, idx, tid, 4, later + timedelta(minutes=60))
    assert out.status == "exhausted"
    with sessions() as s:
        assert s.get(Task, tid).status == TaskStatus.exhausted
        alerts = list(s.exec(select(Delivery).where(Delivery.purpose == "exhausted").order_by(Delivery.person_id)))
        assert sorted(d.person_id for d in alerts) == sorted([town_c, city_c])
        assert other_c not in {d.person_id for d in alerts}
        assert "附近已没有可邀请的志愿者，还差1人" in alerts[0].text
        assert sorted(fx.deliveries) == sorted(d.id for d in alerts)
    assert _wave(sessions, idx, tid, 5, later + timedelta(minutes=90))[0].status == "stopped"


def test_no_one_at_all_exhausts_at_once(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        c = coordinator(s, "江北协调", w.jiangbei)
        tid = task(s, grid=w.grid3)
    out, _ = _wave(sessions, VolunteerIndex(), tid, 1, NOW)
    assert out.status == "exhausted" and out.radius_m == POLICY.max_radius_m
    with sessions() as s:
        assert s.exec(select(Delivery.person_id).where(Delivery.purpose == "exhausted")).all() == [c]


def test_emergency_asks_the_nearest_few_within_500_m_in_town(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        # 23:00 in Shanghai: everyone is in quiet hours, which an emergency ignores
        quiet = dict(quiet_start_min=22 * 60, quiet_end_min=7 * 60)
        close = [person(s, f"近{i}", lat=LAT + i * 0.08 * KM, **quiet) for i in range(1, 7)]  # 80-480 m
        person(s, "远", lat=LAT + 0.7 * KM, **quiet)  # 700 m: outside the first wave
        tid = task(s, grid=w.grid3, kind=TaskKind.emergency, urgency=Urgency.emergency)
    night = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)
    out, fx = _wave(sessions, VolunteerIndex(), tid, 1, night)
    assert out.status == "offered" and out.radius_m == 500
    assert out.offered == close[:3]  # 1 slot x 2 -> raised to the minimum of 3
    assert fx.waves == [(tid, 2, night + timedelta(seconds=60))]
    with sessions() as s:
        assert "【紧急求助" in s.exec(select(Delivery.text)).first()


def test_all_declined_plans_the_next_wave_now(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        a, b = person(s, "王丽", lat=LAT + 0.001), person(s, "李强", lat=LAT + 0.002)
        tid = task(s, grid=w.grid3)
    idx = VolunteerIndex()
    _wave(sessions, idx, tid, 1, NOW)
    fx = Effects()
    with sessions() as s, s.begin():
        assert services.decline_offer(s, fx, person_id=a, task_id=tid, now=NOW).status == "declined"
    assert fx.waves == []  # b may still answer
    with sessions() as s, s.begin():
        assert services.decline_offer(s, fx, person_id=b, task_id=tid, now=NOW).status == "declined"
        assert services.decline_offer(s, Effects(), person_id=b, task_id=tid, now=NOW).status == "declined_before"
    assert fx.waves == [(tid, 2, NOW)]


def test_run_wave_job_schedules_the_next_wave_in_rq(settings: Settings, sessions, redis_client: redis.Redis) -> None:  # type: ignore[no-untyped-def]
    from jobs import dispatch as jobs_dispatch
    from jobs.runtime import Runtime, use_runtime

    now = datetime.now(UTC)
    with sessions() as s:
        w = build_world(s)
        p = person(s, "王丽", lat=LAT + 0.002, lng=LNG)
        tid = task(s, grid=w.grid3, start=now, hours=3)
    jobs_dispatch.forget_indexes()
    rt = Runtime.build(settings, redis_client=redis_client)
    use_runtime(rt)
    try:
        assert jobs_dispatch.run_wave(tid, 1) == "offered"
        assert jobs_dispatch.run_wave(tid, 1) == "stale"
    finally:
        use_runtime(None)
        rt.engine.dispose()
        jobs_dispatch.forget_indexes()
    with sessions() as s:
        d = s.exec(select(Delivery).where(Delivery.person_id == p)).one()
    q = Queue("default", connection=redis_client)
    assert f"delivery-{d.id}" in q.job_ids
    scheduled = ScheduledJobRegistry(queue=q)
    assert f"wave-{tid}-2" in scheduled.get_job_ids()
    job = q.fetch_job(f"wave-{tid}-2")
    assert job is not None and job.func_name == "jobs.dispatch.run_wave" and job.args == (tid, 2)
