"""RedGrid's tables (DESIGN.md, Domain). Positions are WGS-84; times are aware UTC."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Column, Index, UniqueConstraint
from sqlalchemy import Enum as SAEnum
from sqlmodel import Field, SQLModel

from models.db import UTCDateTime, utcnow


def _ts(*, nullable: bool = True, index: bool = False) -> Any:
    return Field(default=None, sa_type=UTCDateTime, nullable=nullable, index=index)


def _created() -> Any:
    return Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)


def _enum(enum: type[StrEnum], default: Any = None, *, index: bool = False) -> Any:
    # VARCHAR, not a native PostgreSQL ENUM: adding a value must not need a type migration.
    sa_type = SAEnum(enum, native_enum=False, length=32, values_callable=lambda e: [m.value for m in e])
    if default is None:
        return Field(sa_type=sa_type, nullable=False, index=index)
    return Field(default=default, sa_type=sa_type, nullable=False, index=index)


def _json_list() -> Any:
    return Field(default_factory=list, sa_column=Column(JSON, nullable=False))


def _json_dict() -> Any:
    return Field(default_factory=dict, sa_column=Column(JSON, nullable=False))


class Level(StrEnum):
    city = "city"
    town = "town"
    village = "village"
    grid = "grid"


class PersonStatus(StrEnum):
    pending = "pending"
    active = "active"
    suspended = "suspended"
    left = "left"


class TaskKind(StrEnum):
    checkpoint = "checkpoint"
    drill = "drill"
    fridge_restock = "fridge_restock"
    dementia_outreach = "dementia_outreach"
    first_aid_cover = "first_aid_cover"
    training = "training"
    publicity = "publicity"
    elderly_visit = "elderly_visit"
    emergency = "emergency"
    other = "other"


class TaskMode(StrEnum):
    signup = "signup"
    dispatch = "dispatch"


class Urgency(StrEnum):
    routine = "routine"
    urgent = "urgent"
    emergency = "emergency"


class TaskStatus(StrEnum):
    open = "open"
    filled = "filled"
    done = "done"
    cancelled = "cancelled"
    exhausted = "exhausted"  # dispatch ran out of candidates


class AssignmentStatus(StrEnum):
    offered = "offered"
    accepted = "accepted"
    declined = "declined"
    expired = "expired"
    withdrawn = "withdrawn"  # offer taken back (task full, unsubscribed, stood down)
    waitlisted = "waitlisted"
    cancelled = "cancelled"
    checked_in = "checked_in"
    completed = "completed"
    no_show = "no_show"


class ReportStatus(StrEnum):
    open = "open"
    taken = "taken"
    done = "done"
    cancelled = "cancelled"


class CampaignStatus(StrEnum):
    draft = "draft"
    sending = "sending"
    done = "done"
    cancelled = "cancelled"


class DeliveryStatus(StrEnum):
    pending = "pending"
    sending = "sending"  # claimed by one worker; the WeChat call is in flight
    sent = "sent"
    deferred = "deferred"  # waits for the person's next interaction (48-hour rule)
    failed = "failed"
    cancelled = "cancelled"


class AEDStatus(StrEnum):
    in_service = "in_service"
    faulty = "faulty"
    retired = "retired"


class GridUnit(SQLModel, table=True):
    __tablename__ = "grid_unit"

    id: int | None = Field(default=None, primary_key=True)
    code: str = Field(unique=True, max_length=32)
    name: str = Field(max_length=64, index=True)
    level: Level = _enum(Level)
    parent_id: int | None = Field(default=None, foreign_key="grid_unit.id", index=True)
    # materialized path of ids, "/1/5/23/": a subtree is one indexed prefix match
    path: str = Field(default="/", max_length=128, index=True)
    lat: float
    lng: float
    h3: str = Field(max_length=16, index=True)


class Person(SQLModel, table=True):
    __tablename__ = "person"

    id: int | None = Field(default=None, primary_key=True)
    openid: str | None = Field(default=None, unique=True, max_length=64)
    name: str = Field(default="", max_length=64)
    phone: str | None = Field(default=None, max_length=20, index=True)
    is_volunteer: bool = False
    is_grid_worker: bool = False
    is_coordinator: bool = False
    # a coordinator acts on this unit's subtree (the city for a city coordinator)
    coordinator_scope_id: int | None = Field(default=None, foreign_key="grid_unit.id")
    home_grid_id: int | None = Field(default=None, foreign_key="grid_unit.id", index=True)
    lat: float | None = None
    lng: float | None = None
    h3: str | None = Field(default=None, max_length=16, index=True)
    share_live_location: bool = False
    live_lat: float | None = None
    live_lng: float | None = None
    live_at: datetime | None = _ts()
    kinds: list[str] = _json_list()  # opted-in TaskKind values
    quiet_start_min: int | None = None  # minutes after local midnight
    quiet_end_min: int | None = None
    weekly_cap_hours: float | None = None
    status: PersonStatus = _enum(PersonStatus, default=PersonStatus.pending, index=True)
    subscribed: bool = True
    last_interaction_at: datetime | None = _ts()
    created_at: datetime = _created()
    # bumped on every UPDATE of the row: the dispatcher's in-process index refreshes from
    # it as a watermark (code that changes only a person's certificates must touch it too)
    updated_at: datetime = Field(
        default_factory=utcnow,
        sa_type=UTCDateTime,
        nullable=False,
        index=True,
        sa_column_kwargs={"onupdate": utcnow},
    )


class GridWorkerGrid(SQLModel, table=True):
    """Which grids a grid worker serves."""

    __tablename__ = "grid_worker_grid"

    person_id: int = Field(foreign_key="person.id", primary_key=True)
    grid_id: int = Field(foreign_key="grid_unit.id", primary_key=True, index=True)


class Certificate(SQLModel, table=True):
    """A skill a person holds, with the certificate's expiry where it has one."""

    __tablename__ = "certificate"
    __table_args__ = (UniqueConstraint("person_id", "skill"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    skill: str = Field(max_length=32, index=True)
    expires_on: date | None = None


class Report(SQLModel, table=True):
    __tablename__ = "report"

    id: int | None = Field(default=None, primary_key=True)
    reporter_id: int = Field(foreign_key="person.id", index=True)
    grid_id: int = Field(foreign_key="grid_unit.id", index=True)
    category: str = Field(max_length=32)
    text: str = Field(max_length=1000)
    lat: float
    lng: float
    urgency: Urgency = _enum(Urgency, default=Urgency.routine)
    headcount: int = 1
    needed_by: datetime | None = _ts()
    status: ReportStatus = _enum(ReportStatus, default=ReportStatus.open, index=True)
    created_at: datetime = _created()


class Task(SQLModel, table=True):
    __tablename__ = "task"
    __table_args__ = (Index("ix_task_window", "starts_at", "ends_at"),)

    id: int | None = Field(default=None, primary_key=True)
    kind: TaskKind = _enum(TaskKind, index=True)
    mode: TaskMode = _enum(TaskMode)
    title: str = Field(max_length=100)
    description: str = Field(default="", max_length=1000)
    place: str = Field(default="", max_length=200)
    lat: float
    lng: float
    h3: str = Field(max_length=16, index=True)
    grid_id: int = Field(foreign_key="grid_unit.id", index=True)
    starts_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    ends_at: datetime = Field(sa_type=UTCDateTime, nullable=False)
    slots: int = Field(default=1, ge=1)
    accepted_count: int = 0  # kept by guarded updates; never exceeds slots
    required_skills: list[str] = _json_list()
    urgency: Urgency = _enum(Urgency, default=Urgency.routine)
    status: TaskStatus = _enum(TaskStatus, default=TaskStatus.open, index=True)
    beneficiary: str | None = Field(default=None, max_length=100, index=True)
    recurrence: str | None = Field(default=None, max_length=64)  # e.g. "WEEKLY:TU,FR"
    series_id: int | None = Field(default=None, foreign_key="task.id", index=True)
    report_id: int | None = Field(default=None, foreign_key="report.id", index=True)
    contact_id: int | None = Field(default=None, foreign_key="person.id")
    created_by_id: int | None = Field(default=None, foreign_key="person.id")
    wave: int = 0
    created_at: datetime = _created()


class Assignment(SQLModel, table=True):
    __tablename__ = "assignment"
    __table_args__ = (
        UniqueConstraint("task_id", "person_id"),
        Index("ix_assignment_person_status", "person_id", "status"),
        Index("ix_assignment_task_status", "task_id", "status"),
    )

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id")
    person_id: int = Field(foreign_key="person.id")
    status: AssignmentStatus = _enum(AssignmentStatus)
    role: str | None = Field(default=None, max_length=32)  # e.g. "fetch_aed" in an SOS
    wave: int = 0
    waitlist_pos: int | None = None
    offered_at: datetime | None = _ts()
    expires_at: datetime | None = _ts(index=True)
    responded_at: datetime | None = _ts()
    checked_in_at: datetime | None = _ts()
    checked_out_at: datetime | None = _ts()
    hours: float = 0.0
    created_at: datetime = _created()


class Campaign(SQLModel, table=True):
    __tablename__ = "campaign"

    id: int | None = Field(default=None, primary_key=True)
    created_by_id: int = Field(foreign_key="person.id", index=True)
    audience: dict[str, Any] = _json_dict()
    text: str = Field(max_length=2000)
    task_id: int | None = Field(default=None, foreign_key="task.id")
    targeted: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    capped: int = 0  # left out: over the weekly broadcast cap
    status: CampaignStatus = _enum(CampaignStatus, default=CampaignStatus.draft, index=True)
    created_at: datetime = _created()
    finished_at: datetime | None = _ts()


class Delivery(SQLModel, table=True):
    """Every outbound message; the unique dedupe key makes "sent once" a database fact."""

    __tablename__ = "delivery"
    __table_args__ = (Index("ix_delivery_person_status", "person_id", "status"),)

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(unique=True, max_length=128)
    person_id: int = Field(foreign_key="person.id")
    purpose: str = Field(max_length=32, index=True)
    channel: str = Field(default="custom", max_length=16)  # custom | template
    status: DeliveryStatus = _enum(DeliveryStatus, default=DeliveryStatus.pending)
    text: str = Field(default="", max_length=4000)
    payload: dict[str, Any] = _json_dict()
    campaign_id: int | None = Field(default=None, foreign_key="campaign.id", index=True)
    errcode: int | None = None
    attempts: int = 0
    not_before: datetime | None = _ts(index=True)
    # when a worker claimed it (pending -> sending): a claim older than the lease is in doubt
    claimed_at: datetime | None = _ts()
    sent_at: datetime | None = _ts()
    created_at: datetime = _created()


class AED(SQLModel, table=True):
    __tablename__ = "aed"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100)
    address: str = Field(default="", max_length=200)
    lat: float
    lng: float
    h3: str = Field(max_length=16, index=True)
    grid_id: int | None = Field(default=None, foreign_key="grid_unit.id", index=True)
    hours: str = Field(default="24h", max_length=64)  # "24h" or "08:00-17:00"
    status: AEDStatus = _enum(AEDStatus, default=AEDStatus.in_service, index=True)
    keeper: str = Field(default="", max_length=64)
    keeper_person_id: int | None = Field(default=None, foreign_key="person.id")
    last_inspected_on: date | None = None


class AuditEntry(SQLModel, table=True):
    __tablename__ = "audit_entry"

    id: int | None = Field(default=None, primary_key=True)
    actor_id: int | None = Field(default=None, foreign_key="person.id", index=True)
    action: str = Field(max_length=64)
    entity: str = Field(max_length=32)
    entity_id: int | None = None
    detail: dict[str, Any] = _json_dict()
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False, index=True)


class SOSEvent(SQLModel, table=True):
    """One step of an SOS (jobs/sos.py), with its time: the timeline a coordinator reads.

    A table of its own rather than AuditEntry rows: most steps are the system's, not a
    person's (a wave sent, a stand-down), one SOS makes a dozen of them within a minute, and
    the timeline is one indexed query by task, in order, without filling the audit log that
    records people's changes to records.
    """

    __tablename__ = "sos_event"
    __table_args__ = (Index("ix_sos_event_task_at", "task_id", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(foreign_key="task.id")
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, nullable=False)
    # called | repeat | wave | alerted | accepted | declined | stood_down | caller_told |
    # coordinator_told | filled | exhausted
    kind: str = Field(max_length=32)
    person_id: int | None = Field(default=None, foreign_key="person.id")
    wave: int | None = None
    detail: dict[str, Any] = _json_dict()


class ConsoleLogin(SQLModel, table=True):
    """A coordinator's web-console credentials and lock-out state.

    Kept out of Person on purpose: Person.updated_at is the dispatcher index's watermark, and
    a failed login must not make every web process re-read the volunteer.
    """

    __tablename__ = "console_login"

    person_id: int = Field(foreign_key="person.id", primary_key=True)
    password_hash: str = Field(max_length=255)  # argon2id, in its self-describing PHC format
    failed_logins: int = 0  # failures in a row since the last success or lock-out
    locked_until: datetime | None = _ts()
    password_set_at: datetime = _created()
    last_login_at: datetime | None = _ts()
