"""The RQ worker process: listens on high, default, bulk (in that order), with its scheduler."""

from __future__ import annotations

import logging

from rq import Worker

from jobs import queues
from jobs.runtime import Runtime, use_runtime
from models.redisconn import connect_redis
from models.settings import Settings

log = logging.getLogger(__name__)


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    # No socket timeout on the worker's own connection: it blocks on BLPOP between jobs.
    connection = connect_redis(settings, socket_timeout=None)
    use_runtime(Runtime.build(settings, redis_client=connect_redis(settings)))
    on_start = _startup_hooks()
    for hook in on_start:
        hook()
    worker = Worker([queues.queue(q, connection) for q in queues.ALL], connection=connection, name=name)
    return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))


def _startup_hooks() -> list:
    """Work a worker does once at start (e.g. the reconciler), registered by jobs modules."""
    from jobs.schedule import STARTUP

    return list(STARTUP)
