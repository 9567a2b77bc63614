"""The seam between a channel adapter (the WeChat webhook) and the conversation engine.

The adapter verifies, decrypts, dedupes and parses; the engine only ever sees an ``Inbound``
and answers with text. Kept in its own module so bot/app.py and bot/webhook.py can both
import it without importing each other.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from aiohttp import web

from bot.inbound import Inbound


@runtime_checkable
class Handler(Protocol):
    def handle(self, inbound: Inbound) -> str | None:
        """Answer one message (sync, may block on the database); None: nothing to say now."""
        ...

    def deliver_late(self, user: str, text: str) -> None:
        """Send ``text`` later as a customer-service message (an answer that missed 5 s)."""
        ...


HandlerFactory = Callable[[web.Application], Handler]

HANDLER = web.AppKey("handler", Handler)
# Work that runs after a reply went out: handler calls that outlived the reply budget (their
# answers go late), replies being stored for WeChat's retries. Awaited (bounded) on shutdown
# so none is lost when the process stops.
LATE_TASKS: web.AppKey[set[asyncio.Task[Any]]] = web.AppKey("late_tasks", set)
