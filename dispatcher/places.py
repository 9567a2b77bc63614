"""Finding grid units by name or position (service functions: a session in, rows out)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlmodel import Session, col, or_, select

from dispatcher.geo import haversine_m
from models.tables import GridUnit, Level

# a position farther than this from every grid centroid is outside Dongyang's grids
MAX_GRID_DISTANCE_M = 6_000.0


@dataclass(frozen=True)
class Place:
    grid: GridUnit
    village: GridUnit | None
    town: GridUnit | None

    @property
    def label(self) -> str:
        """ "江北街道 · 东丰村 · 第3网格" """
        parts = [u.name for u in (self.town, self.village) if u is not None]
        short = self.grid.name
        if self.village is not None and short.startswith(self.village.name):
            short = short[len(self.village.name) :] or short
        return " · ".join([*parts, short])


def path_ids(unit: GridUnit) -> tuple[int, ...]:
    """Ancestor ids from the materialized path, root first, ending with the unit itself."""
    ids = [int(p) for p in (unit.path or "").split("/") if p.strip().isdigit()]
    if not ids or ids[-1] != unit.id:
        ids.append(int(unit.id or 0))
    return tuple(ids)


def ancestor_chain(session: Session, grid_id: int) -> list[GridUnit]:
    """The unit and its ancestors, root first (one query)."""
    unit = session.get(GridUnit, grid_id)
    if unit is None:
        return []
    ids = path_ids(unit)
    rows = {u.id: u for u in session.exec(select(GridUnit).where(col(GridUnit.id).in_(ids)))}
    rows[unit.id] = unit
    return [rows[i] for i in ids if i in rows]


def ancestors(session: Session, unit: GridUnit) -> dict[Level, GridUnit]:
    """The unit and its ancestors by level."""
    found = {u.level: u for u in ancestor_chain(session, unit.id or 0)}
    found[unit.level] = unit
    return found


def place_of(session: Session, grid: GridUnit) -> Place:
    up = ancestors(session, grid)
    return Place(grid=grid, village=up.get(Level.village), town=up.get(Level.town))


def grid_at(session: Session, *, lat: float, lng: float) -> GridUnit | None:
    """The grid whose centroid is nearest (grids are small; Voronoi of centroids is enough)."""
    d = 0.06  # degrees, ~6 km: candidates only from a box around the point
    rows = session.exec(
        select(GridUnit).where(
            GridUnit.level == Level.grid,
            col(GridUnit.lat).between(lat - d, lat + d),
            col(GridUnit.lng).between(lng - d, lng + d),
        )
    ).all()
    if not rows:
        return None
    best = min(rows, key=lambda g: haversine_m(lat, lng, g.lat, g.lng))
    return best if haversine_m(lat, lng, best.lat, best.lng) <= MAX_GRID_DISTANCE_M else None


def find_units(session: Session, text: str, *, levels: tuple[Level, ...], limit: int = 8) -> list[GridUnit]:
    """Units named exactly `text` first, then names containing it; codes match exactly."""
    text = text.strip()
    if not text:
        return []
    exact = session.exec(
        select(GridUnit).where(
            col(GridUnit.level).in_(levels), or_(GridUnit.name == text, GridUnit.code == text)
        )
    ).all()
    if exact:
        return list(exact)[:limit]
    like = session.exec(
        select(GridUnit)
        .where(col(GridUnit.level).in_(levels), col(GridUnit.name).contains(text))
        .order_by(GridUnit.code)
        .limit(limit)
    ).all()
    return list(like)


def grids_under(session: Session, unit: GridUnit, *, limit: int = 50) -> list[GridUnit]:
    return list(
        session.exec(
            select(GridUnit)
            .where(GridUnit.level == Level.grid, col(GridUnit.path).startswith(unit.path))
            .order_by(GridUnit.code)
            .limit(limit)
        ).all()
    )


def in_subtree(unit: GridUnit, scope: GridUnit) -> bool:
    return unit.path.startswith(scope.path)

