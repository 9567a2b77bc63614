"""Sending one Delivery: the 48-hour rule, the claim that makes "sent once" hold, the error policy.

The Delivery row is the source of truth. A send is:

1. take a token from the shared rate limiter (Redis; all workers share WeChat's quota);
2. claim the row: a guarded UPDATE pending -> sending (attempts + 1, claimed_at), committed.
   Two workers, or one job run twice, cannot both win it;
3. call WeChat outside any transaction;
4. record what happened: sent / pending again (retry planned) / failed, with the errcode.

A process killed between 2 and 4 leaves the row "sending": nobody knows whether WeChat got
it. The reconciler settles such rows once their claim is older than the lease, as failed
with ``payload.in_doubt`` (at most once: a broadcast or reminder twice is worse than a rare
one lost, and the row says so).

The 48-hour rule (DESIGN.md, WeChat rules): a customer-service message only within 48 h of the
person's last message; outside, a template message when one is configured for the purpose,
else the row waits as "deferred" and ``release_deferred`` sends it with the person's next
interaction.

Error policy: -1, HTTP 5xx and timeouts -> retry with backoff (attempts counted, then failed);
40001/42001 -> refreshed once inside ``jobs.wechat_api``, a second one fails the message;
45009 -> stop all sending until the next local midnight (rows stay pending and are re-planned
for then); 43004 -> the person is marked unsubscribed, message failed;
45015/45047/43101/40003 (and anything unknown) -> failed for that message.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import redis
from rq import Retry
from sqlalchemy import update
from sqlmodel import Session, col, select

from jobs import queues
from jobs.runtime import Runtime, runtime
from models import interactions
from models.db import utcnow
from models.exceptions import WeChatAPIError, WeChatUnavailable
from models.settings import Settings
from models.tables import (
    Assignment,
    AssignmentStatus,
    Delivery,
    DeliveryStatus,
    Person,
    Task,
)

log = logging.getLogger(__name__)

SEND = "jobs.outbound.send_delivery"
WINDOW = timedelta(hours=48)
# WeChat's clock and ours differ a little; stay clear of the edge of the window.
WINDOW_MARGIN = timedelta(minutes=2)
PAUSE_KEY = "wechat:paused-until"  # 45009: no sending until this time (unix seconds)
RATE_KEY = "wechat:rate"
DEFERRED_MAX_AGE = timedelta(days=7)

RETRYABLE = frozenset({-1})
TOKEN = frozenset({40001, 40014, 42001})
QUOTA = 45009
UNFOLLOWED = 43004

# Which template setting serves a purpose outside the 48-hour window (by purpose prefix).
TEMPLATE_FOR = (
    ("remind", "template_shift_reminder"),
    ("offer", "template_task_offer"),
    ("broadcast", "template_broadcast"),
    ("digest", "template_digest"),
    ("weekly", "template_digest"),
)

# Statuses a Campaign counts (jobs.broadcast.recount).
COUNTED = {DeliveryStatus.sent: "sent", DeliveryStatus.deferred: "deferred", DeliveryStatus.failed: "failed"}


def clock(rt: Runtime) -> datetime:
    """The job's notion of now; tests install ``rt.extras["clock"]`` to drive time."""
    return rt.extras.get("clock", utcnow)()  # type: ignore[no-any-return]


# --- pure decisions ------------------------------------------------------------------------


def template_for(settings: Settings, purpose: str) -> str | None:
    for prefix, attr in TEMPLATE_FOR:
        if purpose.startswith(prefix):
            return getattr(settings, attr)  # type: ignore[no-any-return]
    return None


def within_window(last_interaction_at: datetime | None, now: datetime) -> bool:
    return last_interaction_at is not None and now - last_interaction_at < WINDOW - WINDOW_MARGIN


def route(*, now: datetime, openid: str | None, subscribed: bool, last_interaction_at: datetime | None,
          template_id: str | None) -> str:
    """"custom", "template", "defer", or "unreachable" (no openid / not following)."""
    if not openid or not subscribed:
        return "unreachable"
    if within_window(last_interaction_at, now):
        return "custom"
    if template_id:
        return "template"
    return "defer"


def backoff(settings: Settings, attempts: int) -> float:
    """Delay before attempt ``attempts + 1``."""
    steps = settings.outbound_backoff_s or [30]
    return float(steps[min(attempts - 1, len(steps) - 1)])


def next_local_midnight(now: datetime, tz: str) -> datetime:
    local = now.astimezone(ZoneInfo(tz))
    midnight = datetime.combine(local.date() + timedelta(days=1), datetime.min.time(), ZoneInfo(tz))
    return midnight.astimezone(UTC)


# --- state transitions -----------------------------------------------------------------------


def transition(session: Session, row: Delivery, to: DeliveryStatus, **values: Any) -> bool:
    """Move ``row`` from the status it was read with to ``to``, only if nobody moved it first.

    A campaign's counters are not touched here: bumping one hot Campaign row in every message's
    transaction serialized the workers on its row lock (PostgreSQL); ``jobs.broadcast.recount``
    sets them from the rows instead."""
    frm = row.status
    # synchronize_session=False: the row object is updated by hand below (ORM syncing costs
    # more than the UPDATE itself on the broadcast path)
    res = session.execute(
        update(Delivery)
        .where(Delivery.id == row.id, Delivery.status == frm)  # type: ignore[arg-type]
        .values(status=to, **values)
        .execution_options(synchronize_session=False)
    )
    if res.rowcount != 1:  # type: ignore[attr-defined]
        return False
    row.status = to
    for k, v in values.items():
        setattr(row, k, v)
    return True


# --- Redis: pause flag, shared rate limiter, job planning -----------------------------------


def paused_until(connection: redis.Redis) -> datetime | None:
    raw = connection.get(PAUSE_KEY)
    return datetime.fromtimestamp(float(raw), UTC) if raw else None


def pause_until(connection: redis.Redis, until: datetime, now: datetime) -> None:
    ttl = max(1, int((until - now).total_seconds()))
    connection.set(PAUSE_KEY, str(until.timestamp()), ex=ttl)


# A reservation token bucket (GCRA): each caller reserves the next free slot and sleeps until
# it; idle time accrues a burst of up to ``burst`` messages. Redis TIME keeps every worker on
# one clock.
_RATE_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
local start = math.max(tat, now - burst * interval)
redis.call('SET', KEYS[1], tostring(start + interval), 'EX', 3600)
return tostring(math.max(0, start - now))
"""


def take_token(connection: redis.Redis, settings: Settings) -> None:
    rate = settings.broadcast_rate_per_s
    if rate <= 0:
        return
    wait = float(connection.eval(_RATE_LUA, 1, RATE_KEY, 1.0 / rate, max(1.0, rate)))  # type: ignore[arg-type]
    if wait > 0:
        time.sleep(wait)


def plan_send(connection: redis.Redis, delivery_id: int, at: datetime | None = None, *, suffix: str = "",
              queue: str = queues.DEFAULT) -> str:
    """Enqueue (or schedule, for an aware UTC ``at``) a send with a deterministic job id."""
    job_id = f"delivery-{delivery_id}{suffix}"
    q = queues.queue(queue, connection)
    existing = q.fetch_job(job_id)
    if existing is not None and existing.get_status(refresh=True) in ("queued", "scheduled", "deferred"):
        if at is None:
            return job_id
        planned = q.scheduled_job_registry.get_scheduled_time(job_id) if existing.get_status() == "scheduled" else None
        if planned is not None and abs((planned - at).total_seconds()) < 1:
            return job_id
        existing.cancel()
        existing.delete()
    retry = Retry(max=3, interval=[5, 30, 120])  # for crashes (DB down); WeChat errors are ours
    if at is not None:
        # even a moment already past goes through the scheduler: "due" is the scheduler's call
        q.enqueue_at(at, SEND, delivery_id, job_id=job_id, retry=retry)
    else:
        q.enqueue(SEND, delivery_id, job_id=job_id, retry=retry)
    return job_id


def cancel_job(connection: redis.Redis, job_id: str) -> None:
    from rq.exceptions import NoSuchJobError
    from rq.job import Job

    try:
        job = Job.fetch(job_id, connection=connection)
    except NoSuchJobError:
        return
    if job.get_status() in ("queued", "scheduled", "deferred"):
        job.cancel()
    job.delete()


# --- the send ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    result: str  # sent | deferred | failed | retry | paused | early | stale | skip | lost | missing
    errcode: int | None = None
    reopen_at: datetime | None = None


def _still_relevant(session: Session, d: Delivery, now: datetime) -> bool:
    """A reminder for a shift the person no longer has, or whose moment passed, is not sent."""
    if d.campaign_id is not None:
        return True  # cancelling a campaign cancels its open rows in the same transaction
    aid = d.payload.get("assignment_id")
    if not d.purpose.startswith("remind") or aid is None:
        return True
    a = session.get(Assignment, aid)
    task = session.get(Task, a.task_id) if a is not None else None
    if a is None or task is None or a.status not in (AssignmentStatus.accepted, AssignmentStatus.checked_in):
        return False
    kind = d.payload.get("kind", "")
    if kind.startswith("before"):
        return now < task.starts_at and a.checked_in_at is None
    if kind == "checkin":
        return a.checked_in_at is None and now < task.ends_at
    if kind == "checkout":
        return a.checked_out_at is None and now < task.ends_at + timedelta(hours=12)
    return True


def deliver(rt: Runtime, delivery_id: int) -> Outcome:
    """Try to send one Delivery now; returns what happened (the row says the same)."""
    out = _deliver(rt, delivery_id)
    if out.result == "deferred" and _wrote_meanwhile(rt, delivery_id):
        out = _deliver(rt, delivery_id)
    return out


def _wrote_meanwhile(rt: Runtime, delivery_id: int) -> bool:
    """Did the person write while this row was being deferred? Their turn records the time
    first and then looks for deferred rows, so either it saw this one (and released it) or
    this look, after the deferral committed, sees the time: never a row left waiting for a
    message that already came. If so, the row is pending again (to be sent now)."""
    with rt.sessions() as s, s.begin():
        d = s.get(Delivery, delivery_id)
        if d is None or d.status != DeliveryStatus.deferred:
            return False
        openid = s.execute(select(Person.openid).where(Person.id == d.person_id)).scalar()
        # Redis first, then the row, in a statement of its own: a flush that moved the time
        # from Redis to the row in between is then seen in the row
        try:
            buffered = interactions.latest(rt.redis, openid, None)
        except redis.RedisError:
            buffered = None  # judged by the row alone (the retry of a send comes to no harm)
        stored = s.execute(select(Person.last_interaction_at).where(Person.id == d.person_id)).scalar()
        last = max((t for t in (buffered, stored) if t is not None), default=None)
        return within_window(last, clock(rt)) and transition(s, d, DeliveryStatus.pending)


def _deliver(rt: Runtime, delivery_id: int) -> Outcome:
    settings = rt.settings
    reopen = paused_until(rt.redis)
    if reopen is not None and reopen > clock(rt):
        return _early_exit(rt, delivery_id, reopen)
    # The rate-limit token is taken before the claim, so a claimed row is sent at once: a
    # worker killed while it waits for a token leaves the row pending, not in doubt. (A row that
    # then turns out deferred or stale spent a token for nothing: cheaper than a second
    # transaction per message.)
    take_token(rt.redis, settings)
    now = clock(rt)
    with rt.sessions() as s, s.begin():
        d = s.get(Delivery, delivery_id)
        if d is None:
            return Outcome("missing")
        if d.status != DeliveryStatus.pending:
            return Outcome("skip")
        if d.not_before is not None and d.not_before > now + timedelta(seconds=1):
            return Outcome("early", reopen_at=d.not_before)
        if not _still_relevant(s, d, now):
            transition(s, d, DeliveryStatus.cancelled)
            return Outcome("stale")
        person = s.get(Person, d.person_id)
        template_id = template_for(settings, d.purpose)
        way = route(
            now=now,
            openid=person.openid if person else None,
            subscribed=bool(person and person.subscribed),
            # the row's time, or a newer one still buffered in Redis (models/interactions.py)
            last_interaction_at=(interactions.latest(rt.redis, person.openid, person.last_interaction_at)
                                 if person is not None else None),
            template_id=template_id,
        )
        if way == "unreachable":
            code = UNFOLLOWED if person is not None and person.openid else 40003
            transition(s, d, DeliveryStatus.failed, errcode=code)
            return Outcome("failed", code)
        if way == "defer":
            transition(s, d, DeliveryStatus.deferred, channel="custom")
            return Outcome("deferred")
        openid = person.openid  # type: ignore[union-attr]
        text = d.text
        # the claim: only one worker's guarded UPDATE pending -> sending can win
        if not transition(s, d, DeliveryStatus.sending, channel=way, attempts=d.attempts + 1, claimed_at=now):
            return Outcome("lost")
        attempts = d.attempts
    try:
        from jobs.wechat_api import api

        if way == "custom":
            api().send_text(openid, text)  # type: ignore[arg-type]
        else:
            from jobs.texts import template_data

            data = d.payload.get("template_data") or template_data(text)
            api().send_template(openid, template_id, data, url=d.payload.get("url"))  # type: ignore[arg-type]
    except WeChatUnavailable as exc:
        return _after_error(rt, delivery_id, None, attempts, str(exc))
    except WeChatAPIError as exc:
        return _after_error(rt, delivery_id, exc.errcode, attempts, exc.errmsg)
    with rt.sessions() as s, s.begin():
        transition(s, d, DeliveryStatus.sent, sent_at=clock(rt), errcode=0)  # d: as claimed above
    return Outcome("sent", 0)


def _early_exit(rt: Runtime, delivery_id: int, reopen: datetime) -> Outcome:
    """Sending is paused (45009): say so only for a row that is still pending."""
    with rt.sessions() as s:
        d = s.get(Delivery, delivery_id)
        if d is None:
            return Outcome("missing")
        if d.status != DeliveryStatus.pending:
            return Outcome("skip")
    return Outcome("paused", reopen_at=reopen)


def _after_error(rt: Runtime, delivery_id: int, errcode: int | None, attempts: int, errmsg: str) -> Outcome:
    settings = rt.settings
    now = clock(rt)
    log.warning("delivery %s: WeChat %s (%s), attempt %s", delivery_id, errcode, errmsg[:80], attempts)
    with rt.sessions() as s, s.begin():
        d = s.get(Delivery, delivery_id)
        if d is None or d.status != DeliveryStatus.sending:
            return Outcome("lost", errcode)  # settled meanwhile (the reconciler's lease ran out)
        payload = {**d.payload, "error": errmsg[:200] if errcode is None else f"{errcode}"}
        if errcode is None or errcode in RETRYABLE:
            if attempts >= settings.outbound_max_attempts:
                transition(s, d, DeliveryStatus.failed, errcode=errcode, payload=payload)
                return Outcome("failed", errcode)
            transition(s, d, DeliveryStatus.pending, errcode=errcode, payload=payload)
            return Outcome("retry", errcode, reopen_at=now + timedelta(seconds=backoff(settings, attempts)))
        if errcode == QUOTA:
            reopen = next_local_midnight(now, settings.tz)
            pause_until(rt.redis, reopen, now)
            transition(s, d, DeliveryStatus.pending, errcode=errcode, payload=payload)
            return Outcome("paused", errcode, reopen_at=reopen)
        if errcode == UNFOLLOWED:
            s.execute(update(Person).where(Person.id == d.person_id).values(subscribed=False))  # type: ignore[arg-type]
        transition(s, d, DeliveryStatus.failed, errcode=errcode, payload=payload)
        return Outcome("failed", errcode)


def send_delivery(delivery_id: int) -> str:
    """RQ job: send one Delivery (idempotent: a second run finds it no longer pending)."""
    rt = runtime()
    out = deliver(rt, delivery_id)
    if out.result == "early" and out.reopen_at is not None:
        plan_send(rt.redis, delivery_id, out.reopen_at, suffix=f"-t{int(out.reopen_at.timestamp())}")
    elif out.result == "retry" and out.reopen_at is not None:
        with rt.sessions() as s:
            attempts = s.get(Delivery, delivery_id).attempts  # type: ignore[union-attr]
        plan_send(rt.redis, delivery_id, out.reopen_at, suffix=f"-a{attempts}")
    elif out.result == "paused" and out.reopen_at is not None:
        plan_send(rt.redis, delivery_id, out.reopen_at, suffix=f"-p{int(out.reopen_at.timestamp())}")
    if out.result not in ("skip", "missing", "early"):
        with rt.sessions() as s:
            d = s.get(Delivery, delivery_id)
            cid = d.campaign_id if d else None
        if cid is not None:
            from jobs.broadcast import maybe_finish, recount

            if not maybe_finish(rt, cid):
                with rt.sessions() as s, s.begin():
                    recount(s, campaign_id=cid)
    return out.result


# --- the engine's hook -------------------------------------------------------------------------


def has_deferred(person_id: Any) -> Any:
    """SQL: does this person (an id or a column, e.g. ``Person.id``) have a deferred delivery?

    The engine selects it with the person, so the common message (nothing deferred) pays no
    extra statement for ``release_deferred``; an indexed probe (ix_delivery_person_status).
    """
    return (
        select(col(Delivery.id))
        .where(col(Delivery.person_id) == person_id, col(Delivery.status) == DeliveryStatus.deferred)
        .exists()
    )


def release_deferred(session: Session, *, person_id: int, now: datetime) -> list[int]:
    """The person just wrote to us: their deferred deliveries go back to pending.

    Call inside the engine's transaction that records the interaction; put the returned ids in
    ``fx.deliveries`` and apply after commit. A row with a future ``not_before`` is released
    too and its send job waits until then; a deferred row older than a week is cancelled (an
    old broadcast or reminder would only confuse).
    """
    rows = session.exec(
        select(Delivery).where(Delivery.person_id == person_id, Delivery.status == DeliveryStatus.deferred)
    ).all()
    released: list[int] = []
    for d in sorted(rows, key=lambda r: r.id or 0):
        if now - d.created_at > DEFERRED_MAX_AGE:
            transition(session, d, DeliveryStatus.cancelled, payload={**d.payload, "expired": True})
            continue
        if transition(session, d, DeliveryStatus.pending):
            released.append(d.id)  # type: ignore[arg-type]
    return released
