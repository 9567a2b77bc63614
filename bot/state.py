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

    def _raw(self, kind: str, user: str) -> bytes | str | None:
        return self.r.get(self._k(kind, user))  # type: ignore[return-value]

    def _cache(self, kind: str, user: str, raw: bytes | str | None) -> None:
        """Hook for UserState: a write just made (nothing to do without a cache)."""

    def for_user(self, user: str, prefetched: list[bytes | str | None] | None = None) -> UserState:
        """A view for one message from ``user``: their state read in one round trip (or
        ``prefetched``: the values of ``state_keys(user)``, read by the caller)."""
        return UserState(self, user, prefetched)

    @classmethod
    def state_keys(cls, user: str) -> list[str]:
        """What a message from ``user`` reads first, in this order (UserState)."""
        return [cls._k(k, user) for k in UserState._KINDS]

    def load(self, user: str) -> Dialog | None:
        raw = self._raw("dialog", user)
        if raw is None:
            return None
        try:
            return Dialog(**json.loads(raw))
        except (ValueError, TypeError):
            self.clear(user)  # a corrupt state must never wedge a user
            return None

    def save(self, user: str, dialog: Dialog) -> None:
        raw = json.dumps(asdict(dialog), ensure_ascii=False)
        pipe = self.r.pipeline()
        pipe.set(self._k("dialog", user), raw, ex=self.ttl_s)
        # remembers which dialog was open for a day, to explain an expiry
        pipe.set(self._k("dialog-was", user), dialog.name, ex=self.ttl_s + 86_400)
        pipe.execute()
        self._cache("dialog", user, raw)
        self._cache("dialog-was", user, dialog.name)

    def clear(self, user: str) -> None:
        self.r.delete(self._k("dialog", user), self._k("dialog-was", user))
        self._cache("dialog", user, None)
        self._cache("dialog-was", user, None)

    def expired(self, user: str) -> str | None:
        """The name of a dialog that timed out (and forget it), if one did."""
        if self._raw("dialog", user) is not None:
            return None
        name = self._raw("dialog-was", user)
        if name is None:
            return None
        self.r.delete(self._k("dialog-was", user))
        self._cache("dialog-was", user, None)
        return name.decode() if isinstance(name, bytes) else name

    def save_listing(self, user: str, listing: Listing) -> None:
        raw = json.dumps(asdict(listing))
        self.r.set(self._k("list", user), raw, ex=24 * 3600)
        self._cache("list", user, raw)

    def load_listing(self, user: str) -> Listing | None:
        raw = self._raw("list", user)
        return Listing(**json.loads(raw)) if raw else None


class UserState(DialogStore):
    """One message's view of its sender's state: dialog, expiry marker and last list are read
    together (one MGET, on first need) instead of a round trip each; writes go to Redis at
    once, as in DialogStore, and into the view. Any other user is read from Redis directly.

    Made per message and dropped after it (never shared between threads or messages): the
    next message, perhaps on another web process, reads afresh.
    """

    _KINDS = ("dialog", "dialog-was", "list")

    def __init__(self, store: DialogStore, user: str, prefetched: list[bytes | str | None] | None = None) -> None:
        super().__init__(store.r, ttl_s=store.ttl_s)
        self.user = user
        self._seen: dict[str, bytes | str | None] | None = None
        if prefetched is not None:
            self._seen = dict(zip(self._KINDS, prefetched, strict=True))

    def _raw(self, kind: str, user: str) -> bytes | str | None:
        if user != self.user:
            return super()._raw(kind, user)
        if self._seen is None:
            values = self.r.mget(self.state_keys(user))
            self._seen = dict(zip(self._KINDS, values, strict=True))  # type: ignore[arg-type]
        return self._seen[kind]

    def _cache(self, kind: str, user: str, raw: bytes | str | None) -> None:
        if user == self.user and self._seen is not None:
            self._seen[kind] = raw
