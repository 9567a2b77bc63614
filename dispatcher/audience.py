"""Broadcast audiences and campaigns: who a coordinator's broadcast reaches, and its lifecycle.

An Audience is a filter over people: a grid subtree (by ``GridUnit.path`` prefix), roles, skills
(a certificate valid today), opted-in task kinds, and "interacted since". Everyone in it is
active, subscribed and has an openid. Filters of one kind are OR'ed (any of the skills), kinds
of filters AND'ed.

The service functions here take a session and leave sending to ``jobs.broadcast`` through
``Effects.campaigns``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, update
from sqlmodel import Session, select

from dispatcher.effects import Effects
from models.exceptions import NotAllowed, NotFound
from models.tables import (
    AuditEntry,
    Campaign,
    CampaignStatus,
    Certificate,
    Delivery,
    DeliveryStatus,
    GridUnit,
    Person,
    PersonStatus,
)

ROLES = ("volunteer", "grid_worker", "coordinator")
WINDOW = timedelta(hours=48)


@dataclass(frozen=True)
class Audience:
    grid_id: int | None = None  # None: the whole city
    roles: tuple[str, ...] = ("volunteer",)
    skills: tuple[str, ...] = ()  # any of these, with a certificate valid on the day
    kinds: tuple[str, ...] = ()  # opted in to any of these task kinds
    active_since: datetime | None = None  # last message to us at or after this

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["active_since"] = self.active_since.isoformat() if self.active_since else None
        d["roles"], d["skills"], d["kinds"] = list(self.roles), list(self.skills), list(self.kinds)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Audience:
        since = d.get("active_since")
        return cls(
            grid_id=d.get("grid_id"),
            roles=tuple(d.get("roles") or ()),
            skills=tuple(d.get("skills") or ()),
            kinds=tuple(d.get("kinds") or ()),
            active_since=datetime.fromisoformat(since) if since else None,
        )


@dataclass(frozen=True)
class AudiencePreview:
    total: int
    reachable_now: int  # within 48 h of their last message, or a template is configured
    deferred: int  # will get it with their next message


def _conditions(session: Session, audience: Audience, now: datetime) -> list[ColumnElement[bool]]:
    conds: list[ColumnElement[bool]] = [
        Person.status == PersonStatus.active,  # type: ignore[list-item]
        Person.subscribed == True,  # type: ignore[list-item]  # noqa: E712
        Person.openid.is_not(None),  # type: ignore[union-attr]
    ]
    if audience.grid_id is not None:
        unit = session.get(GridUnit, audience.grid_id)
        if unit is None:
            raise NotFound(f"grid unit {audience.grid_id}")
        subtree = select(GridUnit.id).where(GridUnit.path.startswith(unit.path))  # type: ignore[attr-defined]
        conds.append(Person.home_grid_id.in_(subtree))  # type: ignore[union-attr]
    roles = [r for r in audience.roles if r in ROLES]
    if audience.roles:
        role_conds = [getattr(Person, f"is_{r}") == True for r in roles]  # noqa: E712
        conds.append(or_(*role_conds) if role_conds else false())
    if audience.skills:
        valid = select(Certificate.person_id).where(
            Certificate.skill.in_(audience.skills),  # type: ignore[attr-defined]
            or_(Certificate.expires_on.is_(None), Certificate.expires_on >= now.date()),  # type: ignore[union-attr, operator, arg-type]
        )
        conds.append(Person.id.in_(valid))  # type: ignore[union-attr]
    if audience.kinds:
        # kinds is a JSON list; a LIKE on its text works on SQLite and PostgreSQL alike
        from sqlalchemy import String, cast

        kinds_text = cast(Person.kinds, String)
        conds.append(or_(*[kinds_text.like(f'%"{k}"%') for k in audience.kinds]))
    if audience.active_since is not None:
        conds.append(Person.last_interaction_at >= audience.active_since)  # type: ignore[operator, arg-type]
    return conds


def audience_ids(session: Session, *, audience: Audience, now: datetime) -> list[int]:
    stmt = select(Person.id).where(and_(*_conditions(session, audience, now))).order_by(Person.id)  # type: ignore[arg-type]
    return [int(i) for i in session.exec(stmt).all()]  # type: ignore[arg-type]


def preview_audience(session: Session, *, audience: Audience, now: datetime,
                     template_id: str | None = None) -> AudiencePreview:
    """How many the broadcast reaches, and how many of them now (``template_id``: the broadcast
    template, when one is configured, reaches everyone at once)."""
    conds = _conditions(session, audience, now)
    total = session.exec(select(func.count()).select_from(Person).where(and_(*conds))).one()
    if template_id:
        return AudiencePreview(int(total), int(total), 0)
    recent = session.exec(
        select(func.count()).select_from(Person).where(
            and_(*conds), Person.last_interaction_at > now - WINDOW  # type: ignore[operator]
        )
    ).one()
    return AudiencePreview(int(total), int(recent), int(total) - int(recent))


def _in_scope(session: Session, coordinator: Person, grid_id: int | None) -> bool:
    if not coordinator.is_coordinator or coordinator.coordinator_scope_id is None:
        return False
    scope = session.get(GridUnit, coordinator.coordinator_scope_id)
    if scope is None:
        return False
    if grid_id is None:
        return scope.parent_id is None  # the whole city needs a city-wide scope
    unit = session.get(GridUnit, grid_id)
    return unit is not None and unit.path.startswith(scope.path)


def create_campaign(session: Session, fx: Effects, *, coordinator_id: int, audience: Audience, text: str,
                    now: datetime, task_id: int | None = None) -> Campaign:
    """A coordinator's broadcast, ready to send once the caller commits and applies ``fx``."""
    coordinator = session.get(Person, coordinator_id)
    if coordinator is None or not _in_scope(session, coordinator, audience.grid_id):
        raise NotAllowed("audience outside the coordinator's scope")
    text = text.strip()
    if not text:
        raise ValueError("empty broadcast text")
    camp = Campaign(created_by_id=coordinator_id, audience=audience.to_dict(), text=text[:2000],
                    task_id=task_id, status=CampaignStatus.sending, created_at=now)
    session.add(camp)
    session.flush()
    session.add(AuditEntry(actor_id=coordinator_id, action="campaign.create", entity="campaign",
                           entity_id=camp.id, detail={"audience": audience.to_dict(), "chars": len(text)}, at=now))
    fx.campaigns.append(camp.id)  # type: ignore[arg-type]
    return camp


def recount(session: Session, *, campaign_id: int) -> None:
    """Set the campaign's live counters from its rows, in one UPDATE (atomic, self-healing: a
    worker that died mid-batch leaves nothing to correct)."""
    def n(status: DeliveryStatus) -> Any:
        return (select(func.count()).select_from(Delivery)
                .where(Delivery.campaign_id == campaign_id, Delivery.status == status).scalar_subquery())

    session.execute(
        update(Campaign).where(Campaign.id == campaign_id)  # type: ignore[arg-type]
        .values(sent=n(DeliveryStatus.sent), deferred=n(DeliveryStatus.deferred), failed=n(DeliveryStatus.failed))
        .execution_options(synchronize_session=False)
    )



def cancel_campaign(session: Session, *, campaign_id: int, actor_id: int, now: datetime) -> Campaign:
    """Stop a campaign: every message not yet sent is cancelled (those in flight finish)."""
    camp = session.get(Campaign, campaign_id)
    if camp is None:
        raise NotFound(f"campaign {campaign_id}")
    actor = session.get(Person, actor_id)
    if actor is None or not (actor.id == camp.created_by_id or _in_scope(
            session, actor, Audience.from_dict(camp.audience).grid_id)):
        raise NotAllowed("not this coordinator's campaign")
    if camp.status in (CampaignStatus.done, CampaignStatus.cancelled):
        return camp
    camp.status = CampaignStatus.cancelled
    camp.finished_at = now
    session.add(camp)
    session.flush()
    # Open rows are cancelled in the same transaction: a worker's claim (pending -> sending)
    # can then no longer win them. Deferred ones leave the "deferred" count.
    res = session.execute(
        update(Delivery)
        .where(Delivery.campaign_id == campaign_id,  # type: ignore[arg-type]
               Delivery.status.in_((DeliveryStatus.pending, DeliveryStatus.deferred)))  # type: ignore[attr-defined]
        .values(status=DeliveryStatus.cancelled)
    )
    recount(session, campaign_id=campaign_id)
    session.refresh(camp)
    session.add(AuditEntry(actor_id=actor_id, action="campaign.cancel", entity="campaign", entity_id=campaign_id,
                           detail={"cancelled_messages": res.rowcount, "sent": camp.sent}, at=now))  # type: ignore[attr-defined]
    return camp
