"""Effects become RQ jobs once; a scheduled wave asked for sooner moves earlier, never later."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from rq import Queue

from dispatcher.effects import Effects
from jobs.effects import apply


def test_waves_scheduled_once_and_moved_earlier_only(redis_client) -> None:  # type: ignore[no-untyped-def]
    q = Queue("default", connection=redis_client)
    reg = q.scheduled_job_registry
    now = datetime.now(UTC)
    later, sooner, latest = now + timedelta(minutes=30), now + timedelta(minutes=5), now + timedelta(hours=2)

    apply(redis_client, Effects(waves=[(7, 2, later)]))
    job = q.fetch_job("wave-7-2")
    assert job is not None and reg.get_job_ids() == ["wave-7-2"]
    assert abs((reg.get_scheduled_time(job) - later).total_seconds()) < 1

    apply(redis_client, Effects(waves=[(7, 2, latest)]))  # later again: unchanged
    assert abs((reg.get_scheduled_time(job) - later).total_seconds()) < 1
    apply(redis_client, Effects(waves=[(7, 2, sooner)]))  # sooner: moved
    assert abs((reg.get_scheduled_time(job) - sooner).total_seconds()) < 1
    assert reg.get_job_ids() == ["wave-7-2"] and len(q) == 0


def test_deliveries_enqueued_once(redis_client) -> None:  # type: ignore[no-untyped-def]
    for _ in range(3):
        apply(redis_client, Effects(deliveries=[11, 12]))
    q = Queue("default", connection=redis_client)
    assert sorted(q.job_ids) == ["delivery-11", "delivery-12"]
    apply(redis_client, Effects(deliveries=[13]), urgent=True)
    assert Queue("high", connection=redis_client).job_ids == ["delivery-13"]
