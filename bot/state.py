"""Per-user conversation state in Redis, so any web process can serve the next message.

- the open dialog (name, step, answers so far), expiring after a quiet spell;
- a marker that a dialog expired, so the next message can say so instead of guessing;
- the last numbered list shown ("班次", "我的"), so "报名 2" means the second line.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

import redis


@dataclass
class Dialog:
    name: str  # register | report | broadcast | sos | checkin_location
    step: str
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Listing:
    kind: str  # shifts | mine
    task_ids: list[int]
    page: int = 0  # pages already shown - 1


class DialogStore:
    def __init__(self, client: redis.Redis, *, ttl_s: int) -> None:
        self.r = client
        self.ttl_s = ttl_s

    @staticmethod
    def _k(kind: str, user: str) -> str:
        return f"rg:{kind}:{user}"

    def load(self, user: str) -> Dialog | None:
        raw = self.r.get(self._k("dialog", user))
        if raw is None:
            return None
        try:
            return Dialog(**json.loads(raw))
        except (ValueError, TypeError):
            self.clear(user)  # a corrupt state must never wedge a user
            return None

    def save(self, user: str, dialog: Dialog) -> None:
        pipe = self.r.pipeline()
        pipe.set(self._k("dialog", user), json.dumps(asdict(dialog), ensure_ascii=False), ex=self.ttl_s)
        # remembers which dialog was open for a day, to explain an expiry
        pipe.set(self._k("dialog-was", user), dialog.name, ex=self.ttl_s + 86_400)
        pipe.execute()

    def clear(self, user: str) -> None:
        self.r.delete(self._k("dialog", user), self._k("dialog-was", user))

    def expired(self, user: str) -> str | None:
        """The name of a dialog that timed out (and forget it), if one did."""
        key = self._k("dialog-was", user)
        if self.r.exists(self._k("dialog", user)):
            return None
        name = self.r.get(key)
        if name is None:
            return None
        self.r.delete(key)
        return name.decode()

    def save_listing(self, user: str, listing: Listing) -> None:
        self.r.set(self._k("list", user), json.dumps(asdict(listing)), ex=24 * 3600)

    def load_listing(self, user: str) -> Listing | None:
        raw = self.r.get(self._k("list", user))
        return Listing(**json.loads(raw)) if raw else None
