"""RQ jobs of the dispatcher: offer waves, recurring shifts, understaffing alerts.

Each job takes ids only and opens its own session through ``runtime()``; the service call
records effects, the transaction commits, then the effects are applied (next wave, offers to
send). Wave jobs have deterministic ids (``wave-<task>-<n>``, see jobs/effects.py), and
``services.run_wave`` claims the wave number with a guarded update, so a repeat is a no-op.

The volunteer index is kept per database in this module. A worker warms it once at start
(STARTUP hook); RQ forks a work-horse per job, which inherits that copy and brings it up to
date from the ``Person.updated_at`` watermark, so each job reads only the people changed
since the worker started. (It is a cache of rows, not a connection or settings object.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from dispatcher import services
from dispatcher.effects import Effects
from dispatcher.index import VolunteerIndex
from jobs import sos
from jobs.runtime import Runtime, runtime
from models.db import utcnow
from models.tables import Task, Urgency

log = logging.getLogger(__name__)

_INDEXES: dict[str, VolunteerIndex] = {}


def volunteer_index(rt: Runtime) -> VolunteerIndex:
    key = rt.settings.effective_database_url
    idx = _INDEXES.get(key)
    if idx is None or idx.res != rt.settings.dispatch.index_h3_res:
        idx = _INDEXES[key] = VolunteerIndex(res=rt.settings.dispatch.index_h3_res)
    return idx


def forget_indexes() -> None:
    """Drop cached indexes (tests that wipe the database between cases)."""
    _INDEXES.clear()


def warm_index() -> int:
    """Load (or incrementally refresh) this process's index: at worker start, and in the
    worker's parent before each wave job is forked."""
    rt = runtime()
    idx = volunteer_index(rt)
    with rt.sessions() as s:
        n = services.refresh_index(s, idx, now=utcnow())
    log.debug("dispatch: volunteer index refreshed: %d changed, %d people", n, len(idx))
    return n


def _apply(rt: Runtime, fx: Effects, *, urgent: bool = False) -> None:
    if fx:
        from jobs.effects import apply

        apply(rt.redis, fx, urgent=urgent)


def run_wave(task_id: int, wave: int) -> str:
    """Offer task ``task_id`` to wave ``wave`` (and plan the next one)."""
    rt = runtime()
    idx = volunteer_index(rt)
    fx = Effects()
    now = utcnow()
    with rt.sessions() as s, s.begin():
        services.refresh_index(s, idx, now=now)
        # an SOS brings its own radius rule and cap, then words its alerts (jobs/sos.py)
        plan = sos.wave_policy(s, task_id=task_id, policy=rt.settings.dispatch)
        policy = plan.policy if plan is not None else rt.settings.dispatch
        out = services.run_wave(s, fx, task_id=task_id, wave=wave, now=now, index=idx, policy=policy,
                                urban=plan.urban if plan is not None else None)
        if plan is not None:
            sos.after_wave(s, fx, task_id=task_id, out=out, now=now, policy=policy)
        task = s.get(Task, task_id)
        urgent = task is not None and task.urgency == Urgency.emergency
    _apply(rt, fx, urgent=urgent)
    log.info("wave %s of task %s: %s (%d offered)", wave, task_id, out.status, len(out.offered))
    return out.status


def expand_recurrences() -> int:
    """Periodic: create the coming occurrences of weekly shifts."""
    rt = runtime()
    with rt.sessions() as s, s.begin():
        created = services.expand_recurrences(s, now=utcnow(), policy=rt.settings.dispatch)
    return len(created)


def check_understaffed() -> int:
    """Periodic: alert coordinators about shifts short of people (once per shift)."""
    rt = runtime()
    fx = Effects()
    with rt.sessions() as s, s.begin():
        alerted = services.check_understaffed(s, fx, now=utcnow(), policy=rt.settings.dispatch)
    _apply(rt, fx)
    return len(alerted)


def register(schedule: list[Any], startup: list[Callable[[], object]]) -> None:
    """Called by jobs/schedule.py: the dispatcher's periodic work and its start-up hook."""
    from jobs import queues
    from jobs.schedule import Periodic

    schedule.extend(
        [
            Periodic(expand_recurrences, queues.DEFAULT, cron="15 * * * *"),  # hourly
            Periodic(check_understaffed, queues.DEFAULT, cron="*/30 * * * *"),
        ]
    )
    startup.append(warm_index)
