# ruff: noqa: F811  (pytest fixtures imported from tests.fakewechat are redefined as arguments)
"""Issue 5: shift reminders at the right aware-UTC times, each delivered once, withdrawn on cancel.

Time is driven by the jobs' clock and by moving due scheduled jobs to their queue (``run_due``);
the jobs run in a real RQ worker on real Redis against the fake WeChat server.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlmodel import select

from dispatcher.effects import Effects
from jobs.effects import apply
from jobs.reminders import plan
from jobs.runtime import Runtime
from models.tables import Assignment, AssignmentStatus, Delivery, DeliveryStatus
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
OPENID = "oRemind-0001"


def _tomorrow_9am(now: datetime) -> datetime:
    local = now.astimezone(SH)
    return datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), SH).replace(hour=9).astimezone(UTC)


def _accept(rt: Runtime, *, starts_at: datetime) -> tuple[int, int]:
    """A volunteer takes a shift now (what the shift service commits), and its effects apply."""
    now = rt.extras["clock"]()
    with rt.sessions() as s, s.begin():
        g = make_grid(s)
        p = make_person(s, openid=OPENID, last=now, grid=g)
        t = make_shift(s, grid=g, starts_at=starts_at)
        a = Assignment(task_id=t.id, person_id=p.id, status=AssignmentStatus.accepted, responded_at=now)
        s.add(a)
        s.flush()
        ids = (a.id, t.id)
    apply(rt.redis, Effects(assignments=[ids[0]]))
    return ids


def _reminders(rt: Runtime) -> dict[str, Delivery]:
    with rt.sessions() as s:
        return {d.purpose: d for d in s.exec(select(Delivery).where(Delivery.purpose.startswith("remind_")))}  # type: ignore[attr-defined]


def test_plan_is_pure_and_configurable(jobrt: Runtime) -> None:
    start = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
    end = start + timedelta(hours=1, minutes=30)
    got = plan(starts_at=start, ends_at=end, checked_in=False, checked_out=False, settings=jobrt.settings)
    assert got == [
        ("before86400", start - timedelta(hours=24)),
        ("before7200", start - timedelta(hours=2)),
        ("checkin", start),
        ("checkout", end + timedelta(minutes=15)),
    ]
    custom = jobrt.settings.model_copy(update={"reminder_before_s": [3600], "reminder_checkin": False,
                                               "reminder_checkout_after_s": 0})
    assert plan(starts_at=start, ends_at=end, checked_in=True, checked_out=False, settings=custom) == [("checkout", end)]


def test_accepted_for_tomorrow_reminds_24h_and_2h_before_once_each(jobrt: Runtime, fake: FakeWeChat) -> None:
    clock = jobrt.extras["clock"]
    # accepted "now" = 06:00 Shanghai (tomorrow, so every moment below is in the real future), for
    # 09:00 the day after
    clock.set(datetime.combine(clock().astimezone(SH).date() + timedelta(days=1), datetime.min.time(), SH)
              .replace(hour=6).astimezone(UTC))
    fake.set_user(OPENID, last_interaction=time.time())
    start = _tomorrow_9am(clock())
    aid, task_id = _accept(jobrt, starts_at=start)
    work(jobrt.redis)  # runs sync_assignment

    rows = _reminders(jobrt)
    assert set(rows) == {"remind_before86400", "remind_before7200", "remind_checkin", "remind_checkout"}
    day_before, two_h = rows["remind_before86400"], rows["remind_before7200"]
    assert day_before.not_before == start - timedelta(hours=24)
    assert two_h.not_before == start - timedelta(hours=2)
    assert day_before.not_before.tzinfo is not None and day_before.not_before.utcoffset() == timedelta(0)
    assert day_before.dedupe_key == f"remind_before86400:{aid}:{day_before.person_id}"
    # each is an RQ job scheduled at that aware UTC moment, with a deterministic id
    plan_ = scheduled(jobrt.redis)
    assert plan_[f"delivery-{day_before.id}"] == start - timedelta(hours=24)
    assert plan_[f"delivery-{two_h.id}"] == start - timedelta(hours=2)
    assert plan_[f"delivery-{two_h.id}"].astimezone(SH).hour == 7  # 07:00 in Dongyang
    assert fake.received() == []

    # a second sync (any change of the assignment re-syncs) plans nothing new
    apply(jobrt.redis, Effects(assignments=[aid]))
    work(jobrt.redis)
    assert len(_reminders(jobrt)) == 4 and scheduled(jobrt.redis) == plan_

    # 24 hours before: the "tomorrow" reminder, once
    run_due(jobrt.redis, clock.set(start - timedelta(hours=24)))
    work(jobrt.redis)
    (msg,) = fake.received(OPENID)
    assert msg.text.startswith("【明天的班次】爱心冰柜补货 · 东丰村 · ")
    assert "09:00" in msg.text and f"取消 {task_id}" in msg.text
    # 2 hours before
    run_due(jobrt.redis, clock.set(start - timedelta(hours=2)))
    work(jobrt.redis)
    assert [m.text for m in fake.received(OPENID)][1] == "【2小时后开始】爱心冰柜补货 · 东丰村 · 09:00。到达后回复「签到」。"
    # running every due job again (a duplicate enqueue, a retry) sends nothing more
    from jobs.outbound import send_delivery

    assert send_delivery(day_before.id) == "skip" and send_delivery(two_h.id) == "skip"
    rows = _reminders(jobrt)
    assert rows["remind_before86400"].status == rows["remind_before7200"].status == DeliveryStatus.sent
    assert rows["remind_before86400"].sent_at == start - timedelta(hours=24)
    assert len(fake.received(OPENID)) == 2

    # the volunteer cancels before the start: the remaining reminders are withdrawn
    with jobrt.sessions() as s, s.begin():
        s.get(Assignment, aid).status = AssignmentStatus.cancelled
    apply(jobrt.redis, Effects(assignments=[aid]))
    work(jobrt.redis)
    rows = _reminders(jobrt)
    assert rows["remind_checkin"].status == rows["remind_checkout"].status == DeliveryStatus.cancelled
    assert scheduled(jobrt.redis) == {}
    run_due(jobrt.redis, clock.set(start + timedelta(hours=3)))
    work(jobrt.redis)
    assert len(fake.received(OPENID)) == 2


def test_cancelled_before_any_reminder_sends_nothing(jobrt: Runtime, fake: FakeWeChat) -> None:
    clock = jobrt.extras["clock"]
    fake.set_user(OPENID, last_interaction=time.time())
    start = clock() + timedelta(days=2)
    aid, _ = _accept(jobrt, starts_at=start)
    work(jobrt.redis)
    assert len(scheduled(jobrt.redis)) == 4
    with jobrt.sessions() as s, s.begin():
        s.get(Assignment, aid).status = AssignmentStatus.withdrawn
    apply(jobrt.redis, Effects(assignments=[aid]))
    work(jobrt.redis)
    assert scheduled(jobrt.redis) == {}
    assert {d.status for d in _reminders(jobrt).values()} == {DeliveryStatus.cancelled}
    # even a stray job (enqueued before the cancel reached Redis) sends nothing
    from jobs.outbound import send_delivery

    assert {send_delivery(d.id) for d in _reminders(jobrt).values()} == {"skip"}
    assert fake.received() == []
    # taken again: the same rows come back, planned again
    with jobrt.sessions() as s, s.begin():
        s.get(Assignment, aid).status = AssignmentStatus.accepted
    apply(jobrt.redis, Effects(assignments=[aid]))
    work(jobrt.redis)
    assert {d.status for d in _reminders(jobrt).values()} == {DeliveryStatus.pending}
    assert len(scheduled(jobrt.redis)) == 4


def test_check_in_and_out_reminders_follow_the_assignment(jobrt: Runtime, fake: FakeWeChat) -> None:
    clock = jobrt.extras["clock"]
    fake.set_user(OPENID, last_interaction=time.time())
    start = clock() + timedelta(hours=1)  # taken an hour before: only check-in and check-out remain
    aid, _ = _accept(jobrt, starts_at=start)
    work(jobrt.redis)
    rows = _reminders(jobrt)
    assert set(rows) == {"remind_checkin", "remind_checkout"}
    # they check in early: the check-in reminder is dropped even though its job still runs
    with jobrt.sessions() as s, s.begin():
        a = s.get(Assignment, aid)
        a.status, a.checked_in_at = AssignmentStatus.checked_in, clock()
    run_due(jobrt.redis, clock.set(start))
    work(jobrt.redis)
    assert _reminders(jobrt)["remind_checkin"].status == DeliveryStatus.cancelled
    assert fake.received() == []
    run_due(jobrt.redis, clock.set(start + timedelta(hours=1, minutes=45)))
    work(jobrt.redis)
    (msg,) = fake.received(OPENID)
    assert msg.text.startswith("辛苦了！爱心冰柜补货 已于 ") and "「签退」" in msg.text
