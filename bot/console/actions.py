"""What a coordinator changes from the console: tasks and shifts, people. Every change is
checked against the coordinator's scope and leaves an AuditEntry; messages to people go
through the outbox (``queue_message``) and their ids into Effects, applied after commit.

Form parsing is pure (``parse_task_form``); the functions taking a session are the thin
service layer, called inside the view's transaction.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlmodel import Session, col, select

from bot.console.scope import Scope, get_person, get_task, unit_in_scope
from dispatcher import services, shifts
from dispatcher.effects import Effects
from dispatcher.geo import cell
from dispatcher.texts import shift_time
from models.exceptions import BadRecurrence, Conflict, NotAllowed
from models.outbox import queue_message
from models.tables import (
    Assignment,
    AssignmentStatus,
    AuditEntry,
    GridUnit,
    Person,
    PersonStatus,
    Task,
    TaskKind,
    TaskMode,
    TaskStatus,
    Urgency,
)

AS = AssignmentStatus
SKILLS = ("first_aid", "aed", "driver", "medical", "psych", "water")
WEEKDAY_CODES = ("MO", "TU", "WE", "TH", "FR", "SA", "SU")
# people holding or waiting for a place: they are told when the task changes or is cancelled
TOLD = (AS.accepted, AS.waitlisted, AS.checked_in, AS.offered)


def audit(session: Session, *, actor_id: int, action: str, entity: str, entity_id: int | None,
          now: datetime, **detail: Any) -> None:
    session.add(AuditEntry(actor_id=actor_id, action=action, entity=entity, entity_id=entity_id,
                           detail=detail, at=now))


# --- task form (pure) ------------------------------------------------------------------------


@dataclass
class TaskInput:
    title: str
    kind: TaskKind
    description: str
    place: str
    grid_id: int
    starts_at: datetime
    ends_at: datetime
    slots: int
    skills: list[str]
    urgency: Urgency
    recurrence: str | None
    lat: float | None = None
    lng: float | None = None


@dataclass
class FormErrors:
    errors: dict[str, str] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.errors)


def _getlist(form: Mapping[str, Any], key: str) -> list[str]:
    getall = getattr(form, "getall", None)
    if getall is not None:
        return [str(v) for v in getall(key, [])]
    v = form.get(key)
    if v is None:
        return []
    return [str(x) for x in v] if isinstance(v, list | tuple) else [str(v)]


def parse_task_form(form: Mapping[str, Any], *, tz: ZoneInfo) -> tuple[TaskInput | None, dict[str, str]]:
    """Validate the task form; returns the input or the errors keyed by field (in Chinese)."""
    err: dict[str, str] = {}
    title = str(form.get("title", "")).strip()
    if not title:
        err["title"] = "请填写名称"
    elif len(title) > 100:
        err["title"] = "名称不超过100字"
    try:
        kind = TaskKind(str(form.get("kind", "")))
    except ValueError:
        err["kind"] = "请选择类别"
        kind = TaskKind.other
    description = str(form.get("description", "")).strip()[:1000]
    place = str(form.get("place", "")).strip()
    if len(place) > 200:
        err["place"] = "地点不超过200字"
    try:
        grid_id = int(str(form.get("grid_id", "")))
    except ValueError:
        err["grid_id"] = "请选择所属网格"
        grid_id = 0
    starts_at = ends_at = None
    t1: time | None
    t2: time | None
    try:
        day = date.fromisoformat(str(form.get("date", "")).strip())
    except ValueError:
        err["date"] = "日期格式如 2025-06-30"
        day = None
    try:
        t1 = time.fromisoformat(str(form.get("start", "")).strip())
        t2 = time.fromisoformat(str(form.get("end", "")).strip())
    except ValueError:
        err["start"] = "时间格式如 09:00"
        t1 = t2 = None
    if day is not None and t1 is not None and t2 is not None:
        starts_at = datetime.combine(day, t1, tz)
        ends_at = datetime.combine(day, t2, tz)
        if ends_at <= starts_at:
            err["end"] = "结束时间须晚于开始时间"
    try:
        slots = int(str(form.get("slots", "")))
        if not 1 <= slots <= 500:
            raise ValueError
    except ValueError:
        err["slots"] = "人数为1到500之间的整数"
        slots = 1
    skills = [s for s in _getlist(form, "skills") if s]
    if any(s not in SKILLS for s in skills):
        err["skills"] = "未知的技能"
    try:
        urgency = Urgency(str(form.get("urgency", "routine")))
    except ValueError:
        err["urgency"] = "请选择紧急程度"
        urgency = Urgency.routine
    days = [d for d in _getlist(form, "repeat") if d]
    recurrence = None
    if days:
        recurrence = "WEEKLY:" + ",".join(d for d in WEEKDAY_CODES if d in days)
        try:
            wd = shifts.parse_weekly(recurrence)
        except BadRecurrence:
            err["repeat"] = "重复规则无效"
            wd = ()
        if day is not None and wd and day.weekday() not in wd:
            err["repeat"] = "首次日期须是所选的重复日之一"
    lat = lng = None
    raw_lat, raw_lng = str(form.get("lat", "")).strip(), str(form.get("lng", "")).strip()
    if raw_lat or raw_lng:
        try:
            lat, lng = float(raw_lat), float(raw_lng)
            if not (-90 <= lat <= 90 and -180 <= lng <= 180):
                raise ValueError
        except ValueError:
            err["lat"] = "坐标无效（可留空，默认用网格中心）"
    if err or starts_at is None or ends_at is None:
        return None, err
    return TaskInput(title, kind, description, place, grid_id, starts_at.astimezone(ZoneInfo("UTC")),
                     ends_at.astimezone(ZoneInfo("UTC")), slots, skills, urgency, recurrence, lat, lng), {}


# --- tasks -----------------------------------------------------------------------------------


def create_task(session: Session, fx: Effects, *, scope: Scope, data: TaskInput, now: datetime) -> Task:
    """A sign-up shift; with a recurrence it is the template of a weekly series, whose next
    occurrences the dispatcher's ``expand_recurrences`` writes at once (and cron keeps up)."""
    unit = unit_in_scope(session, scope, data.grid_id)
    if data.starts_at <= now:
        raise Conflict("开始时间已过")
    lat = data.lat if data.lat is not None else unit.lat
    lng = data.lng if data.lng is not None else unit.lng
    task = Task(kind=data.kind, mode=TaskMode.signup, title=data.title, description=data.description,
                place=data.place or unit.name, lat=lat, lng=lng, h3=cell(lat, lng), grid_id=int(unit.id or 0),
                starts_at=data.starts_at, ends_at=data.ends_at, slots=data.slots,
                required_skills=list(data.skills), urgency=data.urgency, recurrence=data.recurrence,
                created_by_id=scope.person_id, created_at=now)
    session.add(task)
    session.flush()
    made = 0
    if data.recurrence:
        made = sum(1 for t in services.expand_recurrences(session, now=now) if t.series_id == task.id)
    audit(session, actor_id=scope.person_id, action="task.create", entity="task", entity_id=task.id, now=now,
          title=task.title, grid_id=task.grid_id, starts_at=task.starts_at.isoformat(), slots=task.slots,
          recurrence=task.recurrence, occurrences=made)
    return task


def series_tasks(session: Session, task: Task, *, now: datetime) -> list[Task]:
    """The template and its occurrences that have not started yet."""
    head = task.series_id or task.id
    return list(session.exec(
        select(Task).where((col(Task.id) == head) | (col(Task.series_id) == head), Task.starts_at > now)
        .order_by(col(Task.starts_at))
    ))


def _people_on(session: Session, task_id: int) -> list[Assignment]:
    return list(session.exec(
        select(Assignment).where(Assignment.task_id == task_id, col(Assignment.status).in_(TOLD))
        .order_by(col(Assignment.id))
    ))


def _tell(session: Session, fx: Effects, *, person_id: int, purpose: str, target: str, text: str) -> None:
    row = queue_message(session, person_id=person_id, purpose=purpose, target=target, text=text)
    if row is not None and row.id is not None:
        fx.deliveries.append(int(row.id))


def cancel_text(task: Task, now: datetime, reason: str) -> str:
    why = f"，原因：{reason}" if reason else ""
    return (f"很抱歉，「{task.title}」· {task.place} · {shift_time(task.starts_at, task.ends_at, now)} "
            f"已取消{why}。感谢您的支持，回复「班次」看看其他需要人手的服务。")


def cancel_task(session: Session, fx: Effects, *, scope: Scope, task_id: int, now: datetime,
                reason: str = "", whole_series: bool = False) -> list[Task]:
    """Cancel a task (or its series from now on); everyone on it is told, once."""
    task = get_task(session, scope, task_id)
    targets = series_tasks(session, task, now=now) if whole_series and (task.recurrence or task.series_id) else [task]
    if task not in targets:
        targets.insert(0, task)
    done: list[Task] = []
    for t in targets:
        if t.status in (TaskStatus.cancelled, TaskStatus.done):
            continue
        told = 0
        for a in _people_on(session, int(t.id or 0)):
            a.status = AS.withdrawn if a.status == AS.offered else AS.cancelled
            a.responded_at = now
            session.add(a)
            fx.assignments.append(int(a.id or 0))  # withdraws their reminders
            _tell(session, fx, person_id=a.person_id, purpose="task_cancelled", target=str(t.id),
                  text=cancel_text(t, now, reason))
            told += 1
        t.status = TaskStatus.cancelled
        t.accepted_count = 0
        session.add(t)
        session.flush()
        audit(session, actor_id=scope.person_id, action="task.cancel", entity="task", entity_id=t.id, now=now,
              reason=reason, told=told, series=whole_series)
        done.append(t)
    return done


EDITABLE = ("title", "description", "place", "slots", "starts_at", "ends_at", "required_skills", "urgency", "kind")


def edit_task(session: Session, fx: Effects, *, scope: Scope, task_id: int, data: TaskInput,
              now: datetime) -> dict[str, tuple[Any, Any]]:
    """Change one task (one occurrence of a series). Fewer places than people already on it is
    refused; more places fill from the waitlist; a new time or place is told to the people on it."""
    task = get_task(session, scope, task_id)
    if task.status in (TaskStatus.cancelled, TaskStatus.done):
        raise Conflict("已取消或已完成的任务不能修改")
    unit = unit_in_scope(session, scope, data.grid_id)
    if data.slots < task.accepted_count:
        raise Conflict(f"已有{task.accepted_count}人报名，名额不能少于此数")
    new = {"title": data.title, "description": data.description, "place": data.place or unit.name,
           "slots": data.slots, "starts_at": data.starts_at, "ends_at": data.ends_at,
           "required_skills": list(data.skills), "urgency": data.urgency, "kind": data.kind}
    changes = {k: (getattr(task, k), v) for k, v in new.items() if getattr(task, k) != v}
    if task.grid_id != unit.id:
        changes["grid_id"] = (task.grid_id, unit.id)
        task.grid_id = int(unit.id or 0)
        task.lat, task.lng = unit.lat, unit.lng
        task.h3 = cell(unit.lat, unit.lng)
    if not changes:
        return {}
    for k, (_old, v) in changes.items():
        if k != "grid_id":
            setattr(task, k, v)
    session.add(task)
    session.flush()
    if "slots" in changes:
        # the dispatcher's own rules: fill from the waitlist in order, flip open/filled
        services._promote(session, fx, task, now)
        services._set_fill_status(session, task)
    if {"starts_at", "ends_at", "place", "grid_id"} & changes.keys():
        stamp = int(now.timestamp())
        for a in _people_on(session, int(task.id or 0)):
            fx.assignments.append(int(a.id or 0))  # reminders move with the shift
            _tell(session, fx, person_id=a.person_id, purpose="task_changed", target=f"{task.id}@{stamp}",
                  text=(f"【班次变更】「{task.title}」现为 {task.place} · "
                        f"{shift_time(task.starts_at, task.ends_at, now)}。"
                        f"不能参加请回复「取消 {task.id}」。"))
    audit(session, actor_id=scope.person_id, action="task.edit", entity="task", entity_id=task.id, now=now,
          changes={k: [_plain(a), _plain(b)] for k, (a, b) in changes.items()})
    return changes


def _plain(v: Any) -> Any:
    if isinstance(v, datetime):
        return v.isoformat()
    if hasattr(v, "value"):
        return v.value
    return v


# --- people ----------------------------------------------------------------------------------

PERSON_ACTIONS = {
    "approve": ((PersonStatus.pending,), PersonStatus.active),
    "suspend": ((PersonStatus.pending, PersonStatus.active), PersonStatus.suspended),
    "reactivate": ((PersonStatus.suspended,), PersonStatus.active),
}


def set_status(session: Session, fx: Effects, *, scope: Scope, person_id: int, action: str,
               now: datetime) -> Person:
    if action not in PERSON_ACTIONS:
        raise ValueError(action)
    person = get_person(session, scope, person_id)
    if person.id == scope.person_id:
        raise NotAllowed("不能修改自己的状态")
    allowed, to = PERSON_ACTIONS[action]
    if person.status not in allowed:
        raise Conflict("当前状态不能执行此操作")
    before = person.status
    person.status = to
    session.add(person)
    session.flush()
    withdrawn = 0
    if to == PersonStatus.suspended:
        withdrawn = services.withdraw_offers(session, fx, person_id=int(person.id or 0), now=now)
    audit(session, actor_id=scope.person_id, action=f"person.{action}", entity="person", entity_id=person.id,
          now=now, before=before.value, after=to.value, offers_withdrawn=withdrawn)
    return person


def set_roles(session: Session, *, scope: Scope, person_id: int, volunteer: bool, grid_worker: bool,
              coordinator: bool, coordinator_scope_id: int | None, now: datetime) -> Person:
    """Roles within the coordinator's own subtree: a coordinator can only hand on a scope
    inside their own, and cannot change their own roles."""
    person = get_person(session, scope, person_id)
    if person.id == scope.person_id:
        raise NotAllowed("不能修改自己的角色")
    before = {"volunteer": person.is_volunteer, "grid_worker": person.is_grid_worker,
              "coordinator": person.is_coordinator, "scope": person.coordinator_scope_id}
    if coordinator:
        if coordinator_scope_id is None:
            raise Conflict("请选择协调范围")
        unit_in_scope(session, scope, coordinator_scope_id)
    elif person.is_coordinator and person.coordinator_scope_id is not None:
        unit_in_scope(session, scope, person.coordinator_scope_id)  # cannot demote a wider coordinator
    person.is_volunteer, person.is_grid_worker, person.is_coordinator = volunteer, grid_worker, coordinator
    person.coordinator_scope_id = coordinator_scope_id if coordinator else None
    session.add(person)
    session.flush()
    after = {"volunteer": volunteer, "grid_worker": grid_worker, "coordinator": coordinator,
             "scope": person.coordinator_scope_id}
    audit(session, actor_id=scope.person_id, action="person.roles", entity="person", entity_id=person.id,
          now=now, before=before, after=after)
    return person


def scope_choices(session: Session, scope: Scope) -> list[GridUnit]:
    """Units a coordinator can hand on as a scope: their own and the towns/villages under it."""
    from models.tables import Level

    return list(session.exec(
        select(GridUnit).where(col(GridUnit.path).startswith(scope.path),
                               col(GridUnit.level).in_((Level.city, Level.town, Level.village)))
        .order_by(col(GridUnit.path))
    ))


def local_day_bounds(now: datetime, tz: ZoneInfo) -> tuple[datetime, datetime]:
    d = now.astimezone(tz).date()
    start = datetime.combine(d, time(0), tz)
    return start, start + timedelta(days=1)
