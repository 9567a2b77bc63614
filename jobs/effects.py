"""Turn committed Effects into RQ jobs. Deterministic job ids make a repeat a no-op."""

from __future__ import annotations

from datetime import UTC, datetime

import redis
from rq import Queue, Retry
from rq.exceptions import NoSuchJobError

from dispatcher.effects import Effects
from jobs import queues


def _enqueue_once(q: Queue, job_id: str, func: str, *args: object, at: datetime | None = None) -> None:
    # A job id already waiting (queued or scheduled) means the work is already planned; a
    # scheduled one asked for sooner (a wave everyone declined) is moved earlier, never later.
    existing = q.fetch_job(job_id)
    status = existing.get_status(refresh=True) if existing is not None else None
    if existing is not None and status == "scheduled":
        registry = q.scheduled_job_registry
        wanted = at if at is not None else datetime.now(UTC)
        try:
            if wanted < registry.get_scheduled_time(existing):
                registry.schedule(existing, wanted)
        except NoSuchJobError:
            pass
        return
    if status in ("queued", "deferred", "started"):
        return
    retry = Retry(max=3, interval=[5, 30, 120])
    if at is not None and at > datetime.now(UTC):
        q.enqueue_at(at, func, *args, job_id=job_id, retry=retry)
    else:
        q.enqueue(func, *args, job_id=job_id, retry=retry)


def apply(connection: redis.Redis, effects: Effects, *, urgent: bool = False) -> None:
    default = queues.queue(queues.HIGH if urgent or effects.urgent else queues.DEFAULT, connection)
    for delivery_id in effects.deliveries:
        _enqueue_once(default, f"delivery-{delivery_id}", "jobs.outbound.send_delivery", delivery_id)
    for assignment_id in effects.assignments:
        # not deduplicated by id: every change of an assignment must re-sync its reminders
        default.enqueue("jobs.reminders.sync_assignment", assignment_id)
    for task_id, wave, run_at in effects.waves:
        _enqueue_once(default, f"wave-{task_id}-{wave}", "jobs.dispatch.run_wave", task_id, wave, at=run_at)
    bulk = queues.queue(queues.BULK, connection)
    for campaign_id in effects.campaigns:
        _enqueue_once(bulk, f"campaign-{campaign_id}", "jobs.broadcast.run_campaign", campaign_id)
