"""The RQ worker process: listens on high, default, bulk (in that order), with its scheduler."""

from __future__ import annotations

import logging

from rq import Queue, Worker
from rq.job import Job

from jobs import queues
from jobs.runtime import Runtime, use_runtime
from models.redisconn import connect_redis
from models.settings import Settings

log = logging.getLogger(__name__)


REFRESH_INDEX_BEFORE = {"jobs.dispatch.run_wave"}


class RedGridWorker(Worker):
    """rq's Worker, with a pubsub thread that notices a stop within a second.

    rq polls its command channel with ``sleep_time=60`` and redis-py's ``stop()`` joins that
    thread, so a burst worker could take a minute to exit after its last job.
    """

    def execute_job(self, job: Job, queue: Queue) -> None:
        # Each job runs in a forked copy of this process: a wave refreshes the volunteer index
        # here, in the parent, so the copy starts current and later forks do not re-read
        # everyone changed since the worker started.
        if job.func_name in REFRESH_INDEX_BEFORE:
            from jobs.dispatch import warm_index

            try:
                warm_index()
            except Exception:  # the job refreshes for itself anyway; never block the queue
                log.exception("could not refresh the volunteer index before %s", job.id)
        super().execute_job(job, queue)

    def subscribe(self) -> None:
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=1, daemon=True, exception_handler=self._pubsub_exception_handler
        )


def run_worker(settings: Settings, *, burst: bool = False, name: str | None = None) -> bool:
    # No socket timeout on the worker's own connection: it blocks on BLPOP between jobs.
    connection = connect_redis(settings, socket_timeout=None)
    use_runtime(Runtime.build(settings, redis_client=connect_redis(settings)))
    on_start = _startup_hooks()
    for hook in on_start:
        hook()
    worker = RedGridWorker([queues.queue(q, connection) for q in queues.ALL], connection=connection, name=name)
    return bool(worker.work(burst=burst, with_scheduler=True, logging_level="INFO"))


def _startup_hooks() -> list:
    """Work a worker does once at start (e.g. the reconciler), registered by jobs modules."""
    from jobs.schedule import STARTUP

    return list(STARTUP)
