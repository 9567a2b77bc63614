"""The transactional outbox: a message to send is a Delivery row written in the same
transaction as the change that caused it; jobs/ sends it after commit.

The dedupe key (purpose + target + person) makes "queued twice" impossible: a second call
with the same key returns None and writes nothing.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from models.tables import Delivery, DeliveryStatus


def dedupe_key(purpose: str, target: str | int, person_id: int) -> str:
    return f"{purpose}:{target}:{person_id}"


def queue_message(
    session: Session,
    *,
    person_id: int,
    purpose: str,
    target: str | int,
    text: str,
    not_before: datetime | None = None,
    campaign_id: int | None = None,
    payload: dict[str, Any] | None = None,
) -> Delivery | None:
    """Add a pending Delivery unless one with the same key exists; returns the new row."""
    key = dedupe_key(purpose, target, person_id)
    if session.exec(select(Delivery.id).where(Delivery.dedupe_key == key)).first() is not None:
        return None
    row = Delivery(
        dedupe_key=key,
        person_id=person_id,
        purpose=purpose,
        text=text,
        not_before=not_before,
        campaign_id=campaign_id,
        payload=payload or {},
        status=DeliveryStatus.pending,
    )
    try:
        with session.begin_nested():  # a concurrent insert of the same key loses quietly
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    return row
