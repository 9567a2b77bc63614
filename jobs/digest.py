"""Periodic summaries: the coordinators' daily digest (08:00) and volunteers' weekly hours
(Monday 09:00), both Asia/Shanghai (``redgrid cron`` pins TZ).

Each message is a Delivery whose dedupe key carries the local date / ISO week, so a cron tick
run twice (two cron processes by mistake, a retry) queues it once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import func
from sqlmodel import Session, select

from dispatcher.effects import Effects
from jobs import texts
from jobs.outbound import clock
from jobs.runtime import runtime
from models.outbox import queue_message
from models.settings import Settings
from models.tables import (
    Assignment,
    AssignmentStatus,
    GridUnit,
    Person,
    PersonStatus,
    Report,
    ReportStatus,
    Task,
    TaskMode,
    TaskStatus,
)

DONE = (AssignmentStatus.completed,)


def _subtree(session: Session, unit_id: int) -> list[int]:
    unit = session.get(GridUnit, unit_id)
    if unit is None:
        return []
    return [int(i) for i in session.exec(select(GridUnit.id).where(GridUnit.path.startswith(unit.path))).all()]  # type: ignore[attr-defined, arg-type]


def _local_day(now: datetime, tz: str) -> tuple[datetime, datetime]:
    z = ZoneInfo(tz)
    start = datetime.combine(now.astimezone(z).date(), datetime.min.time(), z)
    return start, start + timedelta(days=1)


def queue_daily_digests(session: Session, fx: Effects, *, now: datetime, settings: Settings) -> int:
    """One digest per active coordinator with a scope, about that scope."""
    day_start, day_end = _local_day(now, settings.tz)
    coordinators = session.exec(
        select(Person).where(Person.is_coordinator == True, Person.status == PersonStatus.active,  # noqa: E712
                             Person.coordinator_scope_id.is_not(None))  # type: ignore[union-attr]
    ).all()
    n = 0
    for c in coordinators:
        grids = _subtree(session, c.coordinator_scope_id)  # type: ignore[arg-type]
        scope = session.get(GridUnit, c.coordinator_scope_id)
        if not grids or scope is None:
            continue
        today = session.exec(
            select(func.count()).select_from(Task).where(
                Task.grid_id.in_(grids), Task.starts_at >= day_start, Task.starts_at < day_end,  # type: ignore[attr-defined, operator]
                Task.status != TaskStatus.cancelled)
        ).one()
        unfilled = session.exec(
            select(Task.slots, Task.accepted_count).where(
                Task.grid_id.in_(grids), Task.mode == TaskMode.signup, Task.status == TaskStatus.open,  # type: ignore[attr-defined]
                Task.starts_at >= now, Task.starts_at < now + timedelta(hours=48),  # type: ignore[operator]
                Task.accepted_count < Task.slots)
        ).all()
        reports = session.exec(
            select(func.count()).select_from(Report).where(
                Report.grid_id.in_(grids), Report.status == ReportStatus.open)  # type: ignore[attr-defined]
        ).one()
        text = texts.daily_digest(day=now, tz=settings.tz, scope=scope.name, today_tasks=int(today),
                                  unfilled=len(unfilled), missing=sum(s - a for s, a in unfilled),
                                  open_reports=int(reports))
        d = queue_message(session, person_id=c.id, purpose="digest", target=day_start.date().isoformat(),  # type: ignore[arg-type]
                          text=text)
        if d is not None:
            fx.deliveries.append(d.id)  # type: ignore[arg-type]
            n += 1
    return n


def queue_weekly_hours(session: Session, fx: Effects, *, now: datetime, settings: Settings) -> int:
    """Volunteers who served last week (Mon-Sun, local) hear their hours and the year's total."""
    z = ZoneInfo(settings.tz)
    today = now.astimezone(z).date()
    this_monday = datetime.combine(today - timedelta(days=today.weekday()), datetime.min.time(), z)
    last_monday = this_monday - timedelta(days=7)
    year_start = datetime.combine(today.replace(month=1, day=1), datetime.min.time(), z)
    done_at = func.coalesce(Assignment.checked_out_at, Assignment.responded_at)
    week = session.exec(
        select(Assignment.person_id, func.sum(Assignment.hours), func.count()).where(
            Assignment.status.in_(DONE), done_at >= last_monday, done_at < this_monday,  # type: ignore[attr-defined]
        ).group_by(Assignment.person_id)  # type: ignore[arg-type]
    ).all()
    iso = last_monday.date().isocalendar()
    n = 0
    for person_id, week_hours, tasks in week:
        person = session.get(Person, person_id)
        if person is None or person.status != PersonStatus.active or not person.is_volunteer:
            continue
        year = session.exec(
            select(func.coalesce(func.sum(Assignment.hours), 0.0)).where(
                Assignment.person_id == person_id, Assignment.status.in_(DONE),  # type: ignore[attr-defined]
                done_at >= year_start, done_at < this_monday)
        ).one()
        text = texts.weekly_hours(week_hours=float(week_hours or 0), year_hours=float(year or 0), tasks=int(tasks))
        d = queue_message(session, person_id=person_id, purpose="weekly_hours", target=f"{iso[0]}W{iso[1]:02d}",
                          text=text)
        if d is not None:
            fx.deliveries.append(d.id)  # type: ignore[arg-type]
            n += 1
    return n


def _run(queue_fn) -> int:  # type: ignore[no-untyped-def]
    from jobs.effects import apply

    rt = runtime()
    fx = Effects()
    with rt.sessions() as s, s.begin():
        n = int(queue_fn(s, fx, now=clock(rt), settings=rt.settings))
    apply(rt.redis, fx)
    return n


def daily_digest() -> int:
    """RQ cron job, 08:00 Asia/Shanghai."""
    return _run(queue_daily_digests)


def weekly_hours() -> int:
    """RQ cron job, Monday 09:00 Asia/Shanghai."""
    return _run(queue_weekly_hours)
