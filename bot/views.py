"""Formatting for chat replies: times in the display zone, lists that fit one passive reply."""

from __future__ import annotations

from datetime import datetime, timedelta, tzinfo

REPLY_LIMIT = 2000  # bytes; WeChat's passive text reply holds about 2,048
_WEEKDAY = "一二三四五六日"


def day_label(when: datetime, now: datetime, tz: tzinfo) -> str:
    local, today = when.astimezone(tz), now.astimezone(tz).date()
    delta = (local.date() - today).days
    if delta == 0:
        return "今天"
    if delta == 1:
        return "明天"
    if delta == 2:
        return "后天"
    return f"{local.month}月{local.day}日(周{_WEEKDAY[local.weekday()]})"


def when_label(start: datetime, end: datetime | None, now: datetime, tz: tzinfo) -> str:
    s = start.astimezone(tz)
    text = f"{day_label(start, now, tz)} {s:%H:%M}"
    if end is not None:
        e = end.astimezone(tz)
        text += f"–{e:%H:%M}" if e.date() == s.date() else f"–{day_label(end, now, tz)} {e:%H:%M}"
    return text


def hours_label(hours: float) -> str:
    return f"{hours:.1f}".rstrip("0").rstrip(".") if hours else "0"


def fit(head: str, lines: list[str], tail: str, *, limit: int = REPLY_LIMIT) -> tuple[str, int]:
    """Join as many lines as fit in one reply; returns the text and how many lines it took."""
    size = len(head.encode()) + len(tail.encode()) + 2
    taken: list[str] = []
    for line in lines:
        n = len(line.encode()) + 1
        if size + n > limit:
            break
        taken.append(line)
        size += n
    parts = [head, *taken] if head else taken
    if tail:
        parts.append(tail)
    return "\n".join(parts), len(taken)


def clip(text: str, *, limit: int = REPLY_LIMIT) -> str:
    """Cut a text at a character boundary so it stays within the reply limit."""
    data = text.encode()
    if len(data) <= limit:
        return text
    return data[: limit - 3].decode(errors="ignore") + "…"


def age_label(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    if minutes < 60:
        return f"{max(1, minutes)}分钟"
    if minutes < 48 * 60:
        return f"{minutes // 60}小时"
    return f"{minutes // (24 * 60)}天"
