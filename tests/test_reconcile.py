# ruff: noqa: F811  (pytest fixtures imported from tests.fakewechat are redefined as arguments)
"""Issue 5: the database is the truth. After Redis loses everything (FLUSHDB of our test db;
FLUSHALL in production), the reconciler re-creates every job, and nothing is sent twice."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import select

from dispatcher.effects import Effects
from jobs import queues
from jobs.digest import queue_daily_digests, queue_weekly_hours
from jobs.effects import apply
from jobs.outbound import send_delivery
from jobs.reconcile import reconcile, reconcile_with
from jobs.runtime import Runtime
from jobs.schedule import SCHEDULE, STARTUP
from models.outbox import queue_message
from models.tables import (
    Assignment,
    AssignmentStatus,
    Delivery,
    DeliveryStatus,
    Report,
    Task,
    TaskKind,
    TaskMode,
)
from tests.fakewechat import (  # noqa: F401  (fixtures)
    FakeWeChat,
    fake,
    fake_server,
    jobrt,
    make_grid,
    make_person,
    make_shift,
    run_due,
    scheduled,
    work,
)

SH = ZoneInfo("Asia/Shanghai")
OPENID = "oRecon-0001"


def _shift_with_volunteer(rt: Runtime, *, starts_in: timedelta, apply_effects: bool = True) -> int:
    now = rt.extras["clock"]()
    with rt.sessions() as s, s.begin():
        g = make_grid(s)
        p = make_person(s, openid=OPENID, last=now, grid=g)
        t = make_shift(s, grid=g, starts_at=now + starts_in)
        a = Assignment(task_id=t.id, person_id=p.id, status=AssignmentStatus.accepted)
        s.add(a)
        s.flush()
        aid = a.id
    if apply_effects:
        apply(rt.redis, Effects(assignments=[aid]))
    return aid


def _rows(rt: Runtime) -> list[Delivery]:
    with rt.sessions() as s:
        return list(s.exec(select(Delivery).order_by(Delivery.id)).all())


def test_flush_then_reconcile_pending_reminders_fire_once(jobrt: Runtime, fake: FakeWeChat) -> None:
    clock = jobrt.extras["clock"]
    # 06:00 tomorrow in Dongyang (in the real future whatever the hour), a shift at 09:00 the day after
    clock.set(datetime.combine(clock().astimezone(SH).date() + timedelta(days=1), datetime.min.time(), SH)
              .replace(hour=6).astimezone(UTC))
    fake.set_user(OPENID, last_interaction=time.time())
    _shift_with_volunteer(jobrt, starts_in=timedelta(days=1, hours=3))
    work(jobrt.redis)
    before = scheduled(jobrt.redis)
    assert len(before) == 4

    jobrt.redis.flushdb()  # Redis loses every job (our test db only)
    assert scheduled(jobrt.redis) == {}
    report = reconcile_with(jobrt)
    assert report["deliveries"] == 4  # one job per pending reminder row
    assert scheduled(jobrt.redis) == before  # the same ids at the same moments
    reconcile_with(jobrt)  # twice: still one job each
    assert scheduled(jobrt.redis) == before

    # let the whole shift pass: each reminder fires once
    for when in sorted(set(before.values())):
        run_due(jobrt.redis, clock.set(when))
        work(jobrt.redis)
        reconcile_with(jobrt)  # a reconcile between sends changes nothing
        work(jobrt.redis)
    texts = [m.text for m in fake.received(OPENID)]
    assert len(texts) == 4 and len(set(texts)) == 4
    assert texts[0].startswith("【明天的班次】") and texts[1].startswith("【2小时后开始】")
    assert {d.status for d in _rows(jobrt)} == {DeliveryStatus.sent}


def test_reminders_lost_between_commit_and_apply_come_back(jobrt: Runtime, fake: FakeWeChat) -> None:
    aid = _shift_with_volunteer(jobrt, starts_in=timedelta(days=3), apply_effects=False)
    assert _rows(jobrt) == []
    reconcile_with(jobrt)
    rows = _rows(jobrt)
    assert {d.purpose for d in rows} == {"remind_before86400", "remind_before7200", "remind_checkin", "remind_checkout"}
    assert all(d.payload["assignment_id"] == aid for d in rows)
    assert set(scheduled(jobrt.redis)) == {f"delivery-{d.id}" for d in rows}


def test_pending_message_without_job_is_sent_once(jobrt: Runtime, fake: FakeWeChat) -> None:
    fake.interact(OPENID)
    with jobrt.sessions() as s, s.begin():
        p = make_person(s, openid=OPENID, last=jobrt.extras["clock"]())
        did = queue_message(s, person_id=p.id, purpose="notice", target=1, text="您好").id
    # the process died before apply(): no job
    assert reconcile_with(jobrt)["deliveries"] == 1
    assert reconcile_with(jobrt)["deliveries"] == 0  # already planned
    work(jobrt.redis)
    assert fake.counts() == {OPENID: 1}
    assert send_delivery(did) == "skip"


def test_claim_past_the_lease_is_settled_in_doubt(jobrt: Runtime, fake: FakeWeChat) -> None:
    clock = jobrt.extras["clock"]
    with jobrt.sessions() as s, s.begin():
        p = make_person(s, openid=OPENID, last=clock())
        d = queue_message(s, person_id=p.id, purpose="notice", target=1, text="您好")
        d.status, d.claimed_at, d.attempts = DeliveryStatus.sending, clock(), 1
        did = d.id
    assert reconcile_with(jobrt)["in_doubt"] == 0  # within the lease: a worker may be sending it
    clock.advance(seconds=jobrt.settings.outbound_claim_lease_s + 1)
    assert reconcile_with(jobrt)["in_doubt"] == 1
    (row,) = _rows(jobrt)
    assert (row.id, row.status, row.payload.get("in_doubt")) == (did, DeliveryStatus.failed, True)
    work(jobrt.redis)
    assert fake.received() == []  # at most once: not sent again


def test_expired_offers_without_next_wave_get_one(jobrt: Runtime, fake: FakeWeChat) -> None:
    clock = jobrt.extras["clock"]
    now = clock()
    with jobrt.sessions() as s, s.begin():
        g = make_grid(s)
        p = make_person(s, openid=OPENID, last=now, grid=g)
        t = Task(kind=TaskKind.elderly_visit, mode=TaskMode.dispatch, title="帮独居老人取药", lat=29.29, lng=120.23,
                 h3="88309a4c1bfffff", grid_id=g.id, starts_at=now, ends_at=now + timedelta(hours=2), wave=1)
        s.add(t)
        s.flush()
        s.add(Assignment(task_id=t.id, person_id=p.id, status=AssignmentStatus.offered, wave=1,
                         offered_at=now - timedelta(minutes=40), expires_at=now - timedelta(minutes=10)))
        fresh = Task(kind=TaskKind.elderly_visit, mode=TaskMode.dispatch, title="走访", lat=29.29, lng=120.23,
                     h3="88309a4c1bfffff", grid_id=g.id, starts_at=now, ends_at=now + timedelta(hours=2), wave=1)
        s.add(fresh)
        s.flush()
        q = make_person(s, openid="oRecon-0002", last=now, grid=g)
        s.add(Assignment(task_id=fresh.id, person_id=q.id, status=AssignmentStatus.offered, wave=1,
                         offered_at=now, expires_at=now + timedelta(minutes=30)))
        stale_id, fresh_id = t.id, fresh.id
    report = reconcile_with(jobrt)
    assert report["waves"] == 2
    q = queues.queue(queues.DEFAULT, jobrt.redis)
    job = q.fetch_job(f"wave-{stale_id}-2")
    assert job is not None and job.get_status() == "queued" and job.args == (stale_id, 2)
    # the one still waiting on its offers gets its next wave at their expiry
    assert scheduled(jobrt.redis)[f"wave-{fresh_id}-2"] == now + timedelta(minutes=30)
    assert reconcile_with(jobrt)["waves"] == 0  # planned once


def test_schedule_registers_reconciler_digest_and_weekly_hours() -> None:
    by_name = {p.func.__name__: p for p in SCHEDULE}
    assert by_name["reconcile"].interval == 300 and by_name["reconcile"].func is reconcile
    assert by_name["daily_digest"].cron == "0 8 * * *"
    assert by_name["weekly_hours"].cron == "0 9 * * 1"
    assert any(f.__name__ == "reconcile_at_start" for f in STARTUP)


def test_daily_digest_and_weekly_hours(jobrt: Runtime, fake: FakeWeChat) -> None:
    clock = jobrt.extras["clock"]
    # Monday 08:00 in Dongyang
    clock.set(datetime(2026, 12, 7, 8, 0, tzinfo=SH).astimezone(UTC))
    now = clock()
    with jobrt.sessions() as s, s.begin():
        town = make_grid(s, name="江北街道", level="town")
        grid = make_grid(s, name="东丰村第3网格", parent=town)
        coord = make_person(s, openid="oCoord", last=now, coordinator_scope=town, volunteer=False, name="陈")
        vol = make_person(s, openid="oVol", last=now, grid=grid)
        make_shift(s, grid=grid, starts_at=now + timedelta(hours=3), slots=4)  # today, unfilled
        done = make_shift(s, grid=grid, starts_at=now - timedelta(days=3))
        s.add(Assignment(task_id=done.id, person_id=vol.id, status=AssignmentStatus.completed, hours=1.5,
                         checked_out_at=now - timedelta(days=3) + timedelta(hours=2)))
        s.add(Report(reporter_id=coord.id, grid_id=grid.id, category="fridge", text="冰柜缺货", lat=29.29, lng=120.23))
        fx = Effects()
        assert queue_daily_digests(s, fx, now=now, settings=jobrt.settings) == 1
        assert queue_daily_digests(s, fx, now=now, settings=jobrt.settings) == 0  # once a day
        assert queue_weekly_hours(s, fx, now=now, settings=jobrt.settings) == 1
        assert queue_weekly_hours(s, fx, now=now, settings=jobrt.settings) == 0  # once a week
    fake.interact("oCoord")
    fake.interact("oVol")
    apply(jobrt.redis, fx)
    work(jobrt.redis)
    (digest,) = fake.received("oCoord")
    assert digest.text.splitlines() == [
        "【每日简报】12月7日(周一) · 江北街道",
        "今天的任务和班次：1 项",
        "未来两天未满员的班次：1 个，还差 4 人",
        "待处理的上报：1 条",
        "回复「状态」查看详情。",
    ]
    (hours,) = fake.received("oVol")
    assert hours.text == "【上周服务】您上周参加了 1 次服务，共 1.5 小时，今年累计 1.5 小时。谢谢您！"


def test_a_report_whose_first_wave_was_lost_gets_it(jobrt: Runtime, fake: FakeWeChat) -> None:
    now = jobrt.extras["clock"]()
    with jobrt.sessions() as s, s.begin():
        g = make_grid(s)
        t = Task(kind=TaskKind.fridge_restock, mode=TaskMode.dispatch, title="爱心冰柜补货", lat=29.29, lng=120.23,
                 h3="88309a4c1bfffff", grid_id=g.id, starts_at=now, ends_at=now + timedelta(hours=2), wave=0)
        s.add(t)
        s.flush()
        tid = t.id
    assert reconcile_with(jobrt)["waves"] == 1
    job = queues.queue(queues.DEFAULT, jobrt.redis).fetch_job(f"wave-{tid}-1")
    assert job is not None and job.get_status() == "queued" and job.args == (tid, 1)
    assert reconcile_with(jobrt)["waves"] == 0  # planned once
