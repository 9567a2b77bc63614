"""Shift reminders: 24 h and 2 h before the start, at the start (check in), after the end
(check out); the offsets come from Settings.

Each reminder is a Delivery (dedupe key purpose + assignment + person, ``not_before`` = when)
plus an RQ job scheduled at that moment (aware UTC, job id ``delivery-<id>``). The rows are the
truth: ``sync_assignment`` makes the rows and jobs match the assignment's current state, and the
reconciler re-creates the jobs from the rows after Redis lost them. A reminder whose moment has
already passed when the shift is taken is not made (the acceptance reply said it all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlmodel import Session, select

from jobs import texts
from jobs.outbound import cancel_job, clock, plan_send, transition
from jobs.runtime import runtime
from models.outbox import dedupe_key, queue_message
from models.settings import Settings
from models.tables import Assignment, AssignmentStatus, Delivery, DeliveryStatus, Task

ACTIVE = (AssignmentStatus.accepted, AssignmentStatus.checked_in)
OPEN = (DeliveryStatus.pending, DeliveryStatus.deferred)


@dataclass
class ReminderSync:
    scheduled: list[tuple[int, datetime]] = field(default_factory=list)  # (delivery id, when)
    cancelled: list[int] = field(default_factory=list)


def plan(*, starts_at: datetime, ends_at: datetime, checked_in: bool, checked_out: bool,
         settings: Settings) -> list[tuple[str, datetime]]:
    """The reminders an active assignment should have: (kind, when). Pure."""
    out: list[tuple[str, datetime]] = []
    if not checked_in:
        out += [(f"before{s}", starts_at - timedelta(seconds=s)) for s in sorted(set(settings.reminder_before_s),
                                                                            reverse=True) if s > 0]
        if settings.reminder_checkin:
            out.append(("checkin", starts_at))
    if settings.reminder_checkout_after_s >= 0 and not checked_out:
        out.append(("checkout", ends_at + timedelta(seconds=settings.reminder_checkout_after_s)))
    return out


def render(kind: str, task: Task, when: datetime, tz: str) -> str:
    if kind.startswith("before"):
        return texts.reminder_before(title=task.title, place=task.place, starts_at=task.starts_at,
                                     sent_at=when, task_id=task.id or 0, tz=tz)
    if kind == "checkin":
        return texts.reminder_checkin(title=task.title, place=task.place, starts_at=task.starts_at, tz=tz)
    return texts.reminder_checkout(title=task.title, ends_at=task.ends_at, tz=tz)


def purpose_of(kind: str) -> str:
    return f"remind_{kind}"


def sync(session: Session, *, assignment_id: int, now: datetime, settings: Settings) -> ReminderSync:
    """Make the assignment's reminder rows match its state (inside the caller's transaction)."""
    result = ReminderSync()
    a = session.get(Assignment, assignment_id)
    if a is None:
        return result
    task = session.get(Task, a.task_id)
    rows = session.exec(
        select(Delivery).where(Delivery.person_id == a.person_id, Delivery.purpose.startswith("remind_"))  # type: ignore[attr-defined]
    ).all()
    mine = {d.purpose: d for d in rows if d.payload.get("assignment_id") == assignment_id}
    wanted: dict[str, datetime] = {}
    if task is not None and a.status in ACTIVE:
        wanted = {
            purpose_of(kind): when
            for kind, when in plan(starts_at=task.starts_at, ends_at=task.ends_at,
                                   checked_in=a.checked_in_at is not None,
                                   checked_out=a.checked_out_at is not None, settings=settings)
        }
    for purpose, old in mine.items():
        if purpose not in wanted and old.status in OPEN and transition(session, old, DeliveryStatus.cancelled):
            result.cancelled.append(old.id)  # type: ignore[arg-type]
    for purpose, when in wanted.items():
        assert task is not None
        kind = purpose.removeprefix("remind_")
        text = render(kind, task, when, settings.tz)
        d: Delivery | None = mine.get(purpose)
        if d is None:
            if when <= now:
                continue
            d = queue_message(session, person_id=a.person_id, purpose=purpose, target=assignment_id, text=text,
                              not_before=when, payload={"assignment_id": assignment_id, "kind": kind})
            if d is None:  # a concurrent sync made it
                continue
        elif d.status == DeliveryStatus.cancelled and when > now:
            # taken again after a cancellation: the same row comes back (its key is unique)
            transition(session, d, DeliveryStatus.pending, not_before=when, text=text, attempts=0,
                       errcode=None, claimed_at=None)
        elif d.status == DeliveryStatus.pending and (d.not_before != when or d.text != text):
            d.not_before, d.text = when, text  # the shift moved
            session.add(d)
        elif d.status != DeliveryStatus.pending:
            continue
        session.flush()
        result.scheduled.append((d.id, when))  # type: ignore[arg-type]
    return result


def sync_assignment(assignment_id: int) -> dict[str, int]:
    """RQ job: (re)plan or withdraw the reminders of one assignment."""
    rt = runtime()
    with rt.sessions() as s, s.begin():
        result = sync(s, assignment_id=assignment_id, now=clock(rt), settings=rt.settings)
    for delivery_id, when in result.scheduled:
        plan_send(rt.redis, delivery_id, when)
    for delivery_id in result.cancelled:
        cancel_job(rt.redis, f"delivery-{delivery_id}")
    return {"scheduled": len(result.scheduled), "cancelled": len(result.cancelled)}


def reminder_key(kind: str, assignment_id: int, person_id: int) -> str:
    return dedupe_key(purpose_of(kind), assignment_id, person_id)
