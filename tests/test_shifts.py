"""Shifts: capacity, waitlist and promotion, overlap, cut-off, recurrence, understaffing."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from dispatch_world import NOW, assign, build_world, coordinator, person, task
from hypothesis import given
from hypothesis import strategies as st
from sqlmodel import select

from dispatcher import services, shifts
from dispatcher.effects import Effects
from models.exceptions import BadRecurrence
from models.settings import DispatchPolicy
from models.tables import Assignment, AssignmentStatus, Delivery, Task, TaskMode, TaskStatus

SH = ZoneInfo("Asia/Shanghai")
AS = AssignmentStatus


def _signup(sessions, pid: int, tid: int, now: datetime = NOW):  # type: ignore[no-untyped-def]
    fx = Effects()
    with sessions() as s, s.begin():
        out = services.sign_up(s, fx, person_id=pid, task_id=tid, now=now)
    return out, fx


def _cancel(sessions, pid: int, tid: int, now: datetime = NOW, policy: DispatchPolicy | None = None):  # type: ignore[no-untyped-def]
    fx = Effects()
    with sessions() as s, s.begin():
        out = services.cancel(s, fx, person_id=pid, task_id=tid, now=now, policy=policy)
    return out, fx


def _shift(s, w, **kw):  # type: ignore[no-untyped-def]
    kw.setdefault("start", NOW + timedelta(days=1))
    kw.setdefault("title", "爱心冰柜补货")
    return task(s, grid=w.grid3, mode=TaskMode.signup, **kw)


# --- pure rules -------------------------------------------------------------------------------


def test_parse_weekly() -> None:
    assert shifts.parse_weekly("WEEKLY:TU,FR") == (1, 4)
    assert shifts.parse_weekly("weekly:fr, tu") == (1, 4)
    for bad in ("DAILY:TU", "WEEKLY:", "WEEKLY:XX", "TU,FR"):
        with pytest.raises(BadRecurrence):
            shifts.parse_weekly(bad)


def test_occurrences_keep_local_time_and_skip_the_template() -> None:
    first = datetime(2026, 12, 1, 9, 0, tzinfo=SH).astimezone(UTC)  # Tuesday 09:00
    got = shifts.occurrences("WEEKLY:TU,FR", first, first + timedelta(hours=2), after=first, until=first + timedelta(days=14))
    local = [(s.astimezone(SH).strftime("%a %m-%d %H:%M"), (e - s).seconds) for s, e in got]
    assert local == [
        ("Fri 12-04 09:00", 7200),
        ("Tue 12-08 09:00", 7200),
        ("Fri 12-11 09:00", 7200),
        ("Tue 12-15 09:00", 7200),
    ]


@given(st.integers(0, 10_000), st.integers(0, 30_000))
def test_self_cancel_cutoff(before_s: int, cutoff_s: int) -> None:
    start = NOW + timedelta(seconds=before_s)
    assert shifts.can_self_cancel(start, NOW, cutoff_s) == (before_s >= cutoff_s)


def test_credited_hours_are_capped() -> None:
    start = NOW
    end = NOW + timedelta(hours=2)
    assert shifts.credited_hours(start, start + timedelta(minutes=90), start, end, 1.0) == 1.5
    assert shifts.credited_hours(start, start + timedelta(hours=9), start, end, 1.0) == 3.0


def test_waitlist_rank_counts_those_ahead() -> None:
    assert shifts.waitlist_rank(5, [2, 5, 7, None]) == 2
    assert shifts.next_waitlist_pos([None, 3, 1]) == 4


# --- services ---------------------------------------------------------------------------------


def test_capacity_and_waitlist_with_promotion(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        tid = _shift(s, w, slots=2)
        a, b, c, d = (person(s, n) for n in ("王丽", "李强", "张敏", "陈静"))
    assert _signup(sessions, a, tid)[0].status == "accepted"
    assert _signup(sessions, b, tid)[0].status == "accepted"
    out_c, _ = _signup(sessions, c, tid)
    out_d, _ = _signup(sessions, d, tid)
    assert (out_c.status, out_c.waitlist_pos) == ("waitlisted", 1)
    assert (out_d.status, out_d.waitlist_pos) == ("waitlisted", 2)
    again, _ = _signup(sessions, c, tid)
    assert (again.status, again.waitlist_pos) == ("already", 1)
    with sessions() as s:
        t = s.get(Task, tid)
        assert (t.accepted_count, t.status) == (2, TaskStatus.filled)

    out, fx = _cancel(sessions, a, tid)
    assert (out.status, out.promoted_person_id, out.was) == ("cancelled", c, "accepted")
    with sessions() as s:
        t = s.get(Task, tid)
        assert (t.accepted_count, t.status) == (2, TaskStatus.filled)
        rows = {x.person_id: x.status for x in s.exec(select(Assignment).where(Assignment.task_id == tid))}
        assert rows == {a: AS.cancelled, b: AS.accepted, c: AS.accepted, d: AS.waitlisted}
        told = s.exec(select(Delivery).where(Delivery.person_id == c)).one()
        assert told.purpose == "promoted" and f"取消 {tid}" in told.text and "候补成功" in told.text
        assert fx.deliveries == [told.id]
    assert _signup(sessions, d, tid)[0].waitlist_pos == 1  # moved up the queue

    # the promoted person declines with 取消: the next one moves up
    out, _ = _cancel(sessions, c, tid)
    assert out.promoted_person_id == d
    # a waitlisted person leaving promotes nobody and needs no cut-off
    with sessions() as s:
        e = person(s, "赵伟")
    assert _signup(sessions, e, tid)[0].status == "waitlisted"
    out, _ = _cancel(sessions, e, tid, now=NOW + timedelta(days=1) - timedelta(minutes=5))
    assert (out.status, out.promoted_person_id, out.was) == ("cancelled", None, "waitlisted")


def test_no_double_booking_across_overlapping_shifts(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        start = NOW + timedelta(days=1)
        first = _shift(s, w, start=start, hours=2)
        overlapping = _shift(s, w, start=start + timedelta(hours=1), hours=2)
        after = _shift(s, w, start=start + timedelta(hours=2), hours=1)
        p = person(s, "王丽")
    assert _signup(sessions, p, first)[0].status == "accepted"
    out, _ = _signup(sessions, p, overlapping)
    assert out.status == "overlap" and out.clash is not None and out.clash.id == first
    assert _signup(sessions, p, after)[0].status == "accepted"  # back to back is fine
    with sessions() as s:
        assert s.get(Task, overlapping).accepted_count == 0
        assert s.exec(select(Assignment).where(Assignment.task_id == overlapping)).first() is None


def test_promotion_skips_a_person_now_booked_elsewhere(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        start = NOW + timedelta(days=1)
        full = _shift(s, w, start=start, slots=1)
        other = _shift(s, w, start=start, slots=1, title="应急演练")
        a, b, c = (person(s, n) for n in ("王丽", "李强", "张敏"))
        assign(s, full, a, AS.accepted)
        s.get(Task, full).accepted_count = 1  # type: ignore[union-attr]
        s.commit()
    assert _signup(sessions, b, full)[0].status == "waitlisted"
    assert _signup(sessions, c, full)[0].status == "waitlisted"
    with sessions() as s:  # b is given a clashing place directly (e.g. a dispatch offer)
        assign(s, other, b, AS.accepted)
    out, _ = _cancel(sessions, a, full)
    assert out.promoted_person_id == c


def test_self_cancel_cut_off(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        tid = _shift(s, w, start=NOW + timedelta(hours=3))
        p = person(s, "王丽")
    assert _signup(sessions, p, tid)[0].status == "accepted"
    late = NOW + timedelta(hours=1, minutes=1)  # 1 h 59 min before the start
    out, fx = _cancel(sessions, p, tid, now=late)
    assert out.status == "too_late" and not fx
    with sessions() as s:
        assert s.get(Task, tid).accepted_count == 1
    # a wider cut-off setting is honoured; the default 2 h allows cancelling at 2 h before
    out, _ = _cancel(sessions, p, tid, now=NOW + timedelta(minutes=30), policy=DispatchPolicy(cancel_cutoff_s=3 * 3600))
    assert out.status == "too_late"
    out, _ = _cancel(sessions, p, tid, now=NOW + timedelta(hours=1))
    assert out.status == "cancelled"
    assert _cancel(sessions, p, tid)[0].status == "not_found"


def test_signup_closed_and_not_eligible(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        past = _shift(s, w, start=NOW - timedelta(hours=1))
        skilled = _shift(s, w, required_skills=["first_aid"])
        dispatch = task(s, grid=w.grid3)
        ok = person(s, "王丽", skills={"first_aid": date(2027, 6, 30)})
        expired = person(s, "李强", skills={"first_aid": date(2026, 11, 30)})
        pending = person(s, "张敏", status="pending")
    assert _signup(sessions, ok, past)[0].status == "closed"
    assert _signup(sessions, ok, dispatch)[0].status == "closed"
    out, _ = _signup(sessions, expired, skilled)
    assert (out.status, out.missing_skills) == ("not_eligible", ["first_aid"])
    assert _signup(sessions, pending, skilled)[0].status == "not_eligible"
    assert _signup(sessions, ok, skilled)[0].status == "accepted"


def test_weekly_recurrence_expansion(sessions) -> None:  # type: ignore[no-untyped-def]
    first = datetime(2026, 12, 1, 9, 0, tzinfo=SH).astimezone(UTC)  # Tue 09:00
    with sessions() as s:
        w = build_world(s)
        tpl = _shift(s, w, start=first, hours=1.5, recurrence="WEEKLY:TU,FR", slots=3, required_skills=["first_aid"])
    with sessions() as s, s.begin():
        made = services.expand_recurrences(s, now=NOW, policy=DispatchPolicy(recurrence_horizon_days=10))
    with sessions() as s, s.begin():  # a second run adds nothing
        assert services.expand_recurrences(s, now=NOW, policy=DispatchPolicy(recurrence_horizon_days=10)) == []
    assert len(made) == 3
    with sessions() as s:
        rows = list(s.exec(select(Task).where(Task.series_id == tpl).order_by(Task.starts_at)))
        assert [r.starts_at.astimezone(SH).strftime("%a %d %H:%M") for r in rows] == [
            "Fri 04 09:00",
            "Tue 08 09:00",
            "Fri 11 09:00",
        ]
        assert all(r.ends_at - r.starts_at == timedelta(hours=1.5) for r in rows)
        assert all(r.slots == 3 and r.required_skills == ["first_aid"] and r.mode == TaskMode.signup for r in rows)


def test_understaffing_alert_once(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        soon = _shift(s, w, start=NOW + timedelta(hours=30), slots=3)
        later = _shift(s, w, start=NOW + timedelta(hours=60), slots=3)
        staffed = _shift(s, w, start=NOW + timedelta(hours=20), slots=1)
        town_c = coordinator(s, "吴协调", w.jiangbei)
        other_c = coordinator(s, "横店协调", w.hengdian)
        p = person(s, "王丽")
    assert _signup(sessions, p, staffed)[0].status == "accepted"
    fx = Effects()
    with sessions() as s, s.begin():
        assert services.check_understaffed(s, fx, now=NOW) == [soon]
    with sessions() as s, s.begin():
        assert services.check_understaffed(s, Effects(), now=NOW + timedelta(hours=1)) == []
    with sessions() as s:
        rows = list(s.exec(select(Delivery).where(Delivery.purpose == "understaffed")))
        assert [(r.person_id, r.dedupe_key) for r in rows] == [(town_c, f"understaffed:{soon}:{town_c}")]
        assert "还差3人" in rows[0].text and "缺人" in rows[0].text
        assert fx.deliveries == [rows[0].id]
        assert other_c not in {r.person_id for r in rows}
    # the later shift is alerted once it comes within 48 h
    with sessions() as s, s.begin():
        assert services.check_understaffed(s, Effects(), now=NOW + timedelta(hours=13)) == [later]
