"""The aiohttp app factory: resources live in ``cleanup_ctx``, reached through typed AppKeys."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator

import redis
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker

from bot.handler import LATE_TASKS, HandlerFactory
from models.db import make_engine, session_factory
from models.redisconn import connect_redis
from models.settings import Settings

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", Settings)
ENGINE = web.AppKey("engine", Engine)
SESSIONS = web.AppKey("sessions", sessionmaker)
REDIS = web.AppKey("redis", redis.Redis)
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")


class Metrics:
    """Per-app Prometheus registry (no global default registry: two apps in one test process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "redgrid_http_requests", "HTTP requests", ["route", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "redgrid_http_latency_seconds", "Request latency", ["route"], registry=self.registry
        )
        self.messages = Counter(
            "redgrid_wechat_messages", "WeChat messages handled", ["kind", "outcome"], registry=self.registry
        )

    def observe(self, route: str, status: int, seconds: float) -> None:
        self.requests.labels(route=route, status=str(status)).inc()
        self.latency.labels(route=route).observe(seconds)


async def _database(app: web.Application) -> AsyncIterator[None]:
    engine = make_engine(app[SETTINGS])
    app[ENGINE] = engine
    app[SESSIONS] = session_factory(engine)
    yield
    engine.dispose()


async def _redis(app: web.Application) -> AsyncIterator[None]:
    client = connect_redis(app[SETTINGS])
    app[REDIS] = client
    yield
    client.close()


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "pid": os.getpid()})


def _check_db(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


async def readyz(request: web.Request) -> web.Response:
    app = request.app
    checks: dict[str, str] = {}
    for name, probe in (("database", lambda: _check_db(app[ENGINE])), ("redis", app[REDIS].ping)):
        try:
            await asyncio.wait_for(asyncio.to_thread(probe), timeout=3)
            checks[name] = "ok"
        except Exception as exc:  # any failure means not ready; say which
            log.warning("readyz: %s unavailable: %s", name, type(exc).__name__)
            checks[name] = "unavailable"
    ok = all(v == "ok" for v in checks.values())
    return web.json_response({"status": "ok" if ok else "unavailable", **checks}, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(settings: Settings, *, handler_factory: HandlerFactory | None = None) -> web.Application:
    """The web app; ``handler_factory`` builds the conversation handler (default: the engine's
    ``bot.engine.build_handler``) once the database and Redis are up."""
    from bot import console, webhook  # imported here: they import this module's keys
    from bot.logs import ON_REQUEST_DONE, request_logger

    # one structured log line per request (bot/logs.py), which also feeds the HTTP metrics
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[request_logger])
    app[SETTINGS] = settings
    app[METRICS] = Metrics()
    app[ON_REQUEST_DONE] = app[METRICS].observe
    app[LATE_TASKS] = set()
    app.cleanup_ctx.append(_database)
    app.cleanup_ctx.append(_redis)
    app.cleanup_ctx.append(webhook.handler_ctx(handler_factory))
    webhook.add_routes(app)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    console.setup(app)  # /console/ (coordinators) and /v/ (volunteers' pages)
    return app
