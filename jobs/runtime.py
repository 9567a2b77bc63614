"""What a job needs at run time: settings, a session factory, Redis. Built once per process.

RQ job functions take ids only; each calls ``runtime()`` to reach the database and Redis.
The runtime is created lazily in the worker process (never at import), keyed by pid so a
forked work-horse never reuses its parent's sockets, and tests install their own with
``use_runtime``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from redis import Redis
from sqlalchemy.engine import Engine
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from models.db import make_engine, session_factory
from models.redisconn import connect_redis
from models.settings import Settings, load_settings


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    redis: Redis
    extras: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, settings: Settings, *, redis_client: Redis | None = None) -> Runtime:
        engine = make_engine(settings)
        return cls(
            settings=settings,
            engine=engine,
            sessions=session_factory(engine),
            redis=redis_client or connect_redis(settings),
        )

    def close(self) -> None:
        self.engine.dispose()
        self.redis.close()


_current: dict[int, Runtime] = {}


def runtime() -> Runtime:
    pid = os.getpid()
    rt = _current.get(pid)
    if rt is None:
        rt = _current[pid] = Runtime.build(load_settings())
    return rt


def use_runtime(rt: Runtime | None) -> None:
    """Install (or with None, clear) the runtime for this process; for workers and tests."""
    _current.clear()
    if rt is not None:
        _current[os.getpid()] = rt
