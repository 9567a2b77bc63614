"""The SOS flow around the dispatcher: start, each wave's roles and alerts, answers, the timeline.

The chat calls ``start`` and ``answer`` inside its own transaction (like
``jobs.outbound.release_deferred``): they take the session, record what must happen after
commit in ``Effects`` (marked urgent, so it all goes on the ``high`` queue) and return. The
search itself is the dispatcher's: an emergency dispatch Task, and ``jobs.dispatch.run_wave``
(an RQ job on ``high``, next waves scheduled 60 s apart) calls ``services.run_wave`` with this
module's radius rule and cap (``wave_policy``), then ``after_wave`` here gives each alert its
role and text in the same transaction, before anything is sent.

Every step is an ``SOSEvent`` row with its time; ``timeline`` merges them with the moments
WeChat accepted each message (``Delivery.sent_at``), so a coordinator can replay an SOS.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any

from sqlmodel import Session, col, or_, select

from dispatcher import services, waves
from dispatcher import sos as rules
from dispatcher.aed import AEDPoint
from dispatcher.effects import Effects
from dispatcher.geo import cell
from dispatcher.matching import LOCAL_TZ, geodesic_m
from dispatcher.places import ancestors, grid_at
from dispatcher.services import WaveOutcome
from dispatcher.texts import mask_name, mask_phone
from jobs.outbound import transition
from models.outbox import queue_message
from models.settings import DispatchPolicy
from models.tables import (
    AED,
    AEDStatus,
    Assignment,
    AssignmentStatus,
    Delivery,
    DeliveryStatus,
    GridUnit,
    Level,
    Person,
    SOSEvent,
    Task,
    TaskKind,
    TaskMode,
    TaskStatus,
    Urgency,
)

AS = AssignmentStatus
SKILL = "first_aid"  # 救护员证
TITLE = "急救呼叫"
ALERT_PURPOSE = "offer"  # the dispatcher's offer rows, re-worded here (dedupe key offer:<task>:<person>)


# --- the event log ---------------------------------------------------------------------------


def log(
    session: Session,
    *,
    task_id: int,
    kind: str,
    at: datetime,
    person_id: int | None = None,
    wave: int | None = None,
    **detail: Any,
) -> SOSEvent:
    row = SOSEvent(task_id=task_id, kind=kind, at=at, person_id=person_id, wave=wave, detail=detail)
    session.add(row)
    return row


def is_sos(session: Session, task_id: int) -> bool:
    """Whether a task is an SOS (it has a "called" event; other emergency tasks do not)."""
    hit = session.exec(
        select(SOSEvent.id).where(SOSEvent.task_id == task_id, SOSEvent.kind == "called").limit(1)
    ).first()
    return hit is not None


def _queue(session: Session, fx: Effects, **kw: Any) -> int | None:
    row = queue_message(session, **kw)
    if row is None or row.id is None:
        return None
    fx.deliveries.append(row.id)
    return row.id


# --- start -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    status: str  # started | repeat | outside (no grid there: nobody can be asked)
    task_id: int | None = None


def start(
    session: Session,
    fx: Effects,
    *,
    caller: Person,
    lat: float,
    lng: float,
    now: datetime,
    policy: DispatchPolicy,
    label: str = "",
) -> Started:
    """The caller's location after 急救: an emergency dispatch task whose first wave runs now."""
    grid = grid_at(session, lat=lat, lng=lng)
    if grid is None:
        return Started("outside")
    fx.urgent = True
    since = now - timedelta(seconds=policy.sos_repeat_window_s)
    for t in session.exec(
        select(Task)
        .where(Task.created_by_id == caller.id, Task.kind == TaskKind.emergency, col(Task.created_at) >= since)
        .where(col(Task.status).in_((TaskStatus.open, TaskStatus.filled)))
        .order_by(col(Task.id).desc())
    ):
        d = geodesic_m(lat, lng, t.lat, t.lng)
        if rules.is_repeat(then=t.created_at, now=now, distance_m=d, window_s=policy.sos_repeat_window_s,
                           radius_m=policy.sos_repeat_radius_m) and is_sos(session, int(t.id or 0)):
            log(session, task_id=int(t.id or 0), kind="repeat", at=now, person_id=caller.id,
                lat=lat, lng=lng, distance_m=round(d, 1))
            return Started("repeat", t.id)
    up = ancestors(session, grid)
    town, village = up.get(Level.town), up.get(Level.village)
    place = label.strip() or (village.name if village else grid.name)
    task = Task(
        kind=TaskKind.emergency,
        mode=TaskMode.dispatch,
        title=TITLE,
        description=f"{place}附近有人需要急救",
        place=place[:200],
        lat=lat,
        lng=lng,
        h3=cell(lat, lng),
        grid_id=int(grid.id or 0),
        starts_at=now,
        ends_at=now + timedelta(minutes=policy.sos_task_minutes),
        slots=policy.sos_responders,
        required_skills=[SKILL],
        urgency=Urgency.emergency,
        contact_id=caller.id,  # never alerted for their own call (services.task_spec)
        created_by_id=caller.id,
        created_at=now,
    )
    session.add(task)
    session.flush()
    tid = int(task.id or 0)
    urban = rules.area_is_urban(town.name if town else None, village.name if village else None)
    log(session, task_id=tid, kind="called", at=now, person_id=caller.id, lat=lat, lng=lng,
        grid_id=grid.id, area="town" if urban else "village", place=place)
    fx.waves.append((tid, 1, now))
    return Started("started", tid)


# --- waves -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WavePolicy:
    policy: DispatchPolicy
    urban: bool


def wave_policy(session: Session, *, task_id: int, policy: DispatchPolicy) -> WavePolicy | None:
    """For an SOS task: the radius rule (town/village from the grid's ancestors) and the
    policy capped at ``sos_max_radius_m``; None for any other task."""
    task = session.get(Task, task_id)
    if task is None or task.urgency != Urgency.emergency or not is_sos(session, task_id):
        return None
    grid = session.get(GridUnit, task.grid_id)
    up = ancestors(session, grid) if grid is not None else {}
    town, village = up.get(Level.town), up.get(Level.village)
    capped = policy.model_copy(update={"max_radius_m": min(policy.max_radius_m, policy.sos_max_radius_m)})
    return WavePolicy(capped, rules.area_is_urban(town.name if town else None, village.name if village else None))


def _aeds_near(session: Session, task: Task, now: datetime, reach_m: float) -> list[rules.Reachable]:
    d = reach_m / 111_000 * 1.5 + 0.001  # a box a little larger than the reach, in degrees
    rows = session.exec(
        select(AED).where(
            AED.status == AEDStatus.in_service,
            col(AED.lat).between(task.lat - d, task.lat + d),
            col(AED.lng).between(task.lng - d, task.lng + d),
        )
    ).all()
    points = [AEDPoint(int(a.id or 0), a.name, a.lat, a.lng, a.hours, True) for a in rows]
    return rules.aeds_in_reach(points, task.lat, task.lng, _local_time(now), reach_m)


def _local_time(now: datetime) -> time:
    return now.astimezone(LOCAL_TZ).time()


def _roles_held(session: Session, task_id: int, *, exclude: int | None = None) -> list[str]:
    rows = session.exec(
        select(Assignment.role)
        .where(Assignment.task_id == task_id, col(Assignment.status).in_((AS.accepted, AS.checked_in)))
        .where(Assignment.person_id != (exclude or -1))
        .order_by(col(Assignment.responded_at), col(Assignment.id))
    ).all()
    return [r for r in rows if r]


def _assignment(session: Session, task_id: int, person_id: int) -> Assignment | None:
    return session.exec(
        select(Assignment).where(Assignment.task_id == task_id, Assignment.person_id == person_id)
    ).first()


def _alert_row(session: Session, task_id: int, person_id: int) -> Delivery | None:
    key = f"{ALERT_PURPOSE}:{task_id}:{person_id}"
    return session.exec(select(Delivery).where(Delivery.dedupe_key == key)).first()


def after_wave(
    session: Session, fx: Effects, *, task_id: int, out: WaveOutcome, now: datetime, policy: DispatchPolicy
) -> None:
    """Inside run_wave's transaction: give the wave's alerts their roles and words, log it."""
    if out.status in ("stale", "skipped", "stopped"):
        return
    task = session.get(Task, task_id)
    assert task is not None
    fx.urgent = True
    log(session, task_id=task_id, kind="wave", at=now, wave=out.wave, status=out.status,
        radius_m=out.radius_m, alerted=len(out.offered), expired=out.expired)
    if out.offered:
        people = {int(p.id or 0): p for p in session.exec(select(Person).where(col(Person.id).in_(out.offered)))}
        aeds = _aeds_near(session, task, now, policy.sos_aed_reach_m)
        routes = {
            pid: rules.fetch_route(float(p.lat or 0.0), float(p.lng or 0.0), aeds) for pid, p in people.items()
        }
        roles = rules.offer_roles(
            out.offered, _roles_held(session, task_id), {pid: r is not None for pid, r in routes.items()}
        )
        ttl = waves.ttl("emergency", policy)
        for pid in out.offered:
            p, route, role = people[pid], routes.get(pid), roles[pid]
            dist = geodesic_m(task.lat, task.lng, float(p.lat or 0.0), float(p.lng or 0.0))
            a = _assignment(session, task_id, pid)
            if a is not None:
                a.role = role
                session.add(a)
            d = _alert_row(session, task_id, pid)
            if d is not None and d.status == DeliveryStatus.pending:
                d.text = rules.alert(task_id=task_id, place=task.place, lat=task.lat, lng=task.lng,
                                     distance_m=dist, role=role, route=route if role == rules.FETCH_AED else None,
                                     ttl=ttl)  # fmt: skip
                d.payload = {**d.payload, "role": role, "aed_id": route.aed.id if route else None}
                session.add(d)
            log(session, task_id=task_id, kind="alerted", at=now, person_id=pid, wave=out.wave, role=role,
                distance_m=round(dist, 1), aed_id=route.aed.id if route and role == rules.FETCH_AED else None)
    _tell_coordinators_started(session, fx, task, now, alerted=len(out.offered))
    if out.status == "exhausted":
        log(session, task_id=task_id, kind="exhausted", at=now, wave=out.wave)
        if task.accepted_count == 0 and task.contact_id is not None:
            _tell_caller(session, fx, task, now, key="none", text=rules.CALLER_NOBODY)
    session.flush()


def _caller_label(session: Session, task: Task) -> str:
    caller = session.get(Person, task.contact_id) if task.contact_id else None
    if caller is None or not (caller.name or caller.phone):
        return "未注册用户"
    return " ".join(x for x in (mask_name(caller.name) if caller.name else "", mask_phone(caller.phone)) if x)


def _tell_coordinators_started(session: Session, fx: Effects, task: Task, now: datetime, *, alerted: int) -> None:
    """Once per SOS (the dedupe key), after the first wave: alerts go first, then this."""
    tid = int(task.id or 0)
    text = rules.coordinator_started(task_id=tid, place=task.place, at=task.created_at, caller=_caller_label(session, task),
                                     alerted=alerted)  # fmt: skip
    for c in services.coordinators_for(session, task.grid_id):
        if _queue(session, fx, person_id=int(c.id or 0), purpose="sos_coord", target=tid, text=text):
            log(session, task_id=tid, kind="coordinator_told", at=now, person_id=c.id, what="started")


def _tell_caller(session: Session, fx: Effects, task: Task, now: datetime, *, key: str, text: str) -> None:
    tid = int(task.id or 0)
    if task.contact_id is None:
        return
    if _queue(session, fx, person_id=task.contact_id, purpose="sos_caller", target=f"{tid}-{key}", text=text):
        log(session, task_id=tid, kind="caller_told", at=now, person_id=task.contact_id, what=key)


# --- answers ---------------------------------------------------------------------------------


def answer(
    session: Session,
    fx: Effects,
    *,
    person_id: int,
    task_id: int,
    accept: bool,
    now: datetime,
    policy: DispatchPolicy,
) -> str:
    """A first-aider's 接受/拒绝 of an SOS alert; returns the reply."""
    fx.urgent = True
    task = session.get(Task, task_id)
    assert task is not None
    if not accept:
        out = services.decline_offer(session, fx, person_id=person_id, task_id=task_id, now=now, policy=policy)
        if out.status == "declined":
            log(session, task_id=task_id, kind="declined", at=now, person_id=person_id)
        if out.status == "not_offered":
            return rules.NOT_YOURS.format(task_id=task_id)
        return rules.DECLINE_REPLY
    a = _assignment(session, task_id, person_id)
    if (
        a is not None
        and a.status in (AS.offered, AS.expired, AS.declined)
        and task.status == TaskStatus.open
        and task.accepted_count < task.slots
        and now < task.ends_at
    ):
        # The wave moved on (or they said no, then found they could go), but a yes still
        # counts while places are free: a first-aider who answers at 70 s is as useful as
        # one who answered at 50 s.
        a.status, a.expires_at = AS.offered, now + waves.ttl("emergency", policy)
        session.add(a)
        session.flush()
    out = services.accept_offer(session, fx, person_id=person_id, task_id=task_id, now=now, policy=policy)
    if out.status == "full":
        return rules.FULL_REPLY
    if out.status == "already":
        return rules.ALREADY_REPLY.format(task_id=task_id)
    if out.status == "not_offered":
        return rules.NOT_YOURS.format(task_id=task_id)
    if out.status != "accepted":
        return rules.OVER_REPLY.format(task_id=task_id)
    assert a is not None
    session.refresh(a)
    person = session.get(Person, person_id)
    assert person is not None
    aeds = _aeds_near(session, task, now, policy.sos_aed_reach_m)
    route = rules.fetch_route(float(person.lat or 0.0), float(person.lng or 0.0), aeds)
    offered_role = a.role
    role = rules.role_on_accept(offered_role, _roles_held(session, task_id, exclude=person_id), route is not None)
    a.role = role
    session.add(a)
    session.flush()
    session.refresh(task)
    direct = geodesic_m(task.lat, task.lng, float(person.lat or 0.0), float(person.lng or 0.0))
    way = route.total_m if role == rules.FETCH_AED and route is not None else direct
    log(session, task_id=task_id, kind="accepted", at=now, person_id=person_id, role=role, offered_role=offered_role,
        distance_m=round(way, 1), aed_id=route.aed.id if route and role == rules.FETCH_AED else None)
    _tell_caller(
        session, fx, task, now, key=f"coming-{person_id}",
        text=rules.caller_update(accepted=task.accepted_count, distance_m=way, role=role,
                                 aed_name=route.aed.name if route and role == rules.FETCH_AED else None),
    )  # fmt: skip
    if rules.enough(task.accepted_count, task.slots):
        _filled(session, fx, task, now)
    return rules.accept_reply(task_id=task_id, role=role, offered=offered_role,
                              route=route if role == rules.FETCH_AED else None, lat=task.lat, lng=task.lng)


def _filled(session: Session, fx: Effects, task: Task, now: datetime) -> None:
    """Enough have accepted: stand everyone else down and tell the coordinators who goes."""
    tid = int(task.id or 0)
    log(session, task_id=tid, kind="filled", at=now, accepted=task.accepted_count)
    # accept_offer has just withdrawn the open offers; earlier waves' lapsed alerts were read
    # by people who may still be about to go, so they hear it too
    for a in session.exec(
        select(Assignment)
        .where(Assignment.task_id == tid, col(Assignment.status).in_((AS.offered, AS.withdrawn, AS.expired)))
        .order_by(col(Assignment.id))
    ):
        if a.status == AS.offered:
            a.status, a.responded_at = AS.withdrawn, now
            session.add(a)
        alert_row = _alert_row(session, tid, a.person_id)
        if alert_row is None:
            continue
        if alert_row.status in (DeliveryStatus.pending, DeliveryStatus.deferred):
            # never sent: better unsent than sent and then taken back
            transition(session, alert_row, DeliveryStatus.cancelled,
                       payload={**alert_row.payload, "stood_down": True})
            log(session, task_id=tid, kind="stood_down", at=now, person_id=a.person_id, alert="cancelled")
            continue
        if alert_row.status in (DeliveryStatus.sent, DeliveryStatus.sending) and _queue(
            session, fx, person_id=a.person_id, purpose="sos_standdown", target=tid,
            text=rules.STAND_DOWN.format(task_id=tid),
        ):  # fmt: skip
            log(session, task_id=tid, kind="stood_down", at=now, person_id=a.person_id, alert="sent")
    who = session.exec(
        select(Person.name, Assignment.role)
        .join(Assignment, col(Assignment.person_id) == col(Person.id))
        .where(Assignment.task_id == tid, col(Assignment.status).in_((AS.accepted, AS.checked_in)))
        .order_by(col(Assignment.responded_at), col(Assignment.id))
    ).all()
    text = rules.coordinator_filled(task_id=tid, who=[(mask_name(n), r or rules.PATIENT) for n, r in who])
    for c in services.coordinators_for(session, task.grid_id):
        if _queue(session, fx, person_id=int(c.id or 0), purpose="sos_filled", target=tid, text=text):
            log(session, task_id=tid, kind="coordinator_told", at=now, person_id=c.id, what="filled")
    session.flush()


# --- the timeline ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    at: datetime
    kind: str
    person_id: int | None = None
    wave: int | None = None
    detail: dict[str, Any] | None = None


_SENT_PURPOSES = (ALERT_PURPOSE, "sos_standdown", "sos_caller", "sos_coord", "sos_filled")


def timeline(session: Session, *, task_id: int) -> list[Step]:
    """Every step of an SOS in time order, with the moments WeChat took each message."""
    steps = [
        Step(e.at, e.kind, e.person_id, e.wave, dict(e.detail))
        for e in session.exec(
            select(SOSEvent).where(SOSEvent.task_id == task_id).order_by(col(SOSEvent.at), col(SOSEvent.id))
        )
    ]
    prefixes = [f"{p}:{task_id}:" for p in _SENT_PURPOSES] + [f"sos_caller:{task_id}-"]
    for d in session.exec(
        select(Delivery)
        .where(or_(*[col(Delivery.dedupe_key).startswith(p) for p in prefixes]))
        .where(col(Delivery.sent_at).is_not(None))
    ):
        if d.sent_at is not None:
            steps.append(Step(d.sent_at, "sent", d.person_id, None, {"purpose": d.purpose, "delivery_id": d.id}))
    steps.sort(key=lambda s: s.at)
    return steps


def timeline_text(session: Session, *, task_id: int) -> list[str]:
    """The timeline as lines a coordinator reads (names masked)."""
    names = {p.id: mask_name(p.name) for p in session.exec(select(Person).join(
        SOSEvent, col(SOSEvent.person_id) == col(Person.id)).where(SOSEvent.task_id == task_id))}  # fmt: skip
    return [
        rules.timeline_line(at=s.at, kind=s.kind, wave=s.wave, who=names.get(s.person_id, "") if s.person_id else "",
                            detail=s.detail or {})
        for s in timeline(session, task_id=task_id)
    ]
