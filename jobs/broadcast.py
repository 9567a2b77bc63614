"""Broadcast fan-out: a campaign becomes one Delivery per person, sent in batches.

``run_campaign`` (idempotent, safe to run again at any time):
1. materializes the audience once, in one transaction: a Delivery per person (dedupe key
   ``broadcast:<campaign>:<person>``), people over the weekly cap as cancelled rows marked
   ``capped``; sets ``targeted``;
2. enqueues a ``send_batch`` job for every fixed slice of ``broadcast_batch`` rows that still has
   pending rows and no batch job waiting.

``send_batch`` sends its slice's pending rows one by one through ``jobs.outbound.deliver``
(shared rate limit, 48-hour rule, claim, error policy), so two batches over the same rows, or
a batch run twice, still send each message once. A worker killed mid-batch leaves its rows
pending; running ``run_campaign`` again (at worker start and by the reconciler) plans them
again. The Campaign's counters are recounted from its rows (one atomic UPDATE) every 50 messages, at
the end of each batch and when the campaign finishes.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import redis
from sqlalchemy import func, insert, update
from sqlmodel import Session, select

from dispatcher.audience import Audience, audience_ids, recount
from jobs import queues
from jobs.outbound import Outcome, clock, deliver, plan_send
from jobs.runtime import Runtime, runtime
from models.outbox import dedupe_key
from models.tables import Campaign, CampaignStatus, Delivery, DeliveryStatus

log = logging.getLogger(__name__)

PURPOSE = "broadcast"
RUN = "jobs.broadcast.run_campaign"
BATCH = "jobs.broadcast.send_batch"
LIVE = (DeliveryStatus.pending, DeliveryStatus.sending, DeliveryStatus.deferred, DeliveryStatus.sent)


def beat_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:beat"


def _batches_key(campaign_id: int) -> str:
    return f"campaign:{campaign_id}:batches"


def capped_people(session: Session, *, person_ids: list[int], campaign_id: int, now: datetime, cap: int) -> set[int]:
    """People who already had ``cap`` broadcasts in the last 7 days (other campaigns)."""
    if cap <= 0:
        return set(person_ids)
    stmt = (
        select(Delivery.person_id)
        .where(Delivery.purpose == PURPOSE, Delivery.created_at >= now - timedelta(days=7),
               Delivery.status.in_(LIVE), Delivery.campaign_id != campaign_id)  # type: ignore[attr-defined]
        .group_by(Delivery.person_id)  # type: ignore[arg-type]
        .having(func.count() >= cap)
    )
    over = {int(p) for p in session.exec(stmt).all()}
    return over & set(person_ids)


def materialize(session: Session, *, campaign: Campaign, now: datetime, cap: int) -> int:
    """Write the campaign's Delivery rows unless already written; returns rows written."""
    assert campaign.id is not None
    if session.exec(select(Delivery.id).where(Delivery.campaign_id == campaign.id).limit(1)).first():
        return 0
    people = audience_ids(session, audience=Audience.from_dict(campaign.audience), now=now)
    capped = capped_people(session, person_ids=people, campaign_id=campaign.id, now=now, cap=cap)
    rows: list[dict[str, Any]] = []
    for pid in people:
        over = pid in capped
        rows.append({
            "dedupe_key": dedupe_key(PURPOSE, campaign.id, pid),
            "person_id": pid,
            "purpose": PURPOSE,
            "channel": "custom",
            "status": DeliveryStatus.cancelled if over else DeliveryStatus.pending,
            "text": campaign.text,
            "payload": {"capped": True} if over else {},
            "campaign_id": campaign.id,
            "errcode": None,
            "attempts": 0,
            "not_before": None,
            "claimed_at": None,
            "sent_at": None,
            "created_at": now,
        })
    for i in range(0, len(rows), 2000):
        session.execute(insert(Delivery), rows[i:i + 2000])
    session.execute(
        update(Campaign).where(Campaign.id == campaign.id)  # type: ignore[arg-type]
        .values(targeted=len(people) - len(capped), capped=len(capped))
    )
    return len(rows)


def run_campaign(campaign_id: int) -> dict[str, int]:
    """RQ job: materialize the audience (once) and plan batches for every pending slice."""
    rt = runtime()
    now = clock(rt)
    with rt.redis.lock(f"campaign:{campaign_id}:plan", timeout=600, blocking_timeout=600):
        with rt.sessions() as s, s.begin():
            camp = s.get(Campaign, campaign_id)
            if camp is None or camp.status != CampaignStatus.sending:
                return {"batches": 0}
            written = materialize(s, campaign=camp, now=now, cap=rt.settings.broadcast_weekly_cap)
        planned = plan_batches(rt, campaign_id)
    maybe_finish(rt, campaign_id, materialized=True)
    return {"written": written, "batches": planned}


def plan_batches(rt: Runtime, campaign_id: int) -> int:
    """Enqueue a batch job for each slice with pending rows and no batch job waiting."""
    size = max(1, rt.settings.broadcast_batch)
    with rt.sessions() as s:
        rows = s.exec(
            select(Delivery.id, Delivery.status).where(Delivery.campaign_id == campaign_id).order_by(Delivery.id)  # type: ignore[arg-type]
        ).all()
    q = queues.queue(queues.BULK, rt.redis)
    known = {k.decode(): v.decode() for k, v in rt.redis.hgetall(_batches_key(campaign_id)).items()}  # type: ignore[union-attr]
    planned = 0
    # one message's worth of time per row at the configured rate, four times over, plus slack
    timeout = int(size / max(rt.settings.broadcast_rate_per_s, 0.1) * 4) + 300
    for i in range(0, len(rows), size):
        chunk = rows[i:i + size]
        if not any(st == DeliveryStatus.pending for _, st in chunk):
            continue
        first, last = int(chunk[0][0]), int(chunk[-1][0])  # type: ignore[arg-type]
        job_id = known.get(str(first))
        if job_id is not None:
            job = q.fetch_job(job_id)
            if job is not None and job.get_status(refresh=True) in ("queued", "scheduled", "deferred"):
                continue
        # A slice whose job is started may belong to a worker that died: another job over the
        # same rows is safe (each row is claimed once), so plan one.
        n = rt.redis.incr(f"campaign:{campaign_id}:round")
        job_id = f"campaign-{campaign_id}-b{first}-r{n}"
        q.enqueue(BATCH, campaign_id, first, last, job_id=job_id, job_timeout=timeout, result_ttl=3600)
        rt.redis.hset(_batches_key(campaign_id), str(first), job_id)
        planned += 1
    rt.redis.expire(_batches_key(campaign_id), 7 * 86400)
    return planned


def _follow_up(rt: Runtime, delivery_id: int, out: Outcome) -> None:
    if out.result == "retry" and out.reopen_at is not None:
        with rt.sessions() as s:
            attempts = s.get(Delivery, delivery_id).attempts  # type: ignore[union-attr]
        plan_send(rt.redis, delivery_id, out.reopen_at, suffix=f"-a{attempts}", queue=queues.BULK)


def send_batch(campaign_id: int, first_id: int, last_id: int) -> dict[str, int]:
    """RQ job: send the pending rows of one slice of a campaign."""
    rt = runtime()
    with rt.sessions() as s:
        ids = [int(i) for i in s.exec(  # type: ignore[arg-type]
            select(Delivery.id).where(
                Delivery.campaign_id == campaign_id, Delivery.id >= first_id, Delivery.id <= last_id,  # type: ignore[operator]
                Delivery.status == DeliveryStatus.pending,
            ).order_by(Delivery.id)  # type: ignore[arg-type]
        ).all()]
    tally: dict[str, int] = {}
    lease = rt.settings.outbound_claim_lease_s
    for n, delivery_id in enumerate(ids):
        if n % 25 == 0:
            rt.redis.set(beat_key(campaign_id), "1", ex=lease)
            with rt.sessions() as s:
                camp = s.get(Campaign, campaign_id)
                if camp is None or camp.status != CampaignStatus.sending:
                    break
        out = deliver(rt, delivery_id)
        tally[out.result] = tally.get(out.result, 0) + 1
        if n % 50 == 49:  # live counts while the batch runs
            with rt.sessions() as s, s.begin():
                recount(s, campaign_id=campaign_id)
        _follow_up(rt, delivery_id, out)
        if out.result == "paused" and out.reopen_at is not None:
            # 45009: nothing more today; the whole campaign resumes when the quota reopens
            resume_campaign(rt.redis, campaign_id, at=out.reopen_at)
            break
    if not maybe_finish(rt, campaign_id):
        with rt.sessions() as s, s.begin():
            recount(s, campaign_id=campaign_id)
    return tally


def resume_campaign(connection: redis.Redis, campaign_id: int, *, at: datetime | None = None) -> str:
    """Enqueue ``run_campaign`` again (now, or at ``at``): it re-plans whatever is pending."""
    q = queues.queue(queues.BULK, connection)
    if at is not None:
        job_id = f"campaign-{campaign_id}-at{int(at.timestamp())}"
        if q.fetch_job(job_id) is None:
            q.enqueue_at(at, RUN, campaign_id, job_id=job_id, job_timeout=900)
        return job_id
    n = connection.incr(f"campaign:{campaign_id}:round")
    job_id = f"campaign-{campaign_id}-resume{n}"
    q.enqueue(RUN, campaign_id, job_id=job_id, job_timeout=900)
    return job_id


def maybe_finish(rt: Runtime, campaign_id: int, *, materialized: bool = False) -> bool:
    """Mark the campaign done once no row is pending or in flight. A campaign without rows is
    done only when its caller has just materialized it (an empty audience); otherwise it has not
    been materialized yet."""
    with rt.sessions() as s, s.begin():
        camp = s.get(Campaign, campaign_id)
        if camp is None or camp.status != CampaignStatus.sending:
            return False
        if not materialized and s.exec(
                select(Delivery.id).where(Delivery.campaign_id == campaign_id).limit(1)).first() is None:
            return False
        busy = s.exec(
            select(Delivery.id).where(
                Delivery.campaign_id == campaign_id,
                Delivery.status.in_((DeliveryStatus.pending, DeliveryStatus.sending)),  # type: ignore[attr-defined]
            ).limit(1)
        ).first()
        if busy is not None:
            return False
        recount(s, campaign_id=campaign_id)
        s.execute(
            update(Campaign).where(Campaign.id == campaign_id, Campaign.status == CampaignStatus.sending)  # type: ignore[arg-type]
            .values(status=CampaignStatus.done, finished_at=clock(rt))
        )
    rt.redis.delete(beat_key(campaign_id))
    return True


def counts(session: Session, *, campaign_id: int) -> dict[str, int]:
    """The campaign's rows by status, counted from the rows themselves (for checks and status)."""
    rows = session.exec(
        select(Delivery.status, func.count()).where(Delivery.campaign_id == campaign_id).group_by(Delivery.status)  # type: ignore[arg-type]
    ).all()
    return {str(st): int(n) for st, n in rows}
