"""The reconciler: the database is the truth, Redis only the plan. Re-create what Redis lost.

Run every 5 minutes by ``redgrid cron`` and once when a worker starts. It is idempotent: every
job it makes has a deterministic id or is guarded by the Delivery claim, so running it twice,
or beside a healthy system, sends nothing twice.

1. Accepted assignments of shifts not yet over: their reminder rows are re-synced (rows lost
   between a commit and its ``jobs.effects.apply`` come back).
2. Pending deliveries outside campaigns with no job waiting in Redis: planned again at
   ``not_before`` (or now). After a FLUSHALL the pending reminders still fire, once.
3. Deliveries stuck in "sending" past the lease: the worker died mid-call; settled as failed,
   ``payload.in_doubt`` (at most once).
4. Campaigns still sending with pending rows and no batch alive: ``run_campaign`` again.
5. Open dispatch tasks whose latest wave of offers has expired (or whose first wave never ran)
   with no next wave planned: the next wave (``jobs.dispatch.run_wave(task_id, wave)``) through ``jobs.effects.apply``.
"""

from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta

import redis
from rq.registry import ScheduledJobRegistry
from sqlalchemy import func
from sqlmodel import select

from dispatcher.effects import Effects
from jobs import queues
from jobs.broadcast import beat_key, maybe_finish, recount, resume_campaign
from jobs.outbound import clock, plan_send, transition
from jobs.reminders import sync
from jobs.runtime import Runtime, runtime
from models.tables import (
    Assignment,
    AssignmentStatus,
    Campaign,
    CampaignStatus,
    Delivery,
    DeliveryStatus,
    Task,
    TaskMode,
    TaskStatus,
)

log = logging.getLogger(__name__)

_DELIVERY_JOB = re.compile(r"^delivery-(\d+)(?:-|$)")
_WAVE_JOB = re.compile(r"^wave-(\d+)-(\d+)$")


def waiting_job_ids(connection: redis.Redis) -> set[str]:
    """Ids of every job queued or scheduled on our queues."""
    ids: set[str] = set()
    for name in queues.ALL:
        q = queues.queue(name, connection)
        ids.update(q.get_job_ids())
        ids.update(ScheduledJobRegistry(queue=q).get_job_ids())
        ids.update(q.started_job_registry.get_job_ids())
    return ids


def reconcile_with(rt: Runtime, *, force_campaigns: bool = False) -> dict[str, int]:
    now = clock(rt)
    settings = rt.settings
    report = {"reminders": 0, "deliveries": 0, "in_doubt": 0, "campaigns": 0, "waves": 0}

    # 1. reminders of accepted assignments
    with rt.sessions() as s:
        aids = s.exec(
            select(Assignment.id).join(Task, Task.id == Assignment.task_id).where(  # type: ignore[arg-type]
                Assignment.status.in_((AssignmentStatus.accepted, AssignmentStatus.checked_in)),  # type: ignore[attr-defined]
                Task.ends_at > now - timedelta(hours=12),
            )
        ).all()
    for aid in aids:
        with rt.sessions() as s, s.begin():
            result = sync(s, assignment_id=int(aid), now=now, settings=settings)  # type: ignore[arg-type]
        report["reminders"] += len(result.scheduled)

    # 2. pending deliveries (outside campaigns) with no job
    waiting = waiting_job_ids(rt.redis)
    planned = {int(m.group(1)) for j in waiting if (m := _DELIVERY_JOB.match(j))}
    with rt.sessions() as s:
        pending = s.exec(
            select(Delivery.id, Delivery.not_before).where(
                Delivery.status == DeliveryStatus.pending, Delivery.campaign_id.is_(None)  # type: ignore[union-attr]
            )
        ).all()
    for did, not_before in pending:
        if int(did) in planned:  # type: ignore[arg-type]
            continue
        at = not_before if not_before is not None and not_before > now else None
        plan_send(rt.redis, int(did), at)  # type: ignore[arg-type]
        report["deliveries"] += 1

    # 3. claims past the lease
    lease = timedelta(seconds=settings.outbound_claim_lease_s)
    touched_campaigns: set[int] = set()
    with rt.sessions() as s, s.begin():
        stuck = s.exec(
            select(Delivery).where(Delivery.status == DeliveryStatus.sending, Delivery.claimed_at < now - lease)  # type: ignore[operator, arg-type]
        ).all()
        for d in stuck:
            if transition(s, d, DeliveryStatus.failed, payload={**d.payload, "in_doubt": True}):
                report["in_doubt"] += 1
                if d.campaign_id is not None:
                    touched_campaigns.add(d.campaign_id)
    for cid in touched_campaigns:
        if not maybe_finish(rt, cid):
            with rt.sessions() as s, s.begin():
                recount(s, campaign_id=cid)

    # 4. campaigns whose fan-out stopped
    with rt.sessions() as s:
        campaigns = s.exec(select(Campaign.id).where(Campaign.status == CampaignStatus.sending)).all()
    for raw_cid in campaigns:
        cid = int(raw_cid)  # type: ignore[arg-type]
        if maybe_finish(rt, cid):
            continue
        if not force_campaigns and rt.redis.exists(beat_key(cid)):
            continue  # a batch reported progress within the lease: it is alive
        resume_campaign(rt.redis, cid)
        report["campaigns"] += 1

    # 5. dispatch waves
    fx = Effects()
    waves_waiting = {(int(m.group(1)), int(m.group(2))) for j in waiting if (m := _WAVE_JOB.match(j))}
    with rt.sessions() as s:
        tasks = s.exec(
            select(Task.id, Task.wave).where(Task.mode == TaskMode.dispatch, Task.status == TaskStatus.open)
        ).all()
        for tid, wave in tasks:
            tid, wave = int(tid), int(wave)  # type: ignore[arg-type]
            if wave >= settings.dispatch.max_waves or (tid, wave + 1) in waves_waiting:
                continue
            latest = s.exec(
                select(func.max(Assignment.expires_at)).where(
                    Assignment.task_id == tid, Assignment.wave == wave,
                    Assignment.status == AssignmentStatus.offered,
                )
            ).one()
            # wave 0 with no offers: the first wave's job was lost between the report's commit
            # and its enqueue; its deterministic job id makes planning it again harmless
            run_at: datetime = latest if latest is not None and latest > now else now
            fx.waves.append((tid, wave + 1, run_at))
    if fx:
        from jobs.effects import apply

        apply(rt.redis, fx)
        report["waves"] = len(fx.waves)
    if any(report.values()):
        log.info("reconcile: %s", report)
    return report


def reconcile() -> dict[str, int]:
    """RQ job (cron, every 5 min)."""
    return reconcile_with(runtime())


def reconcile_at_start() -> dict[str, int]:
    """Worker start: a new worker often replaces one that died, so stalled campaigns resume at
    once instead of after the heartbeat lease. A failure is logged, not raised: the worker
    must start anyway (the cron reconciler tries again within 5 minutes)."""
    try:
        return reconcile_with(runtime(), force_campaigns=True)
    except Exception:
        log.exception("start-up reconcile failed; the periodic one will retry")
        return {}
