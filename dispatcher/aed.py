"""Nearest AEDs: pure ranking over snapshots (no I/O).

Opening hours are "24h" or one or more "HH:MM-HH:MM" ranges separated by commas
(a range may cross midnight, "20:00-06:00").
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, time

from dispatcher.geo import distance_m, haversine_m

_RANGE = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*[-–~]\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class AEDPoint:
    id: int
    name: str
    lat: float
    lng: float
    hours: str
    in_service: bool


@dataclass(frozen=True)
class AEDHit:
    aed: AEDPoint
    distance_m: float
    open_now: bool
    opens_at: time | None  # when closed: the next opening time today or tomorrow


def parse_hours(hours: str) -> list[tuple[time, time]] | None:
    """None means always open; an unreadable value is treated as always open (fail safe)."""
    text = hours.strip().lower()
    if text in ("", "24h", "24小时", "全天"):
        return None
    ranges = []
    for part in re.split(r"[,，;；]", text):
        m = _RANGE.match(part)
        if not m:
            return None
        h1, m1, h2, m2 = (int(g) for g in m.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59:
            return None
        ranges.append((time(h1, m1), time(23, 59, 59) if h2 == 24 else time(h2, m2)))
    return ranges


def is_open(hours: str, at: time) -> bool:
    ranges = parse_hours(hours)
    if ranges is None:
        return True
    for start, end in ranges:
        if start <= end:
            if start <= at < end:
                return True
        elif at >= start or at < end:  # crosses midnight
            return True
    return False


def next_opening(hours: str, at: time) -> time | None:
    ranges = parse_hours(hours)
    if ranges is None or is_open(hours, at):
        return None
    later = sorted(s for s, _ in ranges if s > at)
    return later[0] if later else min(s for s, _ in ranges)


def hours_label(hours: str) -> str:
    return "全天开放" if parse_hours(hours) is None else hours.replace("-", "–")


def rank_all(points: list[AEDPoint], lat: float, lng: float, at: time, k: int = 3) -> list[AEDHit]:
    """The k nearest in-service AEDs, open ones first when an open one is about as near.

    A closed AED is listed only after the open ones unless it is more than 3x closer:
    a locked cabinet 100 m away loses to an open one 250 m away, not to one 5 km away.
    Every point gets the exact geodesic: the reference ``nearest`` must reproduce.
    """
    hits = [
        AEDHit(p, distance_m(lat, lng, p.lat, p.lng), is_open(p.hours, at), next_opening(p.hours, at))
        for p in points
        if p.in_service
    ]
    hits.sort(key=lambda h: h.distance_m)
    nearest_open = next((h.distance_m for h in hits if h.open_now), None)

    def key(h: AEDHit) -> tuple[int, float]:
        if h.open_now or nearest_open is None or h.distance_m * 3 < nearest_open:
            return (0, h.distance_m)
        return (1, h.distance_m)

    return sorted(hits, key=key)[:k]


def candidates(points: list[AEDPoint], lat: float, lng: float, at: time, k: int) -> list[AEDPoint]:
    """The few in-service AEDs that can make the top ``k``, so only they get the (slow) geodesic.

    ``rank_all`` ranks open ones first unless a closed one is 3x closer, so its top k always
    lie among the k nearest open and the k nearest closed. Haversine orders within 0.5% of the
    geodesic: anything within 1% of each group's k-th haversine distance is kept.
    """
    points = [p for p in points if p.in_service]
    if len(points) <= 2 * k:
        return points
    keep: list[AEDPoint] = []
    opening: dict[str, bool] = {}  # a few distinct hours strings among many AEDs: parse each once
    for p in points:
        if p.hours not in opening:
            opening[p.hours] = is_open(p.hours, at)
    for group in (
        [p for p in points if opening[p.hours]],
        [p for p in points if not opening[p.hours]],
    ):
        ranked = sorted(((haversine_m(lat, lng, p.lat, p.lng), p) for p in group), key=lambda dp: dp[0])
        if len(ranked) > k:
            edge = ranked[k - 1][0] * 1.01 + 1.0
            ranked = [dp for dp in ranked if dp[0] <= edge]
        keep += [p for _d, p in ranked]
    return keep


def nearest(points: list[AEDPoint], lat: float, lng: float, at: time, k: int = 3) -> list[AEDHit]:
    """``rank_all``'s answer, computing exact distances only for the candidates."""
    return rank_all(candidates(points, lat, lng, at, k), lat, lng, at, k)


def inspection_due(last_inspected_on: date | None, today: date, every_days: int) -> bool:
    """An AED never inspected, or not for ``every_days``, is due (batteries and pads expire
    quietly; a monthly look is what keepers are asked for)."""
    return last_inspected_on is None or (today - last_inspected_on).days >= every_days
