"""The worker process: wave jobs run in forked copies whose volunteer index is current."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import redis
from rq import Queue

from jobs import dispatch as jobs_dispatch
from jobs.runtime import Runtime, use_runtime
from jobs.worker import RedGridWorker
from models.settings import Settings
from tests.dispatch_world import LAT, LNG, build_world, person, task


def test_parent_refreshes_the_index_before_forking_a_wave(
    settings: Settings, sessions, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch  # type: ignore[no-untyped-def]
) -> None:
    # the forked job builds its own runtime from the environment: point it at the test's
    monkeypatch.setenv("DATABASE_URL", settings.effective_database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url or "")
    now = datetime.now(UTC)
    with sessions() as s:
        w = build_world(s)
        near = person(s, "王丽", lat=LAT + 0.002, lng=LNG)
        tid = task(s, grid=w.grid3, start=now, hours=3)
    jobs_dispatch.forget_indexes()
    rt = Runtime.build(settings, redis_client=redis_client)
    use_runtime(rt)
    try:
        q = Queue("default", connection=redis_client)
        job = q.enqueue("jobs.dispatch.run_wave", tid, 1)
        RedGridWorker([q], connection=redis_client).work(burst=True)
        assert job.get_status(refresh=True) == "finished" and job.return_value() == "offered"
        # the parent (this process) refreshed its index before the fork, so it holds her now
        idx = jobs_dispatch.volunteer_index(rt)
        assert near in idx
    finally:
        use_runtime(None)
        rt.engine.dispose()
        jobs_dispatch.forget_indexes()
