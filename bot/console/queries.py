"""Read-only views for the console pages, each limited to a coordinator's scope."""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from markupsafe import Markup
from sqlalchemy import func
from sqlmodel import Session, col, or_, select

from bot.console import svg
from bot.console.scope import Scope, person_filter, town_of_path
from dispatcher import services, shifts
from dispatcher.texts import KIND_NAMES, mask_phone
from models.settings import Settings
from models.tables import (
    AED,
    Assignment,
    AssignmentStatus,
    AuditEntry,
    Campaign,
    Delivery,
    GridUnit,
    Level,
    Person,
    PersonStatus,
    Task,
    TaskMode,
    TaskStatus,
)

AS = AssignmentStatus


@dataclass
class ShiftRow:
    task: Task
    fill_pct: int
    open_slots: int
    understaffed: bool
    town: str


def _towns(session: Session) -> dict[int, str]:
    return {int(u.id or 0): u.name for u in session.exec(select(GridUnit).where(GridUnit.level == Level.town))}


def _unit_paths(session: Session, scope: Scope) -> dict[int, str]:
    return {int(i or 0): p for i, p in session.exec(
        select(GridUnit.id, GridUnit.path).where(col(GridUnit.path).startswith(scope.path)))}


def town_name(paths: dict[int, str], towns: dict[int, str], unit_id: int | None) -> str:
    if unit_id is None or unit_id not in paths:
        return ""
    t = town_of_path(paths[unit_id])
    return towns.get(t, "") if t is not None else ""


def week_bounds(now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    d = now.astimezone(tz).date()
    monday = d - timedelta(days=d.weekday())
    start = datetime.combine(monday, time(0), tz)
    return start, start + timedelta(days=7)


def day_bounds(now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    start = datetime.combine(now.astimezone(tz).date(), time(0), tz)
    return start, start + timedelta(days=1)


def tasks_between(session: Session, scope: Scope, start: datetime, end: datetime) -> list[Task]:
    return list(session.exec(
        select(Task).where(col(Task.grid_id).in_(scope.units()), Task.status != TaskStatus.cancelled,
                           Task.starts_at < end, Task.ends_at > start)
        .order_by(col(Task.starts_at), col(Task.id))
    ))


def shift_rows(session: Session, scope: Scope, *, now: datetime, settings: Settings, days: int = 7,
               limit: int = 200) -> list[ShiftRow]:
    """Upcoming sign-up shifts with their fill; understaffed ones (the dispatcher's rule) first."""
    tasks = session.exec(
        select(Task).where(col(Task.grid_id).in_(scope.units()), Task.mode == TaskMode.signup,
                           col(Task.status).in_((TaskStatus.open, TaskStatus.filled)),
                           Task.starts_at > now, Task.starts_at <= now + timedelta(days=days))
        .order_by(col(Task.starts_at))
    ).all()
    paths, towns = _unit_paths(session, scope), _towns(session)
    rows = []
    for t in tasks:
        pct = round(100 * t.accepted_count / t.slots) if t.slots else 100
        short = shifts.understaffed(t.slots, t.accepted_count, t.starts_at, now,
                                    settings.dispatch.understaffed_alert_s)
        rows.append(ShiftRow(t, pct, shifts.open_slots(t.slots, t.accepted_count), short,
                             town_name(paths, towns, t.grid_id)))
    rows.sort(key=lambda r: (not r.understaffed, r.fill_pct, r.task.starts_at))
    return rows[:limit]


def active_per_town(session: Session, scope: Scope) -> list[tuple[str, int, int]]:
    """(town, active volunteers, all volunteers) for the towns in scope."""
    rows = session.exec(
        select(GridUnit.path, Person.status, func.count())
        .join(GridUnit, col(GridUnit.id) == col(Person.home_grid_id))
        .where(col(Person.is_volunteer), col(GridUnit.path).startswith(scope.path))
        .group_by(col(GridUnit.path), col(Person.status))
    ).all()
    towns = _towns(session)
    active: Counter[int] = Counter()
    total: Counter[int] = Counter()
    for path, status, n in rows:
        t = town_of_path(path)
        if t is None:
            continue
        total[t] += n
        if str(getattr(status, "value", status)) == PersonStatus.active.value:
            active[t] += n
    return sorted(((towns.get(t, str(t)), active[t], total[t]) for t in total), key=lambda r: -r[1])


def dashboard_map(session: Session, scope: Scope, *, now: datetime, settings: Settings) -> Markup:
    units = session.exec(select(GridUnit).where(col(GridUnit.path).startswith(scope.path))).all()
    pts = [svg.Point(u.lat, u.lng, u.name, u.level.value) for u in units]
    rows = shift_rows(session, scope, now=now, settings=settings, days=7)
    tasks = [svg.Point(r.task.lat, r.task.lng, f"{r.task.title} · {r.task.place} · {r.fill_pct}%",
                       "task_short" if r.understaffed else "task") for r in rows]
    dispatch = session.exec(
        select(Task).where(col(Task.grid_id).in_(scope.units()), Task.mode == TaskMode.dispatch,
                           Task.status == TaskStatus.open, Task.ends_at > now)
    ).all()
    tasks += [svg.Point(t.lat, t.lng, t.title, "task_short") for t in dispatch]
    aed_in: Any = col(AED.grid_id).in_(scope.units())
    if scope.city_wide:
        aed_in = or_(aed_in, col(AED.grid_id).is_(None))
    aeds = [svg.Point(a.lat, a.lng, a.name, "aed") for a in session.exec(select(AED).where(aed_in))]
    cells = session.exec(
        select(Person.h3).where(col(Person.is_volunteer), Person.status == PersonStatus.active, person_filter(scope))
    ).all()
    return svg.map_svg(pts, tasks, aeds, svg.density_cells(cells), title=f"{scope.name}地图")


@dataclass
class Dashboard:
    today: list[Task]
    week: list[Task]
    status: Any  # services.StatusView
    shifts: list[ShiftRow]
    towns: list[tuple[str, int, int]]
    map: Markup
    fill_today: dict[int, int]


def dashboard(session: Session, scope: Scope, *, now: datetime, settings: Settings) -> Dashboard:
    tz = ZoneInfo(settings.tz)
    d0, d1 = day_bounds(now, tz)
    w0, w1 = week_bounds(now, tz)
    today = tasks_between(session, scope, d0, d1)
    week = tasks_between(session, scope, w0, w1)
    status = services.coordinator_status(session, scope_grid_id=scope.unit_id, now=now)
    return Dashboard(today, week, status, shift_rows(session, scope, now=now, settings=settings),
                     active_per_town(session, scope), dashboard_map(session, scope, now=now, settings=settings),
                     {})


# --- tasks ------------------------------------------------------------------------------------


def task_list(session: Session, scope: Scope, *, now: datetime, show: str = "upcoming",
              limit: int = 300) -> list[Task]:
    stmt = select(Task).where(col(Task.grid_id).in_(scope.units()))
    if show == "past":
        stmt = stmt.where(Task.ends_at <= now).order_by(col(Task.starts_at).desc())
    elif show == "cancelled":
        stmt = stmt.where(Task.status == TaskStatus.cancelled).order_by(col(Task.starts_at).desc())
    else:
        stmt = stmt.where(Task.ends_at > now, Task.status != TaskStatus.cancelled).order_by(col(Task.starts_at))
    return list(session.exec(stmt.limit(limit)))


@dataclass
class RosterLine:
    assignment: Assignment
    name: str
    phone: str  # masked


def task_roster(session: Session, task_id: int) -> list[RosterLine]:
    rows = session.exec(
        select(Assignment, Person).join(Person, col(Person.id) == col(Assignment.person_id))
        .where(Assignment.task_id == task_id)
        .order_by(col(Assignment.status), col(Assignment.waitlist_pos), col(Assignment.id))
    ).all()
    return [RosterLine(a, p.name, mask_phone(p.phone) or "未留") for a, p in rows]


# --- people -----------------------------------------------------------------------------------


@dataclass
class PersonLine:
    person: Person
    phone: str
    town: str
    grid: str


def search_people(session: Session, scope: Scope, *, q: str = "", status: str = "", role: str = "",
                  offset: int = 0, limit: int = 50) -> tuple[list[PersonLine], int]:
    stmt = select(Person).where(person_filter(scope))
    q = q.strip()
    if q:
        like = f"%{q}%"
        conds = [col(Person.name).like(like), col(Person.openid) == q]
        if q.isdigit() and len(q) >= 4:
            conds.append(col(Person.phone).endswith(q))  # by the last digits, as on a masked list
        stmt = stmt.where(or_(*conds))
    if status:
        stmt = stmt.where(Person.status == status)
    if role in ("volunteer", "grid_worker", "coordinator"):
        stmt = stmt.where(getattr(Person, f"is_{role}") == True)  # noqa: E712
    total = session.exec(select(func.count()).select_from(stmt.subquery())).one()
    people = session.exec(stmt.order_by(col(Person.id)).offset(offset).limit(limit)).all()
    paths, towns = _unit_paths(session, scope), _towns(session)
    names = {int(u.id or 0): u.name for u in session.exec(
        select(GridUnit).where(col(GridUnit.id).in_([p.home_grid_id for p in people if p.home_grid_id])))}
    return [PersonLine(p, mask_phone(p.phone) or "未留", town_name(paths, towns, p.home_grid_id),
                       names.get(p.home_grid_id or 0, "")) for p in people], int(total)


def audit_for(session: Session, *, entity: str, entity_id: int, limit: int = 20) -> list[AuditEntry]:
    return list(session.exec(
        select(AuditEntry).where(AuditEntry.entity == entity, AuditEntry.entity_id == entity_id)
        .order_by(col(AuditEntry.at).desc()).limit(limit)
    ))


# --- campaigns --------------------------------------------------------------------------------


def campaign_progress(session: Session, camp: Campaign) -> dict[str, Any]:
    """The campaign's counters and its rows by status, straight from the database."""
    rows = session.exec(
        select(Delivery.status, func.count()).where(Delivery.campaign_id == camp.id).group_by(col(Delivery.status))
    ).all()
    by_status = {str(getattr(s, "value", s)): int(n) for s, n in rows}
    done = by_status.get("sent", 0) + by_status.get("failed", 0) + by_status.get("deferred", 0)
    targeted = camp.targeted or sum(v for k, v in by_status.items() if k != "cancelled")
    return {
        "id": camp.id, "status": camp.status.value, "targeted": targeted, "sent": by_status.get("sent", 0),
        "deferred": by_status.get("deferred", 0), "failed": by_status.get("failed", 0),
        "pending": by_status.get("pending", 0) + by_status.get("sending", 0), "capped": camp.capped,
        "cancelled": by_status.get("cancelled", 0),
        "pct": round(100 * done / targeted) if targeted else (100 if camp.status.value == "done" else 0),
        "finished": camp.status.value in ("done", "cancelled"),
    }


# --- charts -----------------------------------------------------------------------------------


def _month_key(dt: datetime, tz: ZoneInfo) -> str:
    local = dt.astimezone(tz)
    return f"{local.year}-{local.month:02d}"


def last_months(now: datetime, tz: ZoneInfo, n: int = 12) -> list[str]:
    local = now.astimezone(tz)
    y, m = local.year, local.month
    out = []
    for _ in range(n):
        out.append(f"{y}-{m:02d}")
        m -= 1
        if m == 0:
            y, m = y - 1, 12
    return out[::-1]


def hours_per_month(session: Session, scope: Scope, *, now: datetime, tz: ZoneInfo) -> list[tuple[str, float]]:
    months = last_months(now, tz)
    rows = session.exec(
        select(Assignment.checked_out_at, Assignment.hours)
        .join(Task, col(Task.id) == col(Assignment.task_id))
        .where(Assignment.status == AS.completed, col(Task.grid_id).in_(scope.units()),
               col(Assignment.checked_out_at).is_not(None))
    ).all()
    sums: dict[str, float] = defaultdict(float)
    for at, hours in rows:
        if at is None:
            continue
        sums[_month_key(at, tz)] += float(hours or 0)
    return [(m, round(sums.get(m, 0.0), 1)) for m in months]


def fill_per_kind(session: Session, scope: Scope, *, now: datetime) -> list[tuple[str, float]]:
    rows = session.exec(
        select(Task.kind, func.sum(Task.accepted_count), func.sum(Task.slots))
        .where(col(Task.grid_id).in_(scope.units()), Task.mode == TaskMode.signup,
               Task.status != TaskStatus.cancelled, Task.starts_at >= now - timedelta(days=90),
               Task.starts_at <= now + timedelta(days=14))
        .group_by(col(Task.kind))
    ).all()
    out = [(KIND_NAMES.get(str(getattr(k, "value", k)), str(k)), round(100 * (a or 0) / s, 0) if s else 0.0)
           for k, a, s in rows]
    return sorted(out, key=lambda r: r[1])


RESPONSE_BUCKETS = ((5, "≤5分"), (15, "5–15分"), (30, "15–30分"), (60, "30–60分"), (None, ">60分"))


def response_times(session: Session, scope: Scope) -> tuple[list[tuple[str, float]], float | None]:
    """Minutes from a dispatch task's creation to its first acceptance, bucketed; and the median."""
    rows = session.exec(
        select(Task.id, Task.created_at, func.min(Assignment.responded_at))
        .join(Assignment, col(Assignment.task_id) == col(Task.id))
        .where(col(Task.grid_id).in_(scope.units()), Task.mode == TaskMode.dispatch,
               col(Assignment.status).in_((AS.accepted, AS.checked_in, AS.completed)),
               col(Assignment.responded_at).is_not(None))
        .group_by(col(Task.id), col(Task.created_at))
    ).all()
    minutes = [max(0.0, (first - created).total_seconds() / 60) for _tid, created, first in rows if first]
    counts = [0] * len(RESPONSE_BUCKETS)
    for m in minutes:
        for i, (limit, _label) in enumerate(RESPONSE_BUCKETS):
            if limit is None or m <= limit:
                counts[i] += 1
                break
    median = round(statistics.median(minutes), 1) if minutes else None
    return [(label, float(c)) for (_l, label), c in zip(RESPONSE_BUCKETS, counts, strict=True)], median


def charts(session: Session, scope: Scope, *, now: datetime, tz: ZoneInfo) -> dict[str, Markup | float | None]:
    hours = hours_per_month(session, scope, now=now, tz=tz)
    fill = fill_per_kind(session, scope, now=now)
    resp, median = response_times(session, scope)
    return {
        "hours": svg.bar_chart("每月服务时长（小时）", [m[5:] + "月" for m, _ in hours], [v for _, v in hours],
                               width=720),
        "fill": svg.bar_chart("各类班次报满率（近90天及未来14天）", [k for k, _ in fill], [v for _, v in fill],
                              unit="%", max_value=100, color="#1f5fbf", width=720),
        "response": svg.bar_chart("派单响应时间（首位志愿者接单）", [k for k, _ in resp], [v for _, v in resp],
                                  color="#e07b00", width=720),
        "median": median,
    }
