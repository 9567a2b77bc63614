"""AED upkeep: the monthly inspection reminder to each keeper (run by ``redgrid cron``).

One Delivery per keeper per month (dedupe key ``aed_inspect:<YYYY-MM>:<person>``), listing the
keeper's AEDs due: in service or faulty (a faulty one needs its repair chased), and not
inspected for ``settings.aed_inspection_days``. Running it twice in a month, or after a lost
Redis, sends nothing twice. A keeper outside WeChat's 48-hour window gets it with their next
message (the Delivery says "deferred"): there is no template for it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime

from sqlmodel import Session, col, select

from dispatcher.aed import inspection_due
from dispatcher.effects import Effects
from dispatcher.matching import LOCAL_TZ
from jobs.outbound import clock
from jobs.runtime import runtime
from models.outbox import queue_message
from models.tables import AED, AEDStatus

log = logging.getLogger(__name__)

MAX_LINES = 15  # a long list is cut: the message must stay one readable screen


def inspection_text(aeds: list[AED], *, month: str) -> str:
    lines = [f"【AED月检提醒 {month}】您负责的以下AED需要检查："]
    for i, a in enumerate(aeds[:MAX_LINES], 1):
        last = a.last_inspected_on.isoformat() if a.last_inspected_on else "未记录"
        state = "（已报故障，请跟进维修）" if a.status == AEDStatus.faulty else ""
        lines.append(f"{i} {a.name}{state} · 上次检查：{last}")
    if len(aeds) > MAX_LINES:
        lines.append(f"……另有{len(aeds) - MAX_LINES}台")
    lines.append("请查看指示灯、电池和电极片有效期，检查后请告知镇街红十字会登记。发现故障请回复「上报」。")
    return "\n".join(lines)


def queue_inspection_reminders(session: Session, fx: Effects, *, now: datetime, every_days: int) -> list[int]:
    """One reminder per keeper with AEDs due this month; returns the keepers reminded."""
    local = now.astimezone(LOCAL_TZ)
    month = f"{local.year:04d}-{local.month:02d}"
    due: dict[int, list[AED]] = defaultdict(list)
    for a in session.exec(
        select(AED)
        .where(col(AED.keeper_person_id).is_not(None))
        .where(col(AED.status).in_((AEDStatus.in_service, AEDStatus.faulty)))
        .order_by(col(AED.name), col(AED.id))
    ):
        if inspection_due(a.last_inspected_on, local.date(), every_days):
            due[int(a.keeper_person_id or 0)].append(a)
    told: list[int] = []
    for person_id, aeds in sorted(due.items()):
        row = queue_message(session, person_id=person_id, purpose="aed_inspect", target=month,
                            text=inspection_text(aeds, month=month),
                            payload={"aed_ids": [a.id for a in aeds]})  # fmt: skip
        if row is not None and row.id is not None:
            fx.deliveries.append(row.id)
            told.append(person_id)
    return told


def inspection_reminders() -> int:
    """Periodic (1st of the month, 09:00 Asia/Shanghai): remind the keepers."""
    rt = runtime()
    fx = Effects()
    with rt.sessions() as s, s.begin():
        told = queue_inspection_reminders(s, fx, now=clock(rt), every_days=rt.settings.aed_inspection_days)
    if fx:
        from jobs.effects import apply

        apply(rt.redis, fx)
    log.info("aed: inspection reminders to %d keepers", len(told))
    return len(told)
