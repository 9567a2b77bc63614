"""An in-process spatial index over volunteers: H3 buckets and an outward ring search.

Pure (no I/O). The service layer keeps it current (``services.refresh_index`` upserts the
people whose ``Person.updated_at`` passed the watermark), so a search touches only the
buckets near a task instead of every volunteer in the city.

Why the ring search is exact, not approximate: any point at grid distance >= k from the
task's cell is reached from the task by a path that enters some ring-k cell, so it is at
least ``L(k) = min over ring-k cells of (haversine(task, centre) - circumradius)`` away.
Rings are added while ``L(k)`` could still beat the best keys found; a candidate's geodesic
is computed only when its lower-bound key reaches the top of the heap. The result equals
``matching.brute_force`` exactly (tests/test_index.py checks it with hypothesis).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator, Mapping
from datetime import datetime

import h3

from dispatcher.geo import EARTH_R
from dispatcher.matching import (
    HAVERSINE_LOWER,
    NO_FACTS,
    Clock,
    Facts,
    Ranked,
    TaskSpec,
    Volunteer,
    bonus_parts,
    facts_ok,
    geodesic_m,
    haversine_m,
    max_bonus,
    ranked_from,
    static_ok,
)
from models.settings import DispatchPolicy


class VolunteerIndex:
    def __init__(self, res: int = 8) -> None:
        self.res = res
        self._people: dict[int, Volunteer] = {}
        self._cell_of: dict[int, str] = {}
        self._buckets: dict[str, dict[int, Volunteer]] = {}
        self._kind_buckets: dict[tuple[str, str], dict[int, tuple[Volunteer, float, float, float]]] = {}
        self._centre: dict[str, tuple[float, float]] = {}
        self._circum: dict[str, float] = {}
        # refresh bookkeeping, kept by the service layer
        self.watermark: datetime | None = None
        self.refreshed_at: datetime | None = None
        self.units: dict[int, tuple[int, ...]] = {}  # GridUnit id -> ancestor ids

    # --- upkeep ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._people)

    def __contains__(self, person_id: object) -> bool:
        return person_id in self._people

    def get(self, person_id: int) -> Volunteer | None:
        return self._people.get(person_id)

    def people(self) -> Iterator[Volunteer]:
        return iter(self._people.values())

    def upsert(self, v: Volunteer) -> None:
        """Add or replace a volunteer; a move or a change of kinds re-buckets them."""
        cell = h3.latlng_to_cell(v.lat, v.lng, self.res)
        if v.id in self._people:
            self.remove(v.id)
        self._people[v.id] = v
        self._cell_of[v.id] = cell
        self._buckets.setdefault(cell, {})[v.id] = v
        # Per (cell, kind) buckets: a search visits only the people opted in to the task's
        # kind, with the trigonometry of their position done once here.
        lat_r, lng_r = math.radians(v.lat), math.radians(v.lng)
        entry = (v, lat_r, lng_r, math.cos(lat_r))
        for kind in v.kinds:
            self._kind_buckets.setdefault((cell, kind), {})[v.id] = entry

    def remove(self, person_id: int) -> None:
        """Forget a person (left, suspended for good, no longer a volunteer, no position)."""
        v = self._people.pop(person_id, None)
        cell = self._cell_of.pop(person_id, None)
        if v is None or cell is None:
            return
        for key, bucket in [(cell, self._buckets)] + [((cell, k), self._kind_buckets) for k in v.kinds]:
            b = bucket.get(key)  # type: ignore[call-overload]
            if b is not None:
                b.pop(person_id, None)
                if not b:
                    del bucket[key]  # type: ignore[arg-type]

    # --- geometry -------------------------------------------------------------------------

    def _cell_geometry(self, cell: str) -> tuple[float, float, float]:
        centre = self._centre.get(cell)
        if centre is None:
            centre = self._centre[cell] = h3.cell_to_latlng(cell)
            # H3 edges are great-circle arcs, so the farthest point from the centre is a
            # vertex; a metre of slack covers rounding.
            self._circum[cell] = 1.0 + max(
                haversine_m(centre[0], centre[1], la, ln) for la, ln in h3.cell_to_boundary(cell)
            )
        return centre[0], centre[1], self._circum[cell]

    def _rings(self, lat: float, lng: float) -> Iterator[tuple[list[str], float]]:
        """(cells of ring k, lower bound in metres on the distance to any point in ring >= k)."""
        origin = h3.latlng_to_cell(lat, lng, self.res)
        k = 0
        while True:
            cells = [origin] if k == 0 else list(h3.grid_ring(origin, k))
            bound = math.inf
            for c in cells:
                clat, clng, circ = self._cell_geometry(c)
                bound = min(bound, max(0.0, haversine_m(lat, lng, clat, clng) - circ))
            yield cells, (0.0 if k == 0 else bound)
            k += 1

    def near(self, lat: float, lng: float, radius_m: float) -> list[Volunteer]:
        """Everyone who may be within ``radius_m`` (a superset: the caller measures)."""
        out: list[Volunteer] = []
        for cells, bound in self._rings(lat, lng):
            if bound * HAVERSINE_LOWER > radius_m:
                break
            for c in cells:
                bucket = self._buckets.get(c)
                if not bucket:
                    continue
                for v in bucket.values():
                    if haversine_m(lat, lng, v.lat, v.lng) * HAVERSINE_LOWER <= radius_m:
                        out.append(v)
        return out

    # --- search ---------------------------------------------------------------------------

    def search(
        self,
        task: TaskSpec,
        *,
        facts: Mapping[int, Facts],
        policy: DispatchPolicy,
        now: datetime,
        radius_m: float,
        limit: int | None = None,
    ) -> list[Ranked]:
        """The ``limit`` best candidates within ``radius_m``, best first (all when None)."""
        slack = max_bonus(task, policy)
        band = policy.distance_band_m
        clock = Clock.of(task, now)
        # heap entries: (key or a lower bound of it, person id, stage, payload); stage 0 has
        # passed the static filters only, stage 1 also its record, stage 2 is exact
        heap: list[tuple[float, int, int, object]] = []
        out: list[Ranked] = []
        rings = self._rings(task.lat, task.lng)
        cells, _bound = next(rings)  # ring 0: the task's own cell
        frontier = -slack  # lower bound on the key of anyone in a ring not yet admitted
        exhausted = False
        want = math.inf if limit is None else limit
        while len(out) < want:
            if not exhausted and (not heap or heap[0][0] >= frontier):
                for c in cells:
                    bucket = self._kind_buckets.get((c, task.kind))
                    if bucket:
                        self._admit(bucket, task, now, clock, radius_m, slack, heap)
                cells, bound = next(rings)
                if bound * HAVERSINE_LOWER > radius_m:
                    exhausted, frontier = True, math.inf
                else:
                    frontier = bound * HAVERSINE_LOWER - slack
                continue
            if not heap:
                break
            _key, pid, stage, payload = heapq.heappop(heap)
            if stage == 2:
                out.append(payload)  # type: ignore[arg-type]
            elif stage == 1:
                v, parts = payload  # type: ignore[misc]
                d = geodesic_m(task.lat, task.lng, v.lat, v.lng)
                if d <= radius_m:
                    r = ranked_from(v.id, parts, d, policy)
                    heapq.heappush(heap, (r.key, pid, 2, r))
            else:
                v, lower = payload  # type: ignore[misc]
                f = facts.get(v.id, NO_FACTS)
                if facts_ok(v, f, task, policy):
                    parts = bonus_parts(v, f, task, policy)
                    b = sum(p for _, p in parts)
                    heapq.heappush(heap, (lower - band * b, pid, 1, (v, parts)))
        return out

    @staticmethod
    def _admit(
        bucket: dict[int, tuple[Volunteer, float, float, float]],
        task: TaskSpec,
        now: datetime,
        clock: Clock,
        radius_m: float,
        slack: float,
        heap: list[tuple[float, int, int, object]],
    ) -> None:
        # haversine inlined with the task's trigonometry hoisted: this loop is the hot path
        t_lat, t_lng = math.radians(task.lat), math.radians(task.lng)
        t_cos = math.cos(t_lat)
        limit = radius_m / HAVERSINE_LOWER
        sin, asin, sqrt = math.sin, math.asin, math.sqrt
        for v, lat_r, lng_r, cos_lat in bucket.values():
            if not (v.active and v.subscribed) or not static_ok(v, task, now, clock):
                continue
            a = sin((lat_r - t_lat) / 2) ** 2 + t_cos * cos_lat * sin((lng_r - t_lng) / 2) ** 2
            hav = 2 * EARTH_R * asin(min(1.0, sqrt(a)))
            if hav > limit:
                continue
            lower = hav * HAVERSINE_LOWER
            heapq.heappush(heap, (lower - slack, v.id, 0, (v, lower)))
