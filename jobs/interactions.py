"""The periodic flush of buffered interaction times (models/interactions.py) to the database."""

from __future__ import annotations

from jobs.runtime import runtime
from models import interactions


def flush_interactions() -> int:
    rt = runtime()
    return interactions.flush(rt.redis, rt.sessions)
