"""The dispatcher's service layer: queries and guarded updates around the pure rules.

Every function takes the Session first and keyword-only arguments, an aware-UTC ``now``, and
(when it changes anything) an ``Effects`` into which it records what must happen after
commit. The caller owns the transaction: it commits, then hands ``fx`` to
``jobs.effects.apply``. Nothing here touches Redis or RQ.

Capacity is kept by one guarded statement, ``UPDATE task SET accepted_count =
accepted_count + 1 WHERE id = :id AND accepted_count < slots``, whose row count says
whether a place was taken. On PostgreSQL the row lock makes concurrent updates queue and
re-check the WHERE clause; on SQLite the engine begins every transaction with BEGIN
IMMEDIATE, so writers are serialised. The task row is always updated *before* any
assignment row, so two acceptors never hold locks in opposite orders.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import cache
from typing import Any

from sqlalchemy import bindparam, func, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from dispatcher import places, shifts, texts, waves
from dispatcher.effects import Effects
from dispatcher.geo import cell
from dispatcher.index import VolunteerIndex
from dispatcher.matching import (
    LOCAL_TZ,
    Facts,
    Ranked,
    TaskSpec,
    Volunteer,
    geodesic_m,
    haversine_m,
    missing_skills,
    week_start,
)
from models.db import UTCDateTime
from models.outbox import queue_message
from models.settings import DispatchPolicy
from models.tables import (
    Assignment,
    AssignmentStatus,
    Certificate,
    GridUnit,
    Level,
    Person,
    PersonStatus,
    Report,
    ReportStatus,
    Task,
    TaskKind,
    TaskMode,
    TaskStatus,
    Urgency,
)

AS = AssignmentStatus
ACTIVE_STATUSES = (AS.accepted, AS.checked_in)  # holding a place right now
COMMITTED = (AS.accepted, AS.checked_in, AS.completed)  # counts toward load and continuity
UPCOMING = (AS.accepted, AS.waitlisted, AS.checked_in)
CLOSED_TASK = (TaskStatus.cancelled, TaskStatus.done)

# report category -> (task kind, lowest urgency)
CATEGORY_KINDS: dict[str, tuple[TaskKind, Urgency]] = {
    "独居老人帮扶": (TaskKind.elderly_visit, Urgency.routine),
    "疑似走失老人": (TaskKind.dementia_outreach, Urgency.urgent),
    "爱心冰柜缺货": (TaskKind.fridge_restock, Urgency.routine),
    "AED故障": (TaskKind.other, Urgency.routine),
    "其他": (TaskKind.other, Urgency.routine),
}
_URGENCY_ORDER = {Urgency.routine: 0, Urgency.urgent: 1, Urgency.emergency: 2}


def _policy(policy: DispatchPolicy | None) -> DispatchPolicy:
    return policy if policy is not None else DispatchPolicy()


# --- results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShiftView:
    task: Shift
    distance_m: float | None
    open_slots: int
    waitlist: int
    my_status: str | None

    @property
    def place(self) -> str:
        return self.task.place


@dataclass(frozen=True)
class SignupOutcome:
    status: str  # accepted | waitlisted | already | overlap | closed | not_eligible
    task: Task | None = None
    waitlist_pos: int | None = None
    clash: Task | None = None
    missing_skills: list[str] = field(default_factory=list)
    assignment_id: int | None = None


@dataclass(frozen=True)
class CancelOutcome:
    status: str  # cancelled | too_late | not_found
    task: Task | None = None
    promoted_person_id: int | None = None
    was: str | None = None  # the assignment's status before: accepted | waitlisted | offered


@dataclass(frozen=True)
class OfferOutcome:
    status: str  # accepted | declined | full | expired | not_offered | already | declined_before
    task: Task | None = None
    contact: Person | None = None
    assignment_id: int | None = None


@dataclass(frozen=True)
class CheckOutcome:
    status: str  # checked_in | checked_out | already | nothing | too_far
    assignment: Assignment | None = None
    task: Task | None = None
    distance_m: float | None = None
    hours: float = 0.0
    hours_year: float = 0.0


@dataclass(frozen=True)
class MySummary:
    upcoming: list[tuple[Assignment, Task]]
    offers: list[tuple[Assignment, Task]]
    hours_year: float


@dataclass(frozen=True)
class ReportLine:
    report: Report
    task: Task | None
    age: timedelta


@dataclass(frozen=True)
class TaskLine:
    task: Task
    accepted: int
    checked_in: int
    waitlist: int


@dataclass(frozen=True)
class StatusView:
    open_reports: list[ReportLine]
    unfilled: list[TaskLine]
    today: list[TaskLine]


@dataclass(frozen=True)
class WaveOutcome:
    status: str  # offered | waiting | exhausted | stopped | stale | skipped
    wave: int = 0
    radius_m: float = 0.0
    offered: list[int] = field(default_factory=list)  # person ids, best first
    expired: int = 0


# --- small queries --------------------------------------------------------------------------


def _units(session: Session, grid_id: int | None) -> tuple[int, ...]:
    """Ancestor GridUnit ids, root first, ending with ``grid_id`` itself."""
    if grid_id is None:
        return ()
    unit = session.get(GridUnit, grid_id)
    if unit is None:
        return (grid_id,)
    return places.path_ids(unit)


def _ancestors(session: Session, grid_id: int) -> list[GridUnit]:
    return places.ancestor_chain(session, grid_id)


def _town(session: Session, grid_id: int) -> GridUnit | None:
    return next((u for u in _ancestors(session, grid_id) if u.level == Level.town), None)


def place_name(session: Session, task: Task) -> str:
    """What a person recognises: the task's place, else its village (or nearest named unit)."""
    if task.place:
        return task.place
    units = _ancestors(session, task.grid_id)
    for level in (Level.village, Level.grid, Level.town, Level.city):
        for u in units:
            if u.level == level:
                return u.name
    return ""


def coordinators_for(session: Session, grid_id: int) -> list[Person]:
    """Coordinators whose scope holds the grid (its town, village, the grid, or the city)."""
    ids = list(_units(session, grid_id))
    if not ids:
        return []
    return list(
        session.exec(
            select(Person)
            .where(Person.is_coordinator, col(Person.coordinator_scope_id).in_(ids))
            .where(Person.status != PersonStatus.left)
            .order_by(col(Person.id))
        )
    )


def _assignment(session: Session, task_id: int, person_id: int) -> Assignment | None:
    return session.exec(
        select(Assignment).where(Assignment.task_id == task_id, Assignment.person_id == person_id)
    ).first()


def _queue(session: Session, fx: Effects, **kw: Any) -> None:
    row = queue_message(session, **kw)
    if row is not None and row.id is not None:
        fx.deliveries.append(row.id)


def _take_slot(session: Session, task_id: int) -> bool:
    res = session.execute(
        update(Task)
        .where(col(Task.id) == task_id, col(Task.accepted_count) < col(Task.slots))
        .values(accepted_count=col(Task.accepted_count) + 1)
        .execution_options(synchronize_session=False)
    )
    return res.rowcount == 1  # type: ignore[attr-defined]


def _give_slot(session: Session, task_id: int) -> None:
    session.execute(
        update(Task)
        .where(col(Task.id) == task_id, col(Task.accepted_count) > 0)
        .values(accepted_count=col(Task.accepted_count) - 1)
        .execution_options(synchronize_session=False)
    )


def _set_fill_status(session: Session, task: Task) -> None:
    """After a guarded change: re-read the count and flip open <-> filled to match."""
    session.refresh(task)
    if task.status == TaskStatus.open and task.accepted_count >= task.slots:
        task.status = TaskStatus.filled
    elif task.status == TaskStatus.filled and task.accepted_count < task.slots:
        task.status = TaskStatus.open
    session.add(task)
    session.flush()


def _windows(
    session: Session, person_id: int, statuses: Sequence[AssignmentStatus], exclude_task: int
) -> list[Task]:
    return list(
        session.exec(
            select(Task)
            .join(Assignment, col(Assignment.task_id) == col(Task.id))
            .where(Assignment.person_id == person_id, col(Assignment.status).in_(statuses))
            .where(Task.id != exclude_task, col(Task.status).not_in(CLOSED_TASK))
        )
    )


def _clash(session: Session, person_id: int, task: Task, statuses: Sequence[AssignmentStatus]) -> Task | None:
    tasks = {t.id: t for t in _windows(session, person_id, statuses, int(task.id or 0))}
    hit = shifts.clash(
        task.starts_at,
        task.ends_at,
        (shifts.Window(int(t.id or 0), t.starts_at, t.ends_at) for t in tasks.values()),
    )
    return tasks[hit.id] if hit else None


def _waitlist_positions(session: Session, task_id: int) -> list[int | None]:
    return list(
        session.exec(
            select(Assignment.waitlist_pos).where(
                Assignment.task_id == task_id, Assignment.status == AS.waitlisted
            )
        )
    )


def hours_year(session: Session, *, person_id: int, now: datetime) -> float:
    start, end = shifts.year_bounds(now)
    total = session.connection().execute(_hours_between(), {"pid": person_id, "start": start, "end": end}).scalar()
    return round(float(total or 0.0), 1)


@cache
def _hours_between() -> Any:
    return select(func.coalesce(func.sum(Assignment.hours), 0.0)).where(
        col(Assignment.person_id) == bindparam("pid"),
        col(Assignment.status) == AS.completed,
        col(Assignment.checked_out_at) >= bindparam("start", type_=UTCDateTime()),
        col(Assignment.checked_out_at) < bindparam("end", type_=UTCDateTime()),
    )


# --- shifts ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Shift:
    """A sign-up shift as lists show it: a plain, immutable copy of the task's row (safe to
    share between threads and to keep after its session closed; see ShiftBoard), its place
    the one people recognise (``place_name``)."""

    id: int
    title: str
    place: str
    grid_id: int
    starts_at: datetime
    ends_at: datetime
    lat: float
    lng: float
    slots: int
    accepted_count: int


@dataclass(frozen=True)
class ShiftBoard:
    """The coming days' open sign-up shifts with their waitlists: everything in a shift list
    that is the same for every reader. A web process may reuse one for a moment
    (bot/engine.py, ``READ_CACHE_S``); ``open_shifts`` adds the reader's own part."""

    days: int
    shifts: tuple[Shift, ...]
    waitlists: dict[int, int]


def shift_board(session: Session, *, now: datetime, days: int = 7) -> ShiftBoard:
    tasks = list(
        session.exec(
            select(Task).where(
                Task.mode == TaskMode.signup,
                col(Task.status).in_((TaskStatus.open, TaskStatus.filled)),
                Task.starts_at > now,
                Task.starts_at <= now + timedelta(days=days),
            )
        )
    )
    ids = [int(t.id or 0) for t in tasks]
    waitlists: dict[int, int] = dict(
        session.exec(  # type: ignore[arg-type]
            select(Assignment.task_id, func.count())
            .where(col(Assignment.task_id).in_(ids), Assignment.status == AS.waitlisted)
            .group_by(col(Assignment.task_id))
        ).all()
    ) if ids else {}
    shifts_ = tuple(
        Shift(int(t.id or 0), t.title, place_name(session, t), t.grid_id, t.starts_at, t.ends_at, t.lat,
              t.lng, t.slots, t.accepted_count)
        for t in tasks
    )
    return ShiftBoard(days, shifts_, waitlists)


def open_shifts(
    session: Session,
    *,
    person: Person,
    now: datetime,
    days: int = 7,
    lat: float | None = None,
    lng: float | None = None,
    limit: int = 50,
    board: ShiftBoard | None = None,
) -> list[ShiftView]:
    """Upcoming sign-up shifts (full ones too: their waitlist is open), nearest first.

    ``board``: a recent ``shift_board`` to reuse (taken for at least ``days``); shifts that
    have started since it was taken are left out."""
    if board is None or board.days < days:
        board = shift_board(session, now=now, days=days)
    until = now + timedelta(days=days)
    tasks = [t for t in board.shifts if now < t.starts_at <= until]
    if not tasks:
        return []
    if lat is None or lng is None:
        lat, lng = person.lat, person.lng
    ranked = _nearest_tasks(tasks, lat, lng, limit)
    ids = [t.id for _d, t in ranked]
    mine: dict[int, str] = {}
    if person.id is not None:
        for task_id, status in session.connection().execute(_my_statuses(), {"pid": person.id, "ids": ids}):
            mine[task_id] = str(status.value if hasattr(status, "value") else status)
    return [
        ShiftView(
            task=t,
            distance_m=d,
            open_slots=shifts.open_slots(t.slots, t.accepted_count),
            waitlist=board.waitlists.get(t.id, 0),
            my_status=mine.get(t.id),
        )
        for d, t in ranked
    ]


@cache
def _my_statuses() -> Any:
    """A person's assignment status per task, for some tasks (built once: building the
    expression per call cost more than running it)."""
    return select(col(Assignment.task_id), col(Assignment.status)).where(
        col(Assignment.person_id) == bindparam("pid"),
        col(Assignment.task_id).in_(bindparam("ids", expanding=True)),
    )


# Haversine is within 0.6% of the WGS-84 geodesic either way, so a row whose haversine is
# over 2% beyond the limit-th smallest cannot be among the limit nearest by geodesic.
_HAVERSINE_SLACK = 1.02


def _nearest_tasks(
    tasks: list[Shift], lat: float | None, lng: float | None, limit: int
) -> list[tuple[float | None, Shift]]:
    """The ``limit`` first tasks by (geodesic distance, start, id), with their distances.

    The same list as computing every geodesic and sorting, but the (slow, ~0.15 ms) geodesic
    is computed only for the rows a cheap haversine cannot rule out: a week of shifts is
    dozens of rows and a reply shows five.
    """
    if lat is None or lng is None:
        order = sorted(tasks, key=lambda t: (t.starts_at, t.id))
        return [(None, t) for t in order[:limit]]
    rows = tasks
    if limit < len(tasks):
        near = sorted((haversine_m(lat, lng, t.lat, t.lng), i) for i, t in enumerate(tasks))
        edge = near[limit - 1][0] * _HAVERSINE_SLACK + 1.0 if limit > 0 else -1.0
        rows = [tasks[i] for h, i in near if h <= edge]
    exact = [(geodesic_m(lat, lng, t.lat, t.lng), t) for t in rows]
    exact.sort(key=lambda dt: (dt[0], dt[1].starts_at, dt[1].id))
    return list(exact[:limit])


def sign_up(
    session: Session,
    fx: Effects,
    *,
    person_id: int,
    task_id: int,
    now: datetime,
    policy: DispatchPolicy | None = None,
) -> SignupOutcome:
    task = session.get(Task, task_id)
    if task is None or task.mode != TaskMode.signup or task.status in (*CLOSED_TASK, TaskStatus.exhausted):
        return SignupOutcome("closed", task)
    if task.starts_at <= now:
        return SignupOutcome("closed", task)
    person = session.get(Person, person_id)
    if person is None or not person.is_volunteer or person.status != PersonStatus.active:
        return SignupOutcome("not_eligible", task)
    certs = [
        (c.skill, c.expires_on)
        for c in session.exec(select(Certificate).where(Certificate.person_id == person_id))
    ]
    missing = missing_skills(certs, task.required_skills or [], task.starts_at.astimezone(LOCAL_TZ).date())
    if missing:
        return SignupOutcome("not_eligible", task, missing_skills=missing)
    existing = _assignment(session, task_id, person_id)
    if existing is not None and existing.status in (*UPCOMING, AS.completed):
        pos = None
        if existing.status == AS.waitlisted and existing.waitlist_pos is not None:
            pos = shifts.waitlist_rank(existing.waitlist_pos, _waitlist_positions(session, task_id))
        return SignupOutcome("already", task, waitlist_pos=pos, assignment_id=existing.id)
    other = _clash(session, person_id, task, UPCOMING)
    if other is not None:
        return SignupOutcome("overlap", task, clash=other)

    row = existing or Assignment(task_id=task_id, person_id=person_id, status=AS.accepted)
    took = _take_slot(session, task_id)
    if took:
        row.status, row.waitlist_pos = AS.accepted, None
    else:
        # Serialise waitlist numbering on this task (a no-op lock on SQLite, which is already
        # serialised by BEGIN IMMEDIATE).
        session.execute(select(Task.id).where(Task.id == task_id).with_for_update())
        row.status = AS.waitlisted
        row.waitlist_pos = shifts.next_waitlist_pos(_waitlist_positions(session, task_id))
    row.responded_at = now
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:  # the same person's second message raced the first
        if took:
            _give_slot(session, task_id)
        session.refresh(task)
        return SignupOutcome("already", task)
    _set_fill_status(session, task)
    fx.assignments.append(int(row.id or 0))
    if took:
        return SignupOutcome("accepted", task, assignment_id=row.id)
    rank = shifts.waitlist_rank(int(row.waitlist_pos or 0), _waitlist_positions(session, task_id))
    return SignupOutcome("waitlisted", task, waitlist_pos=rank, assignment_id=row.id)


def _promote(session: Session, fx: Effects, task: Task, now: datetime) -> int | None:
    """Fill freed places from the waitlist, in order; the promoted person is told."""
    first: int | None = None
    waiting = list(
        session.exec(
            select(Assignment)
            .where(Assignment.task_id == task.id, Assignment.status == AS.waitlisted)
            .order_by(col(Assignment.waitlist_pos), col(Assignment.id))
            .with_for_update()
        )
    )
    for a in waiting:
        if _clash(session, a.person_id, task, ACTIVE_STATUSES) is not None:
            continue  # took an overlapping place meanwhile: stays queued for this one
        if not _take_slot(session, int(task.id or 0)):
            break
        a.status, a.waitlist_pos, a.responded_at = AS.accepted, None, now
        session.add(a)
        session.flush()
        fx.assignments.append(int(a.id or 0))
        _queue(
            session,
            fx,
            person_id=a.person_id,
            purpose="promoted",
            target=int(task.id or 0),
            text=texts.promoted(
                task_id=int(task.id or 0),
                title=task.title,
                place=place_name(session, task),
                starts_at=task.starts_at,
                ends_at=task.ends_at,
                now=now,
            ),
        )
        first = first if first is not None else a.person_id
    _set_fill_status(session, task)
    return first


def cancel(
    session: Session,
    fx: Effects,
    *,
    person_id: int,
    task_id: int,
    now: datetime,
    policy: DispatchPolicy | None = None,
) -> CancelOutcome:
    policy = _policy(policy)
    task = session.get(Task, task_id)
    a = _assignment(session, task_id, person_id)
    if task is None or a is None or a.status not in (AS.accepted, AS.waitlisted, AS.offered):
        return CancelOutcome("not_found", task)
    was = str(a.status.value)
    if (
        a.status == AS.accepted
        and task.mode == TaskMode.signup
        and not shifts.can_self_cancel(task.starts_at, now, policy.cancel_cutoff_s)
    ):
        return CancelOutcome("too_late", task, was=was)
    promoted: int | None = None
    if a.status == AS.accepted:
        res = session.execute(
            update(Assignment)
            .where(col(Assignment.id) == a.id, Assignment.status == AS.accepted)
            .values(status=AS.cancelled, responded_at=now)
            .execution_options(synchronize_session=False)
        )
        if res.rowcount != 1:  # type: ignore[attr-defined]
            return CancelOutcome("not_found", task)
        session.refresh(a)
        _give_slot(session, task_id)
        _set_fill_status(session, task)
        if task.mode == TaskMode.signup:
            promoted = _promote(session, fx, task, now)
        elif task.status == TaskStatus.open and now <= task.ends_at:  # find someone else
            fx.waves.append((task_id, task.wave + 1, now))
    else:
        a.status = AS.cancelled if a.status == AS.waitlisted else AS.declined
        a.responded_at = now
        session.add(a)
        session.flush()
    fx.assignments.append(int(a.id or 0))
    return CancelOutcome("cancelled", task, promoted_person_id=promoted, was=was)


# --- offers ----------------------------------------------------------------------------------


def _contact(session: Session, task: Task) -> Person | None:
    return session.get(Person, task.contact_id) if task.contact_id else None


def accept_offer(
    session: Session,
    fx: Effects,
    *,
    person_id: int,
    task_id: int,
    now: datetime,
    policy: DispatchPolicy | None = None,
) -> OfferOutcome:
    task = session.get(Task, task_id)
    a = _assignment(session, task_id, person_id)
    if task is None or a is None:
        return OfferOutcome("not_offered", task)
    if a.status in (AS.accepted, AS.checked_in, AS.completed, AS.waitlisted):
        return OfferOutcome("already", task, _contact(session, task), a.id)
    if a.status == AS.declined:
        return OfferOutcome("declined_before", task, assignment_id=a.id)
    if a.status == AS.withdrawn:
        session.refresh(task)
        full = task.accepted_count >= task.slots
        return OfferOutcome("full" if full else "expired", task, assignment_id=a.id)
    if a.status != AS.offered:
        return OfferOutcome("expired" if a.status == AS.expired else "not_offered", task, assignment_id=a.id)
    if (a.expires_at is not None and a.expires_at <= now) or task.status in (*CLOSED_TASK,):
        a.status = AS.expired
        session.add(a)
        session.flush()
        return OfferOutcome("expired", task, assignment_id=a.id)

    # Task row first (the capacity guard), then the assignment: one lock order for all.
    if not _take_slot(session, task_id):
        session.execute(
            update(Assignment)
            .where(col(Assignment.id) == a.id, Assignment.status == AS.offered)
            .values(status=AS.withdrawn, responded_at=now)
            .execution_options(synchronize_session=False)
        )
        session.refresh(a)
        session.refresh(task)
        return OfferOutcome("full", task, assignment_id=a.id)
    res = session.execute(
        update(Assignment)
        .where(col(Assignment.id) == a.id, Assignment.status == AS.offered)
        .values(status=AS.accepted, responded_at=now)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        # this person's own second "接受" won the race: give the place back
        _give_slot(session, task_id)
        session.refresh(a)
        session.refresh(task)
        return OfferOutcome("already", task, _contact(session, task), a.id)
    session.refresh(a)
    if task.status == TaskStatus.exhausted:
        task.status = TaskStatus.open  # a late accept after the alert still counts
    _set_fill_status(session, task)
    if task.accepted_count >= task.slots:
        # full: take back the offers nobody answered
        session.execute(
            update(Assignment)
            .where(Assignment.task_id == task_id, Assignment.status == AS.offered)
            .values(status=AS.withdrawn)
            .execution_options(synchronize_session=False)
        )
    fx.assignments.append(int(a.id or 0))
    _notify_reporter_taken(session, fx, task, now)
    return OfferOutcome("accepted", task, _contact(session, task), a.id)


def _names(session: Session, task_id: int, statuses: Sequence[AssignmentStatus]) -> list[str]:
    return list(
        session.exec(
            select(Person.name)
            .join(Assignment, col(Assignment.person_id) == col(Person.id))
            .where(Assignment.task_id == task_id, col(Assignment.status).in_(statuses))
            .order_by(col(Assignment.responded_at), col(Assignment.id))
        )
    )


def _notify_reporter_taken(session: Session, fx: Effects, task: Task, now: datetime) -> None:
    if task.report_id is None:
        return
    report = session.get(Report, task.report_id)
    if report is None:
        return
    if report.status == ReportStatus.open:
        report.status = ReportStatus.taken
        session.add(report)
        session.flush()
    names = _names(session, int(task.id or 0), (AS.accepted, AS.checked_in, AS.completed))
    _queue(
        session,
        fx,
        person_id=report.reporter_id,
        purpose="report_taken",
        target=int(report.id or 0),
        text=texts.report_taken(report_id=int(report.id or 0), names=names, by=task.ends_at, now=now),
    )
    if task.slots > 1 and task.accepted_count >= task.slots:
        _queue(
            session,
            fx,
            person_id=report.reporter_id,
            purpose="report_filled",
            target=int(report.id or 0),
            text=texts.report_filled(report_id=int(report.id or 0), names=names),
        )


def _open_offers(session: Session, task_id: int, now: datetime) -> int:
    return int(
        session.exec(
            select(func.count())
            .select_from(Assignment)
            .where(Assignment.task_id == task_id, Assignment.status == AS.offered)
            .where(col(Assignment.expires_at) > now)
        ).one()
    )


def decline_offer(
    session: Session,
    fx: Effects,
    *,
    person_id: int,
    task_id: int,
    now: datetime,
    policy: DispatchPolicy | None = None,
) -> OfferOutcome:
    task = session.get(Task, task_id)
    a = _assignment(session, task_id, person_id)
    if task is None or a is None:
        return OfferOutcome("not_offered", task)
    if a.status == AS.declined:
        return OfferOutcome("declined_before", task, assignment_id=a.id)
    if a.status in (AS.accepted, AS.checked_in, AS.completed, AS.waitlisted):
        return OfferOutcome("already", task, assignment_id=a.id)  # a place: that is 取消
    if a.status != AS.offered or (a.expires_at is not None and a.expires_at <= now):
        return OfferOutcome("expired", task, assignment_id=a.id)
    res = session.execute(
        update(Assignment)
        .where(col(Assignment.id) == a.id, Assignment.status == AS.offered)
        .values(status=AS.declined, responded_at=now)
        .execution_options(synchronize_session=False)
    )
    session.refresh(a)
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return OfferOutcome("expired", task, assignment_id=a.id)
    _next_wave_if_idle(session, fx, task, now)
    return OfferOutcome("declined", task, assignment_id=a.id)


def _next_wave_if_idle(session: Session, fx: Effects, task: Task, now: datetime) -> None:
    """Everyone in the wave answered no: ask the next wave now rather than at its TTL."""
    session.refresh(task)
    if (
        task.mode == TaskMode.dispatch
        and task.status == TaskStatus.open
        and task.accepted_count < task.slots
        and _open_offers(session, int(task.id or 0), now) == 0
    ):
        fx.waves.append((int(task.id or 0), task.wave + 1, now))


def withdraw_offers(session: Session, fx: Effects, *, person_id: int, now: datetime) -> int:
    """On unsubscribe: take back the person's open offers; waves continue without them."""
    rows = list(
        session.exec(
            select(Assignment).where(Assignment.person_id == person_id, Assignment.status == AS.offered)
        )
    )
    for a in rows:
        a.status, a.responded_at = AS.withdrawn, now
        session.add(a)
    session.flush()
    for task_id in sorted({a.task_id for a in rows}):
        task = session.get(Task, task_id)
        if task is not None:
            _next_wave_if_idle(session, fx, task, now)
    return len(rows)


# --- check in / out --------------------------------------------------------------------------


def check_in(
    session: Session,
    fx: Effects,
    *,
    person_id: int,
    now: datetime,
    lat: float | None = None,
    lng: float | None = None,
    policy: DispatchPolicy | None = None,
) -> CheckOutcome:
    policy = _policy(policy)
    early = timedelta(seconds=policy.checkin_early_s)
    rows = session.exec(
        select(Assignment, Task)
        .join(Task, col(Task.id) == col(Assignment.task_id))
        .where(Assignment.person_id == person_id, Assignment.status == AS.accepted)
        .where(Task.starts_at <= now + early, Task.ends_at >= now)
        .where(col(Task.status).not_in(CLOSED_TASK))
        .order_by(col(Task.starts_at), col(Task.id))
    ).all()
    if not rows:
        current = session.exec(
            select(Assignment, Task)
            .join(Task, col(Task.id) == col(Assignment.task_id))
            .where(Assignment.person_id == person_id, Assignment.status == AS.checked_in)
            .order_by(col(Assignment.checked_in_at).desc())
        ).first()
        if current is not None:
            return CheckOutcome("already", current[0], current[1])
        return CheckOutcome("nothing")
    a, t = rows[0]
    d = geodesic_m(lat, lng, t.lat, t.lng) if lat is not None and lng is not None else None
    if d is not None and d > policy.checkin_radius_m:
        return CheckOutcome("too_far", a, t, d)
    a.status, a.checked_in_at = AS.checked_in, now
    session.add(a)
    session.flush()
    fx.assignments.append(int(a.id or 0))
    return CheckOutcome("checked_in", a, t, d)


def check_out(
    session: Session,
    fx: Effects,
    *,
    person_id: int,
    now: datetime,
    policy: DispatchPolicy | None = None,
) -> CheckOutcome:
    policy = _policy(policy)
    row = session.exec(
        select(Assignment, Task)
        .join(Task, col(Task.id) == col(Assignment.task_id))
        .where(Assignment.person_id == person_id, Assignment.status == AS.checked_in)
        .order_by(col(Assignment.checked_in_at).desc())
    ).first()
    if row is None:
        return CheckOutcome("nothing")
    a, t = row
    a.hours = shifts.credited_hours(
        a.checked_in_at or now, now, t.starts_at, t.ends_at, policy.checkout_extra_h
    )
    a.status, a.checked_out_at = AS.completed, now
    session.add(a)
    session.flush()
    fx.assignments.append(int(a.id or 0))
    _maybe_done(session, fx, t, now)
    return CheckOutcome(
        "checked_out", a, t, hours=a.hours, hours_year=hours_year(session, person_id=person_id, now=now)
    )


def _maybe_done(session: Session, fx: Effects, task: Task, now: datetime) -> None:
    """A dispatch task is done when its places were taken (or the search ended) and everyone
    who took one has checked out; the reporter is told."""
    session.refresh(task)
    if task.mode != TaskMode.dispatch or task.status not in (TaskStatus.filled, TaskStatus.exhausted):
        return
    busy = session.exec(
        select(func.count())
        .select_from(Assignment)
        .where(Assignment.task_id == task.id, col(Assignment.status).in_(ACTIVE_STATUSES))
    ).one()
    if busy:
        return
    done = list(
        session.exec(
            select(Assignment).where(Assignment.task_id == task.id, Assignment.status == AS.completed)
        )
    )
    if not done:
        return
    task.status = TaskStatus.done
    session.add(task)
    if task.report_id is not None:
        report = session.get(Report, task.report_id)
        if report is not None and report.status != ReportStatus.done:
            report.status = ReportStatus.done
            session.add(report)
            _queue(
                session,
                fx,
                person_id=report.reporter_id,
                purpose="report_done",
                target=int(report.id or 0),
                text=texts.report_done(
                    report_id=int(report.id or 0),
                    names=_names(session, int(task.id or 0), (AS.completed,)),
                    hours_total=sum(a.hours for a in done),
                ),
            )
    session.flush()


@cache
def _my_assignments() -> Any:
    return (
        select(Assignment, Task)
        .join(Task, col(Task.id) == col(Assignment.task_id))
        .where(col(Assignment.person_id) == bindparam("pid"), col(Assignment.status).in_((*UPCOMING, AS.offered)))
        .where(col(Task.status).not_in(CLOSED_TASK))
    )


def my_summary(session: Session, *, person_id: int, now: datetime) -> MySummary:
    """Upcoming shifts (started ones still checked in), open offers, this year's hours."""
    rows = session.exec(_my_assignments(), params={"pid": person_id}).all()  # one query for both lists
    upcoming = sorted(
        ((a, t) for a, t in rows if a.status in UPCOMING and (a.status == AS.checked_in or t.ends_at > now)),
        key=lambda at: (at[1].starts_at, at[1].id),
    )
    offers = sorted(
        ((a, t) for a, t in rows if a.status == AS.offered and a.expires_at is not None and a.expires_at > now),
        key=lambda at: at[0].expires_at,  # type: ignore[arg-type, return-value]
    )
    return MySummary(upcoming, offers, hours_year(session, person_id=person_id, now=now))  # type: ignore[arg-type]


# --- reports ---------------------------------------------------------------------------------


def create_report(
    session: Session,
    fx: Effects,
    *,
    reporter_id: int,
    grid_id: int,
    category: str,
    text: str,
    lat: float,
    lng: float,
    urgency: str | Urgency,
    headcount: int,
    needed_by: datetime | None,
    now: datetime,
    policy: DispatchPolicy | None = None,
) -> tuple[Report, Task]:
    """A grid worker's need becomes a dispatch task; its first wave runs at once."""
    policy = _policy(policy)
    kind, floor = CATEGORY_KINDS.get(category, (TaskKind.other, Urgency.routine))
    urg = Urgency(urgency)
    if _URGENCY_ORDER[urg] < _URGENCY_ORDER[floor]:
        urg = floor
    headcount = max(1, int(headcount or 1))
    report = Report(
        reporter_id=reporter_id,
        grid_id=grid_id,
        category=category,
        text=text,
        lat=lat,
        lng=lng,
        urgency=urg,
        headcount=headcount,
        needed_by=needed_by,
        created_at=now,
    )
    session.add(report)
    session.flush()
    ends = (
        needed_by
        if needed_by is not None and needed_by > now
        else now + timedelta(hours=policy.report_default_hours)
    )
    task = Task(
        kind=kind,
        mode=TaskMode.dispatch,
        title=texts.report_title(category, text),
        description=text,
        lat=lat,
        lng=lng,
        h3=cell(lat, lng),
        grid_id=grid_id,
        starts_at=now,
        ends_at=ends,
        slots=headcount,
        urgency=urg,
        report_id=report.id,
        contact_id=reporter_id,
        created_by_id=reporter_id,
        created_at=now,
    )
    session.add(task)
    session.flush()
    fx.waves.append((int(task.id or 0), 1, now))
    return report, task


# --- coordinators ----------------------------------------------------------------------------


def _subtree_grid_ids(session: Session, scope_grid_id: int) -> list[int]:
    scope = session.get(GridUnit, scope_grid_id)
    if scope is None:
        return []
    prefix = "/" + "/".join(str(i) for i in places.path_ids(scope)) + "/"
    ids = list(session.exec(select(GridUnit.id).where(col(GridUnit.path).startswith(prefix))))
    return sorted({int(i) for i in ids if i is not None} | {scope_grid_id})


def _task_lines(session: Session, tasks: Sequence[Task]) -> list[TaskLine]:
    ids = [t.id for t in tasks]
    counts: dict[tuple[int, str], int] = defaultdict(int)
    if ids:
        for task_id, status, n in session.exec(  # type: ignore[misc]
            select(Assignment.task_id, Assignment.status, func.count())
            .where(col(Assignment.task_id).in_(ids))
            .group_by(col(Assignment.task_id), col(Assignment.status))
        ).all():
            counts[(task_id, str(getattr(status, "value", status)))] = n
    out = []
    for t in tasks:
        tid = int(t.id or 0)
        out.append(
            TaskLine(
                task=t,
                accepted=t.accepted_count,
                checked_in=counts[(tid, "checked_in")] + counts[(tid, "completed")],
                waitlist=counts[(tid, "waitlisted")],
            )
        )
    return out


def coordinator_status(session: Session, *, scope_grid_id: int, now: datetime) -> StatusView:
    grids = _subtree_grid_ids(session, scope_grid_id)
    if not grids:
        return StatusView([], [], [])
    reports = list(
        session.exec(
            select(Report)
            .where(
                col(Report.grid_id).in_(grids),
                col(Report.status).in_((ReportStatus.open, ReportStatus.taken)),
            )
            .order_by(col(Report.created_at))
        )
    )
    by_report = (
        {
            t.report_id: t
            for t in session.exec(select(Task).where(col(Task.report_id).in_([r.id for r in reports])))
        }
        if reports
        else {}
    )
    open_reports = [ReportLine(r, by_report.get(r.id), now - r.created_at) for r in reports]
    unfilled = list(
        session.exec(
            select(Task)
            .where(col(Task.grid_id).in_(grids), Task.mode == TaskMode.signup, Task.status == TaskStatus.open)
            .where(Task.starts_at > now, Task.starts_at <= now + timedelta(days=7))
            .where(col(Task.accepted_count) < col(Task.slots))
            .order_by(col(Task.starts_at))
        )
    )
    local = now.astimezone(LOCAL_TZ)
    day_start = datetime(local.year, local.month, local.day, tzinfo=LOCAL_TZ)
    today = list(
        session.exec(
            select(Task)
            .where(col(Task.grid_id).in_(grids), Task.status != TaskStatus.cancelled)
            .where(Task.starts_at < day_start + timedelta(days=1), Task.ends_at > day_start)
            .order_by(col(Task.starts_at))
        )
    )
    return StatusView(open_reports, _task_lines(session, unfilled), _task_lines(session, today))


# --- the spatial index, kept current from the database ---------------------------------------

# re-read a little before the watermark: a transaction that committed late may carry an
# updated_at earlier than rows already seen
_WATERMARK_OVERLAP = timedelta(seconds=120)


def volunteer_snapshot(p: Person, certs: Iterable[Certificate], units: tuple[int, ...]) -> Volunteer:
    quiet = None
    if p.quiet_start_min is not None and p.quiet_end_min is not None:
        quiet = (p.quiet_start_min, p.quiet_end_min)
    return Volunteer(
        id=int(p.id or 0),
        lat=float(p.lat or 0.0),
        lng=float(p.lng or 0.0),
        active=p.is_volunteer and p.status == PersonStatus.active,
        subscribed=p.subscribed,
        kinds=frozenset(p.kinds or ()),
        certs=tuple(sorted((c.skill, c.expires_on) for c in certs)),
        quiet=quiet,
        weekly_cap_hours=p.weekly_cap_hours,
        units=units,
        name=p.name,
    )


def refresh_index(session: Session, index: VolunteerIndex, *, now: datetime) -> int:
    """Bring the index up to date with people changed since its watermark; returns how many."""
    if not index.units or index.watermark is None:
        index.units = {int(u.id or 0): places.path_ids(u) for u in session.exec(select(GridUnit))}
    q = select(Person)
    if index.watermark is None:
        q = q.where(Person.is_volunteer)
    else:
        q = q.where(Person.updated_at > index.watermark - _WATERMARK_OVERLAP)
    people = list(session.exec(q))
    if not people:
        index.refreshed_at = now
        return 0
    certs: dict[int, list[Certificate]] = defaultdict(list)
    ids = [int(p.id or 0) for p in people]
    for chunk in _chunks(ids):
        for c in session.exec(select(Certificate).where(col(Certificate.person_id).in_(chunk))):
            certs[c.person_id].append(c)
    missing_units = {p.home_grid_id for p in people if p.home_grid_id and p.home_grid_id not in index.units}
    if missing_units:
        for u in session.exec(select(GridUnit).where(col(GridUnit.id).in_(missing_units))):
            index.units[int(u.id or 0)] = places.path_ids(u)
    for p in people:
        if p.is_volunteer and p.lat is not None and p.lng is not None and p.status != PersonStatus.left:
            units = index.units.get(p.home_grid_id or -1, ())
            index.upsert(volunteer_snapshot(p, certs.get(int(p.id or 0), ()), units))
        else:
            index.remove(int(p.id or 0))
        if index.watermark is None or p.updated_at > index.watermark:
            index.watermark = p.updated_at
    index.refreshed_at = now
    return len(people)


def _chunks(ids: Sequence[int], n: int = 500) -> Iterable[Sequence[int]]:
    for i in range(0, len(ids), n):
        yield ids[i : i + n]


def task_spec(session: Session, task: Task) -> TaskSpec:
    asked = frozenset(session.exec(select(Assignment.person_id).where(Assignment.task_id == task.id)))
    if task.contact_id is not None:
        # the person who asked for help (a reporter, an SOS caller) is never offered it
        asked |= {task.contact_id}
    return TaskSpec(
        id=int(task.id or 0),
        kind=str(getattr(task.kind, "value", task.kind)),
        lat=task.lat,
        lng=task.lng,
        starts_at=task.starts_at,
        ends_at=task.ends_at,
        required_skills=tuple(task.required_skills or ()),
        urgency=str(getattr(task.urgency, "value", task.urgency)),
        beneficiary=task.beneficiary,
        units=_units(session, task.grid_id),
        asked=asked,
    )


def load_facts(
    session: Session, person_ids: Sequence[int], task: TaskSpec, *, now: datetime, policy: DispatchPolicy
) -> dict[int, Facts]:
    """Each person's record as the ranking needs it, in three queries per 500 people."""
    window_start = now - timedelta(days=policy.fairness_window_days)
    lower = min(window_start, week_start(task.starts_at), task.starts_at)
    upper = max(task.ends_at, week_start(task.starts_at) + timedelta(days=7))
    counts: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    busy: dict[int, list[tuple[datetime, datetime]]] = defaultdict(list)
    load: dict[int, list[tuple[datetime, float]]] = defaultdict(list)
    recent_h: dict[int, float] = defaultdict(float)
    recent_n: dict[int, int] = defaultdict(int)
    served: dict[int, set[str]] = defaultdict(set)
    for chunk in _chunks(list(person_ids)):
        for pid, status, n in session.exec(  # type: ignore[misc]
            select(Assignment.person_id, Assignment.status, func.count())
            .where(col(Assignment.person_id).in_(chunk))
            .group_by(col(Assignment.person_id), col(Assignment.status))
        ).all():
            counts[pid][str(getattr(status, "value", status))] = n
        for a, t in session.exec(
            select(Assignment, Task)
            .join(Task, col(Task.id) == col(Assignment.task_id))
            .where(col(Assignment.person_id).in_(chunk), col(Assignment.status).in_(COMMITTED))
            .where(Task.ends_at >= lower, Task.starts_at <= upper, Task.id != task.id)
        ).all():
            length = max(0.0, (t.ends_at - t.starts_at).total_seconds() / 3600)
            if a.status in ACTIVE_STATUSES:
                busy[a.person_id].append((t.starts_at, t.ends_at))
            load[a.person_id].append((t.starts_at, a.hours if a.status == AS.completed else length))
            if a.status == AS.completed and a.checked_out_at is not None and a.checked_out_at >= window_start:
                recent_h[a.person_id] += a.hours
                recent_n[a.person_id] += 1
        if task.beneficiary:
            for pid in session.exec(
                select(Assignment.person_id)
                .join(Task, col(Task.id) == col(Assignment.task_id))
                .where(col(Assignment.person_id).in_(chunk), col(Assignment.status).in_(COMMITTED))
                .where(Task.beneficiary == task.beneficiary)
            ):
                served[pid].add(task.beneficiary)
    out: dict[int, Facts] = {}
    for pid in person_ids:
        c = counts.get(pid, {})
        accepts = c.get("accepted", 0) + c.get("checked_in", 0) + c.get("completed", 0) + c.get("no_show", 0)
        out[pid] = Facts(
            busy=tuple(busy.get(pid, ())),
            load=tuple(load.get(pid, ())),
            recent_hours=recent_h.get(pid, 0.0),
            recent_tasks=recent_n.get(pid, 0),
            offers=accepts + c.get("declined", 0) + c.get("expired", 0),
            accepts=accepts,
            shows=c.get("completed", 0),
            no_shows=c.get("no_show", 0),
            beneficiaries=frozenset(served.get(pid, ())),
        )
    return out


def candidates(
    session: Session,
    index: VolunteerIndex,
    task: Task,
    *,
    radius_m: float,
    limit: int | None,
    now: datetime,
    policy: DispatchPolicy,
    spec: TaskSpec | None = None,
) -> list[Ranked]:
    """The ranked candidates for a task within a radius (index search over fresh facts)."""
    spec = spec or task_spec(session, task)
    near = [v.id for v in index.near(spec.lat, spec.lng, radius_m) if v.id not in spec.asked]
    facts = load_facts(session, near, spec, now=now, policy=policy)
    return index.search(spec, facts=facts, policy=policy, now=now, radius_m=radius_m, limit=limit)


# --- waves -----------------------------------------------------------------------------------


def expire_offers(session: Session, *, task_id: int, now: datetime) -> int:
    res = session.execute(
        update(Assignment)
        .where(Assignment.task_id == task_id, Assignment.status == AS.offered)
        .where(col(Assignment.expires_at) <= now)
        .values(status=AS.expired)
        .execution_options(synchronize_session=False)
    )
    return int(res.rowcount or 0)  # type: ignore[attr-defined]


def run_wave(
    session: Session,
    fx: Effects,
    *,
    task_id: int,
    wave: int,
    now: datetime,
    index: VolunteerIndex,
    policy: DispatchPolicy | None = None,
    urban: bool | None = None,
) -> WaveOutcome:
    """Expire the last wave's unanswered offers, then offer the task to the next people.

    A wave that finds nobody new widens at once (no point waiting a TTL for no one); when no
    wider wave is allowed and no offer is still open, the task is ``exhausted`` and the
    coordinators of its town (and city) are told. ``urban`` (town vs village emergency
    radius) defaults to the town's name (``waves.is_urban``); the SOS flow passes its own
    finer rule (dispatcher/sos.py).
    """
    policy = _policy(policy)
    task = session.get(Task, task_id)
    if task is None or task.mode != TaskMode.dispatch:
        return WaveOutcome("skipped", wave)
    expired = expire_offers(session, task_id=task_id, now=now)
    if task.status != TaskStatus.open or task.accepted_count >= task.slots:
        return WaveOutcome("stopped", wave, expired=expired)
    claimed = session.execute(
        update(Task)
        .where(col(Task.id) == task_id, col(Task.wave) < wave)
        .values(wave=wave)
        .execution_options(synchronize_session=False)
    )
    if claimed.rowcount != 1:  # type: ignore[attr-defined]
        return WaveOutcome("stale", wave, expired=expired)  # this wave (or a later one) already ran
    session.refresh(task)
    if urban is None:
        town = _town(session, task.grid_id)
        urban = waves.is_urban(town.name if town else None)
    urgency = str(getattr(task.urgency, "value", task.urgency))
    pending = _open_offers(session, task_id, now)
    need = shifts.open_slots(task.slots, task.accepted_count)
    spec = task_spec(session, task)
    w = wave
    ranked: list[Ranked] = []
    plan = None
    while True:
        plan = waves.plan(w, need, urgency, policy, urban=urban)
        if plan is None:
            break
        size = max(0, plan.size - pending)
        if size:
            ranked = candidates(
                session, index, task, radius_m=plan.radius_m, limit=size, now=now, policy=policy, spec=spec
            )
        if ranked or not waves.can_widen(w, urgency, policy, urban=urban):
            break
        w += 1
    if w != task.wave:
        task.wave = w
        session.add(task)
    ttl = waves.ttl(urgency, policy)
    if ranked:
        place = place_name(session, task)
        what = f"（{task.title}）" if task.report_id else task.title
        for r in ranked:
            a = Assignment(
                task_id=task_id,
                person_id=r.person_id,
                status=AS.offered,
                wave=w,
                offered_at=now,
                expires_at=now + ttl,
            )
            session.add(a)
            session.flush()
            _queue(
                session,
                fx,
                person_id=r.person_id,
                purpose="offer",
                target=task_id,
                text=texts.offer(
                    task_id=task_id,
                    place=place,
                    need=need,
                    what=what,
                    starts_at=task.starts_at,
                    ends_at=task.ends_at,
                    dispatch=True,
                    urgency=urgency,
                    distance_m=r.distance_m,
                    ttl=ttl,
                    now=now,
                ),
                payload={"task_id": task_id, "wave": w, "expires_at": (now + ttl).isoformat()},
            )
        fx.waves.append((task_id, w + 1, now + ttl))
        session.flush()
        return WaveOutcome(
            "offered", w, plan.radius_m if plan else 0.0, [r.person_id for r in ranked], expired
        )
    if pending:
        # offers from an earlier wave are still open: decide when they lapse
        first_expiry = session.exec(
            select(func.min(Assignment.expires_at)).where(
                Assignment.task_id == task_id, Assignment.status == AS.offered
            )
        ).one()
        fx.waves.append((task_id, w + 1, max(now, first_expiry or now)))
        session.flush()
        return WaveOutcome("waiting", w, plan.radius_m if plan else 0.0, [], expired)
    task.status = TaskStatus.exhausted
    session.add(task)
    session.flush()
    place = place_name(session, task)
    for c in coordinators_for(session, task.grid_id):
        _queue(
            session,
            fx,
            person_id=int(c.id or 0),
            purpose="exhausted",
            target=task_id,
            text=texts.exhausted(
                task_id=task_id, report_id=task.report_id, title=task.title, place=place, missing=need
            ),
        )
    return WaveOutcome("exhausted", w, plan.radius_m if plan else 0.0, [], expired)


# --- periodic shift work ---------------------------------------------------------------------


def expand_recurrences(
    session: Session, *, now: datetime, policy: DispatchPolicy | None = None
) -> list[Task]:
    """Create the occurrences of weekly series due within the horizon; idempotent."""
    policy = _policy(policy)
    until = now + timedelta(days=policy.recurrence_horizon_days)
    created: list[Task] = []
    templates = list(
        session.exec(
            select(Task).where(
                col(Task.recurrence).is_not(None),
                col(Task.series_id).is_(None),
                Task.status != TaskStatus.cancelled,
            )
        )
    )
    for tpl in templates:
        try:
            wanted = shifts.occurrences(
                str(tpl.recurrence), tpl.starts_at, tpl.ends_at, after=now, until=until
            )
        except shifts.BadRecurrence:
            continue
        have = session.exec(select(Task.starts_at).where(Task.series_id == tpl.id)).all()
        for start, end in shifts.missing_occurrences(wanted, have):
            t = Task(
                kind=tpl.kind,
                mode=tpl.mode,
                title=tpl.title,
                description=tpl.description,
                place=tpl.place,
                lat=tpl.lat,
                lng=tpl.lng,
                h3=tpl.h3,
                grid_id=tpl.grid_id,
                starts_at=start,
                ends_at=end,
                slots=tpl.slots,
                required_skills=list(tpl.required_skills or []),
                urgency=tpl.urgency,
                beneficiary=tpl.beneficiary,
                series_id=tpl.id,
                contact_id=tpl.contact_id,
                created_by_id=tpl.created_by_id,
                created_at=now,
            )
            session.add(t)
            created.append(t)
    session.flush()
    return created


def check_understaffed(
    session: Session, fx: Effects, *, now: datetime, policy: DispatchPolicy | None = None
) -> list[int]:
    """Tell coordinators about shifts still short of people ahead of time (once per shift)."""
    policy = _policy(policy)
    horizon = now + timedelta(seconds=policy.understaffed_alert_s)
    tasks = list(
        session.exec(
            select(Task)
            .where(Task.mode == TaskMode.signup, Task.status == TaskStatus.open)
            .where(Task.starts_at > now, Task.starts_at <= horizon)
            .where(col(Task.accepted_count) < col(Task.slots))
            .order_by(col(Task.starts_at))
        )
    )
    alerted: list[int] = []
    for t in tasks:
        if not shifts.understaffed(t.slots, t.accepted_count, t.starts_at, now, policy.understaffed_alert_s):
            continue
        before = len(fx.deliveries)
        place = place_name(session, t)
        for c in coordinators_for(session, t.grid_id):
            _queue(
                session,
                fx,
                person_id=int(c.id or 0),
                purpose="understaffed",
                target=int(t.id or 0),
                text=texts.understaffed(
                    task_id=int(t.id or 0),
                    title=t.title,
                    place=place,
                    starts_at=t.starts_at,
                    ends_at=t.ends_at,
                    accepted=t.accepted_count,
                    slots=t.slots,
                    now=now,
                ),
            )
        if len(fx.deliveries) > before:
            alerted.append(int(t.id or 0))
    return alerted
