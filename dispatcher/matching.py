"""Who may be offered a task, and in what order. Pure: snapshots in, decisions out.

Two kinds of input describe a volunteer:

- ``Volunteer`` — what the person *is* (status, position, kinds, certificates, quiet hours,
  place in the grid tree). It changes rarely and lives in the spatial index.
- ``Facts`` — what the person has *done* (commitments, recent work, answer history). It is
  read from the assignments for the few people near a task, at the moment of the search.

A search keeps the people who pass every hard filter (``eligible``) within the radius and
orders them by ``key = distance - distance_band_m * bonus``: distance dominates, and the
soft rules (fairness, reliability, continuity, locality) can move a person ahead of someone
up to one band's worth of weighted distance nearer. Emergencies rank by distance alone
(the nearest responders matter, not who has worked least). Ties break by person id, so the
order is total and the index and the brute-force scan agree exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from dispatcher.geo import distance_m, haversine_m
from models.settings import DispatchPolicy

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
# The spherical (haversine) distance never exceeds the WGS-84 geodesic by more than ~0.6%
# at these latitudes; shrinking it by 1% makes it a safe lower bound.
HAVERSINE_LOWER = 0.99


geodesic_m = distance_m  # the dispatcher's name for it


@dataclass(frozen=True, slots=True)
class Volunteer:
    """A volunteer as the index knows them (built from a Person row and its certificates)."""

    id: int
    lat: float
    lng: float
    active: bool = True  # status == active and is_volunteer
    subscribed: bool = True
    kinds: frozenset[str] = frozenset()
    certs: tuple[tuple[str, date | None], ...] = ()  # (skill, expires_on)
    quiet: tuple[int, int] | None = None  # (start, end) minutes after local midnight
    weekly_cap_hours: float | None = None
    units: tuple[int, ...] = ()  # ancestor GridUnit ids, city first, home grid last
    name: str = ""


@dataclass(frozen=True, slots=True)
class Facts:
    """A volunteer's record, as far as one search needs it."""

    busy: tuple[tuple[datetime, datetime], ...] = ()  # accepted / checked-in windows
    load: tuple[tuple[datetime, float], ...] = ()  # (start, hours) of accepted/checked-in/completed
    recent_hours: float = 0.0  # completed in the fairness window
    recent_tasks: int = 0
    offers: int = 0  # answered or expired offers, lifetime
    accepts: int = 0
    shows: int = 0  # completed
    no_shows: int = 0
    beneficiaries: frozenset[str] = frozenset()  # served before


NO_FACTS = Facts()


@dataclass(frozen=True, slots=True)
class TaskSpec:
    id: int
    kind: str
    lat: float
    lng: float
    starts_at: datetime
    ends_at: datetime
    required_skills: tuple[str, ...] = ()
    urgency: str = "routine"
    beneficiary: str | None = None
    units: tuple[int, ...] = ()  # ancestor GridUnit ids of the task's grid, city first
    asked: frozenset[int] = frozenset()  # people who already have an assignment on it

    @property
    def emergency(self) -> bool:
        return self.urgency == "emergency"

    @property
    def hours(self) -> float:
        return max(0.0, (self.ends_at - self.starts_at).total_seconds() / 3600)


@dataclass(frozen=True, slots=True)
class Ranked:
    person_id: int
    distance_m: float
    key: float
    bonus: float = 0.0
    parts: tuple[tuple[str, float], ...] = field(default=())


# --- hard filters ---------------------------------------------------------------------------


def local_minute(now: datetime) -> int:
    t = now.astimezone(LOCAL_TZ)
    return t.hour * 60 + t.minute


def in_quiet_hours(quiet: tuple[int, int] | None, now: datetime, *, minute: int | None = None) -> bool:
    if quiet is None:
        return False
    start, end = quiet
    if start == end:
        return False
    m = local_minute(now) if minute is None else minute
    if start < end:
        return start <= m < end
    return m >= start or m < end  # the quiet period wraps midnight (22:00-07:00)


def missing_skills(certs: Iterable[tuple[str, date | None]], required: Iterable[str], on: date) -> list[str]:
    """Required skills the person lacks, or holds only with a certificate expired by ``on``."""
    valid = {skill for skill, expires in certs if expires is None or expires >= on}
    return [s for s in required if s not in valid]


def week_start(moment: datetime) -> datetime:
    """Monday 00:00 Asia/Shanghai of the week holding ``moment``."""
    local = moment.astimezone(LOCAL_TZ)
    monday = (local - timedelta(days=local.weekday())).date()
    return datetime(monday.year, monday.month, monday.day, tzinfo=LOCAL_TZ)


def week_hours(load: Iterable[tuple[datetime, float]], moment: datetime) -> float:
    start = week_start(moment)
    end = start + timedelta(days=7)
    return sum(h for s, h in load if start <= s < end)


def overlaps(a_start: datetime, a_end: datetime, b_start: datetime, b_end: datetime) -> bool:
    return a_start < b_end and b_start < a_end


@dataclass(frozen=True, slots=True)
class Clock:
    """What one search computes once instead of per person: local minute and task day."""

    minute: int
    task_day: date

    @classmethod
    def of(cls, task: TaskSpec, now: datetime) -> Clock:
        return cls(local_minute(now), task.starts_at.astimezone(LOCAL_TZ).date())


def static_ok(v: Volunteer, task: TaskSpec, now: datetime, clock: Clock | None = None) -> bool:
    """The filters that need only the index's snapshot (cheap; applied first)."""
    if not (v.active and v.subscribed):
        return False
    if task.kind not in v.kinds:
        return False
    clock = clock or Clock.of(task, now)
    if task.required_skills and missing_skills(v.certs, task.required_skills, clock.task_day):
        return False
    return task.emergency or not in_quiet_hours(v.quiet, now, minute=clock.minute)


def facts_ok(v: Volunteer, f: Facts, task: TaskSpec, policy: DispatchPolicy) -> bool:
    """The filters that need the person's record (asked before, overlap, weekly cap)."""
    if v.id in task.asked:
        return False
    if any(overlaps(s, e, task.starts_at, task.ends_at) for s, e in f.busy):
        return False
    cap = v.weekly_cap_hours if v.weekly_cap_hours is not None else policy.weekly_cap_hours
    load = week_hours(f.load, task.starts_at) if f.load else 0.0
    return load + task.hours <= cap + 1e-9


def eligible(v: Volunteer, f: Facts, task: TaskSpec, policy: DispatchPolicy, now: datetime) -> bool:
    return static_ok(v, task, now) and facts_ok(v, f, task, policy)


# --- ranking --------------------------------------------------------------------------------


def fairness(f: Facts) -> float:
    """1 for someone with no recent work, falling as recent tasks and hours pile up."""
    return 1.0 / (1.0 + f.recent_tasks + f.recent_hours / 4.0)


def reliability(f: Facts) -> float:
    """Mean of accept rate and show-up rate, each smoothed so a newcomer sits at 0.5."""
    # clamped: the search bounds rely on every soft component lying in [0, 1], even when a
    # record is inconsistent (more accepts than offers)
    accept = min(1.0, (f.accepts + 1) / (max(f.offers, f.accepts) + 2))
    show = (f.shows + 1) / (f.shows + f.no_shows + 2)
    return (accept + show) / 2


def continuity(f: Facts, task: TaskSpec) -> float:
    return 1.0 if task.beneficiary and task.beneficiary in f.beneficiaries else 0.0


def locality(v: Volunteer, task: TaskSpec) -> float:
    """Same grid 1, same village 0.6, same town 0.3 (units are city, town, village, grid)."""
    shared = 0
    for a, b in zip(v.units, task.units, strict=False):
        if a != b:
            break
        shared += 1
    return {4: 1.0, 3: 0.6, 2: 0.3}.get(min(shared, 4), 0.0)


def max_bonus(task: TaskSpec, policy: DispatchPolicy) -> float:
    """The most any person's soft rules can subtract from their key (for search bounds)."""
    if task.emergency:
        return 0.0
    # continuity can only score when the task names a beneficiary: a tighter bound means a
    # smaller search
    weights = [policy.w_fairness, policy.w_reliability, policy.w_locality]
    if task.beneficiary:
        weights.append(policy.w_continuity)
    return max(0.0, policy.distance_band_m) * sum(max(0.0, w) for w in weights)


def bonus_parts(
    v: Volunteer, f: Facts, task: TaskSpec, policy: DispatchPolicy
) -> tuple[tuple[str, float], ...]:
    if task.emergency:
        return ()
    return (
        ("fairness", policy.w_fairness * fairness(f)),
        ("reliability", policy.w_reliability * reliability(f)),
        ("continuity", policy.w_continuity * continuity(f, task)),
        ("locality", policy.w_locality * locality(v, task)),
    )


def ranked_from(
    person_id: int, parts: tuple[tuple[str, float], ...], distance: float, policy: DispatchPolicy
) -> Ranked:
    # The one place a key is computed: the index and the scan must agree to the last bit.
    b = sum(p for _, p in parts)
    return Ranked(person_id, distance, distance - policy.distance_band_m * b, b, parts)


def score(v: Volunteer, f: Facts, task: TaskSpec, policy: DispatchPolicy, distance: float) -> Ranked:
    return ranked_from(v.id, bonus_parts(v, f, task, policy), distance, policy)


def sort_key(r: Ranked) -> tuple[float, int]:
    return (r.key, r.person_id)


def brute_force(
    volunteers: Iterable[Volunteer],
    task: TaskSpec,
    *,
    facts: Mapping[int, Facts],
    policy: DispatchPolicy,
    now: datetime,
    radius_m: float,
    limit: int | None = None,
) -> list[Ranked]:
    """Check everyone: the reference the index must reproduce, and the benchmark's baseline.

    A haversine bound skips the geodesic for people who cannot be inside the radius; the
    answer is the same as computing the geodesic for everyone, only cheaper.
    """
    out: list[Ranked] = []
    clock = Clock.of(task, now)
    for v in volunteers:
        if not static_ok(v, task, now, clock):
            continue
        if haversine_m(task.lat, task.lng, v.lat, v.lng) * HAVERSINE_LOWER > radius_m:
            continue
        f = facts.get(v.id, NO_FACTS)
        if not facts_ok(v, f, task, policy):
            continue
        d = geodesic_m(task.lat, task.lng, v.lat, v.lng)
        if d > radius_m:
            continue
        out.append(score(v, f, task, policy, d))
    out.sort(key=sort_key)
    return out if limit is None else out[:limit]
