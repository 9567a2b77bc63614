"""Queue names and a factory; workers listen in priority order."""

from __future__ import annotations

import redis
from rq import Queue

HIGH = "high"  # SOS alerts, emergency offers
DEFAULT = "default"  # offers, reminders, replies that follow later
BULK = "bulk"  # broadcast fan-out

ALL = (HIGH, DEFAULT, BULK)


def queue(name: str, connection: redis.Redis) -> Queue:
    return Queue(name, connection=connection)
