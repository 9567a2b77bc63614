"""A coordinator's scope: the subtree of the grid under ``Person.coordinator_scope_id``.

Every console query filters by it, and every record fetched by id goes through ``get_*``,
which answers NotFound for a record outside the subtree (not "forbidden": a town coordinator
should not learn what exists in another town).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, or_
from sqlmodel import Session, col, select

from models.exceptions import NotAllowed, NotFound
from models.tables import AED, Campaign, GridUnit, Level, Person, PersonStatus, Report, Task


@dataclass(frozen=True)
class Scope:
    person_id: int
    unit_id: int
    path: str
    name: str
    level: Level

    @property
    def city_wide(self) -> bool:
        return self.level == Level.city

    def units(self) -> Select[Any]:
        """SELECT of the ids of every unit in the subtree (the scope unit included)."""
        return select(GridUnit.id).where(col(GridUnit.path).startswith(self.path))

    def covers_path(self, path: str | None) -> bool:
        return bool(path) and str(path).startswith(self.path)


def scope_of(session: Session, person_id: int) -> Scope:
    person = session.get(Person, person_id)
    if person is None or not person.is_coordinator or person.coordinator_scope_id is None:
        raise NotAllowed("not a coordinator")
    if person.status != PersonStatus.active:
        raise NotAllowed("coordinator not active")
    unit = session.get(GridUnit, person.coordinator_scope_id)
    if unit is None:
        raise NotAllowed("coordinator scope missing")
    return Scope(int(person.id or 0), int(unit.id or 0), unit.path, unit.name, unit.level)


def person_filter(scope: Scope) -> ColumnElement[bool]:
    """People whose home grid is in the subtree, and coordinators scoped inside it. People
    with neither (e.g. unplaced) belong to the city only."""
    inside = or_(
        col(Person.home_grid_id).in_(scope.units()),
        and_(col(Person.home_grid_id).is_(None), col(Person.coordinator_scope_id).in_(scope.units())),
    )
    if scope.city_wide:
        return or_(inside, and_(col(Person.home_grid_id).is_(None), col(Person.coordinator_scope_id).is_(None)))
    return inside


def unit_in_scope(session: Session, scope: Scope, unit_id: int | None) -> GridUnit:
    unit = session.get(GridUnit, unit_id) if unit_id is not None else None
    if unit is None or not scope.covers_path(unit.path):
        raise NotFound(f"grid unit {unit_id}")
    return unit


def get_task(session: Session, scope: Scope, task_id: int) -> Task:
    task = session.get(Task, task_id)
    if task is None:
        raise NotFound(f"task {task_id}")
    unit_in_scope(session, scope, task.grid_id)
    return task


def get_person(session: Session, scope: Scope, person_id: int) -> Person:
    person = session.exec(select(Person).where(Person.id == person_id, person_filter(scope))).first()
    if person is None:
        raise NotFound(f"person {person_id}")
    return person


def get_report(session: Session, scope: Scope, report_id: int) -> Report:
    report = session.get(Report, report_id)
    if report is None:
        raise NotFound(f"report {report_id}")
    unit_in_scope(session, scope, report.grid_id)
    return report


def get_aed(session: Session, scope: Scope, aed_id: int) -> AED:
    aed = session.get(AED, aed_id)
    if aed is None:
        raise NotFound(f"aed {aed_id}")
    unit_in_scope(session, scope, aed.grid_id)
    return aed


def campaign_visible(session: Session, scope: Scope, camp: Campaign) -> bool:
    grid_id = (camp.audience or {}).get("grid_id")
    if grid_id is None:
        return scope.city_wide or camp.created_by_id == scope.person_id
    unit = session.get(GridUnit, grid_id)
    return unit is not None and scope.covers_path(unit.path)


def get_campaign(session: Session, scope: Scope, campaign_id: int) -> Campaign:
    camp = session.get(Campaign, campaign_id)
    if camp is None or not campaign_visible(session, scope, camp):
        raise NotFound(f"campaign {campaign_id}")
    return camp


def units_in_scope(session: Session, scope: Scope, *, levels: tuple[Level, ...] | None = None) -> list[GridUnit]:
    stmt = select(GridUnit).where(col(GridUnit.path).startswith(scope.path))
    if levels:
        stmt = stmt.where(col(GridUnit.level).in_(levels))
    return list(session.exec(stmt.order_by(col(GridUnit.path))))


def town_of_path(path: str) -> int | None:
    """The town id in a path "/city/town/village/grid/" (None for the city itself)."""
    ids = [p for p in path.split("/") if p]
    return int(ids[1]) if len(ids) >= 2 else None
