"""Periodic work, run by the one ``redgrid cron`` process (rq cron).

Cron expressions are evaluated in the cron process's local zone, so ``run_cron`` pins
``TZ`` to the display zone (Asia/Shanghai): "0 8 * * *" then means 08:00 in Dongyang.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from rq.cron import CronScheduler

from jobs import queues
from models.redisconn import connect_redis
from models.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Periodic:
    func: Callable[[], object]
    queue: str
    cron: str | None = None
    interval: int | None = None


# Filled by the jobs modules as they are written (reminders, reconciler, digests).
SCHEDULE: list[Periodic] = []
# Called once when a worker starts.
STARTUP: list[Callable[[], object]] = []


def build_scheduler(settings: Settings) -> CronScheduler:
    scheduler = CronScheduler(connection=connect_redis(settings, socket_timeout=None))
    for p in SCHEDULE:
        scheduler.register(p.func, queue_name=p.queue, cron=p.cron, interval=p.interval)
    return scheduler


def run_cron(settings: Settings) -> None:
    os.environ["TZ"] = settings.tz
    time.tzset()
    scheduler = build_scheduler(settings)
    log.info("cron: %d periodic jobs", len(SCHEDULE))
    scheduler.start()


def _register_jobs() -> None:
    """RedGrid's own periodic work (jobs/ modules); cron expressions are Asia/Shanghai."""
    from jobs.digest import daily_digest, weekly_hours
    from jobs.interactions import flush_interactions
    from jobs.reconcile import reconcile, reconcile_at_start

    SCHEDULE.extend([
        Periodic(reconcile, queues.DEFAULT, interval=300),  # rebuild lost jobs from the DB
        Periodic(flush_interactions, queues.DEFAULT, interval=60),  # models/interactions.py
        Periodic(daily_digest, queues.DEFAULT, cron="0 8 * * *"),  # coordinators, 08:00
        Periodic(weekly_hours, queues.BULK, cron="0 9 * * 1"),  # volunteers, Monday 09:00
    ])
    from jobs.aed import inspection_reminders

    SCHEDULE.append(Periodic(inspection_reminders, queues.DEFAULT, cron="0 9 1 * *"))  # AED keepers, 1st 09:00
    STARTUP.append(reconcile_at_start)

    from jobs import dispatch

    dispatch.register(SCHEDULE, STARTUP)  # recurring shifts, understaffing alerts, index warm-up


_register_jobs()

__all__ = ["SCHEDULE", "STARTUP", "Periodic", "build_scheduler", "queues", "run_cron"]
