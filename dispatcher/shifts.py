"""Shift rules: capacity, waitlist order, overlap, self-cancel cut-off, check-in window, hours
credited, and weekly recurrence. Pure: times in (aware UTC), decisions out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from zoneinfo import ZoneInfo

from models.exceptions import BadRecurrence

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
WEEKDAYS = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}


@dataclass(frozen=True)
class Window:
    id: int
    starts_at: datetime
    ends_at: datetime


def open_slots(slots: int, accepted: int) -> int:
    return max(0, slots - accepted)


def clash(start: datetime, end: datetime, others: Iterable[Window]) -> Window | None:
    """The first commitment (earliest start) that overlaps [start, end), if any."""
    hits = [w for w in others if w.starts_at < end and start < w.ends_at]
    return min(hits, key=lambda w: (w.starts_at, w.id)) if hits else None


def can_self_cancel(starts_at: datetime, now: datetime, cutoff_s: int) -> bool:
    """A place may be given back until ``cutoff_s`` before the start (default 2 h)."""
    return now <= starts_at - timedelta(seconds=cutoff_s)


def next_waitlist_pos(positions: Iterable[int | None]) -> int:
    return max((p for p in positions if p is not None), default=0) + 1


def waitlist_rank(pos: int, positions: Iterable[int | None]) -> int:
    """1-based place in the queue: positions are never renumbered, so count those ahead."""
    return 1 + sum(1 for p in positions if p is not None and p < pos)


def checkin_open(starts_at: datetime, ends_at: datetime, now: datetime, early_s: int) -> bool:
    return starts_at - timedelta(seconds=early_s) <= now <= ends_at


def credited_hours(
    checked_in_at: datetime, now: datetime, starts_at: datetime, ends_at: datetime, extra_h: float
) -> float:
    """From check-in to check-out, capped at the task's length plus ``extra_h``; 0.1 h steps."""
    worked = max(0.0, (now - checked_in_at).total_seconds() / 3600)
    cap = max(0.0, (ends_at - starts_at).total_seconds() / 3600) + extra_h
    return round(min(worked, cap), 1)


def year_bounds(now: datetime) -> tuple[datetime, datetime]:
    """The Asia/Shanghai calendar year holding ``now``, as aware datetimes."""
    y = now.astimezone(LOCAL_TZ).year
    return datetime(y, 1, 1, tzinfo=LOCAL_TZ), datetime(y + 1, 1, 1, tzinfo=LOCAL_TZ)


def understaffed(slots: int, accepted: int, starts_at: datetime, now: datetime, ahead_s: int) -> bool:
    """Short of people and starting within the alert horizon (not yet started)."""
    return accepted < slots and now < starts_at <= now + timedelta(seconds=ahead_s)


# --- weekly recurrence ----------------------------------------------------------------------


def parse_weekly(rule: str) -> tuple[int, ...]:
    """ "WEEKLY:TU,FR" -> (1, 4). Refuses anything else rather than guessing."""
    head, _, days = rule.strip().upper().partition(":")
    if head != "WEEKLY" or not days:
        raise BadRecurrence(rule)
    try:
        out = sorted({WEEKDAYS[d.strip()] for d in days.split(",") if d.strip()})
    except KeyError:
        raise BadRecurrence(rule) from None
    if not out:
        raise BadRecurrence(rule)
    return tuple(out)


def occurrences(
    rule: str,
    first_start: datetime,
    first_end: datetime,
    *,
    after: datetime,
    until: datetime,
) -> list[tuple[datetime, datetime]]:
    """Occurrences of a weekly series with start in (max(first_start, after), until].

    The first occurrence is the template task itself, so it is never repeated. Times keep the
    template's local wall-clock time (09:00 Shanghai stays 09:00) and its length.
    """
    days = parse_weekly(rule)
    local_first = first_start.astimezone(LOCAL_TZ)
    clock: time = local_first.timetz().replace(tzinfo=None)
    length = first_end - first_start
    lower = max(first_start, after)
    out: list[tuple[datetime, datetime]] = []
    d: date = local_first.date()
    last = until.astimezone(LOCAL_TZ).date()
    while d <= last:
        if d.weekday() in days:
            start = datetime.combine(d, clock, tzinfo=LOCAL_TZ).astimezone(first_start.tzinfo)
            if lower < start <= until:
                out.append((start, start + length))
        d += timedelta(days=1)
    return out


def missing_occurrences(
    wanted: Sequence[tuple[datetime, datetime]], existing_starts: Iterable[datetime]
) -> list[tuple[datetime, datetime]]:
    have = set(existing_starts)
    return [w for w in wanted if w[0] not in have]
