"""Matching a message to a command: pure, no I/O (the handling lives in bot/engine.py).

Chinese first with English aliases; full-width digits, letters and spaces are folded
(NFKC) before matching, so "报名　３" and "signup 3" are the same command.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum


class Cmd(StrEnum):
    help = "help"
    register = "register"
    report = "report"
    shifts = "shifts"
    more = "more"
    signup = "signup"
    cancel = "cancel"
    accept = "accept"
    decline = "decline"
    checkin = "checkin"
    checkout = "checkout"
    mine = "mine"
    aed = "aed"
    sos = "sos"
    broadcast = "broadcast"
    status = "status"
    quit = "quit"


# word → command; matched on the whole first word (case-insensitive for Latin).
_WORDS: dict[str, Cmd] = {
    "帮助": Cmd.help, "help": Cmd.help, "?": Cmd.help, "？": Cmd.help, "菜单": Cmd.help,
    "注册": Cmd.register, "register": Cmd.register,
    "上报": Cmd.report, "report": Cmd.report,
    "班次": Cmd.shifts, "shifts": Cmd.shifts,
    "更多": Cmd.more, "more": Cmd.more,
    "报名": Cmd.signup, "signup": Cmd.signup,
    "取消": Cmd.cancel, "cancel": Cmd.cancel,
    "接受": Cmd.accept, "accept": Cmd.accept,
    "拒绝": Cmd.decline, "decline": Cmd.decline,
    "签到": Cmd.checkin, "checkin": Cmd.checkin,
    "签退": Cmd.checkout, "checkout": Cmd.checkout,
    "我的": Cmd.mine, "mine": Cmd.mine,
    "aed": Cmd.aed,
    "急救": Cmd.sos, "sos": Cmd.sos,
    "广播": Cmd.broadcast, "broadcast": Cmd.broadcast,
    "状态": Cmd.status, "status": Cmd.status,
    "退出": Cmd.quit, "quit": Cmd.quit, "exit": Cmd.quit,
}

# commands that take a number ("报名 3", "接受 1024", "取消 T1024")
NUMBERED = {Cmd.signup, Cmd.cancel, Cmd.accept, Cmd.decline}

# WeChat menu CLICK keys (bot/menu.py) → the command they stand for
CLICK_KEYS: dict[str, Cmd] = {
    "RG_SHIFTS": Cmd.shifts,
    "RG_MINE": Cmd.mine,
    "RG_CHECKIN": Cmd.checkin,
    "RG_CHECKOUT": Cmd.checkout,
    "RG_REPORT": Cmd.report,
    "RG_AED": Cmd.aed,
    "RG_REGISTER": Cmd.register,
    "RG_HELP": Cmd.help,
    "RG_SOS": Cmd.sos,
}

_SPLIT = re.compile(r"^([\u4e00-\u9fff]{2}|[a-z?？]+)\s*(.*)$")
_REF = re.compile(r"^(t)?(\d{1,9})$")


@dataclass(frozen=True)
class Ref:
    """A number after a command: a list position ("3"), or a task id ("T1024")."""

    number: int
    is_task_id: bool


@dataclass(frozen=True)
class Parsed:
    cmd: Cmd
    ref: Ref | None = None
    rest: str = ""  # anything after the command word that is not a number


def normalize(text: str) -> str:
    """Fold full-width forms, trim, collapse white space (incl. the ideographic space)."""
    folded = unicodedata.normalize("NFKC", text)
    return " ".join(folded.split())


def parse(text: str) -> Parsed | None:
    """The command a text stands for, or None when it is not a command."""
    norm = normalize(text).lower()
    if not norm:
        return None
    m = _SPLIT.match(norm)
    if m is None:
        return None
    word, rest = m.group(1), m.group(2).strip()
    cmd = _WORDS.get(word)
    if cmd is None:
        return None
    if cmd in NUMBERED:
        if not rest:
            return Parsed(cmd)
        r = _REF.match(rest.replace(" ", ""))
        if r is None:
            return Parsed(cmd, rest=rest)
        return Parsed(cmd, Ref(int(r.group(2)), is_task_id=bool(r.group(1))))
    if rest and cmd not in (Cmd.help, Cmd.sos, Cmd.aed):
        # "注册一下" is not the command "注册"; a trailing word makes it ordinary text
        return None
    return Parsed(cmd, rest=rest)


def parse_number(text: str) -> int | None:
    norm = normalize(text)
    return int(norm) if norm.isdigit() and len(norm) <= 9 else None


def parse_choices(text: str, *, top: int) -> list[int] | None:
    """ "1 3", "1,3", "1、3", "13" (single digits) → [1, 3]; "0" → []; invalid → None."""
    norm = normalize(text)
    parts = [p for p in re.split(r"[\s,，、;；]+", norm) if p]
    if len(parts) == 1 and parts[0].isdigit() and len(parts[0]) > 1 and top < 10:
        parts = list(parts[0])
    if not parts or not all(p.isdigit() for p in parts):
        return None
    nums = sorted({int(p) for p in parts})
    if nums == [0]:
        return []
    if any(n < 1 or n > top for n in nums):
        return None
    return nums


_PHONE = re.compile(r"^1[3-9]\d{9}$")


def parse_phone(text: str) -> str | None:
    digits = re.sub(r"[\s\-]", "", normalize(text))
    digits = digits.removeprefix("+86")
    return digits if _PHONE.match(digits) else None


def mask_phone(phone: str | None) -> str:
    if not phone or len(phone) < 7:
        return "未留"
    return f"{phone[:3]}****{phone[-4:]}"


def mask_name(name: str) -> str:
    return (name[:1] + "*" * max(1, len(name) - 1)) if name else "**"


_DATE = re.compile(r"^(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?$")


def parse_date(text: str) -> date | None:
    """ "2027-06-30", "2027/6/30", "2027.6.30", "2027年6月30日" → date."""
    m = _DATE.match(normalize(text))
    if not m:
        return None
    try:
        return date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
    except ValueError:
        return None


_WHEN = re.compile(
    r"^(?:(今天|今日|明天|明日|后天)|(?:(\d{1,2})\s*月\s*(\d{1,2})\s*[日号]?))?\s*"
    r"(?:(上午|早上|中午|下午|晚上)\s*)?(?:(\d{1,2})(?:\s*[:：点]\s*(\d{1,2}|半)?)?\s*分?)?\s*(?:前|之前)?$"
)
_DAY_OFFSET = {"今天": 0, "今日": 0, "明天": 1, "明日": 1, "后天": 2}
_PERIOD_DEFAULT_HOUR = {"上午": 10, "早上": 8, "中午": 12, "下午": 15, "晚上": 19}


def parse_when(text: str, now_local: datetime) -> datetime | None:
    """A deadline like "今天15:00", "明天上午", "12月6日 9点", "下午3点半", "尽快" → local datetime.

    Returns an aware datetime in now_local's zone, or None when it cannot be read or is past.
    """
    norm = normalize(text)
    if norm in ("尽快", "马上", "立即", "现在", "越快越好"):
        return now_local + timedelta(hours=2)
    m = _WHEN.match(norm)
    if not m or not any(m.groups()):
        return None
    rel, month, day, period, hour, minute = m.groups()
    base = now_local.date()
    if rel:
        base = base + timedelta(days=_DAY_OFFSET[rel])
    elif month:
        try:
            base = date(now_local.year, int(month), int(day))
        except ValueError:
            return None
        if base < now_local.date():
            base = date(now_local.year + 1, int(month), int(day))
    if hour is None:
        h, mi = (_PERIOD_DEFAULT_HOUR[period], 0) if period else (18, 0)
    else:
        h = int(hour)
        mi = 30 if minute == "半" else int(minute or 0)
        if period in ("下午", "晚上") and h < 12:
            h += 12
        if h > 23 or mi > 59:
            return None
    when = datetime.combine(base, time(h, mi), tzinfo=now_local.tzinfo)
    if when <= now_local:
        if rel is None and month is None and when + timedelta(days=1) > now_local:
            when += timedelta(days=1)  # "9:00" said in the evening means tomorrow morning
        else:
            return None
    return when
