"""The dispatcher's messages to people (Simplified Chinese, CONVERSATIONS.md's tone).

Numbers people reply with are task ids (the T number): 「接受 1024」, 「取消 1024」.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from dispatcher.geo import format_distance

LOCAL_TZ = ZoneInfo("Asia/Shanghai")
_WEEKDAY = "一二三四五六日"

KIND_NAMES = {
    "checkpoint": "卡口值守",
    "drill": "应急演练",
    "fridge_restock": "爱心冰柜补货",
    "dementia_outreach": "关爱阿尔兹海默症走访",
    "first_aid_cover": "急救保障",
    "training": "救护培训",
    "publicity": "宣传活动",
    "elderly_visit": "独居老人帮扶",
    "emergency": "紧急救助",
    "other": "志愿服务",
}


def mask_name(name: str) -> str:
    """王丽 -> 王**: enough for a reporter to recognise, not enough to identify."""
    name = (name or "").strip()
    return f"{name[0]}**" if name else "志愿者"


def mask_phone(phone: str | None) -> str:
    if not phone or len(phone) < 7:
        return ""
    return f"{phone[:3]}****{phone[-4:]}"


def when_day(moment: datetime, now: datetime) -> str:
    """今天 / 明天 / 12月6日(周六), in Shanghai time."""
    local, today = moment.astimezone(LOCAL_TZ), now.astimezone(LOCAL_TZ).date()
    if local.date() == today:
        return "今天"
    if local.date() == today + timedelta(days=1):
        return "明天"
    return f"{local.month}月{local.day}日(周{_WEEKDAY[local.weekday()]})"


def hm(moment: datetime) -> str:
    return moment.astimezone(LOCAL_TZ).strftime("%H:%M")


def shift_time(starts_at: datetime, ends_at: datetime, now: datetime) -> str:
    return f"{when_day(starts_at, now)} {hm(starts_at)}–{hm(ends_at)}"


def duration(td: timedelta) -> str:
    s = int(td.total_seconds())
    if s < 60:
        return f"{s}秒"
    if s < 3600:
        return f"{s // 60}分钟"
    h, m = divmod(s // 60, 60)
    return f"{h}小时" + (f"{m}分钟" if m else "")


def hours(h: float) -> str:
    return f"{h:.1f}".rstrip("0").rstrip(".")


def offer(
    *,
    task_id: int,
    place: str,
    need: int,
    what: str,
    starts_at: datetime,
    ends_at: datetime,
    dispatch: bool,
    urgency: str,
    distance_m: float,
    ttl: timedelta,
    now: datetime,
) -> str:
    when = f"{when_day(ends_at, now)} {hm(ends_at)} 前" if dispatch else shift_time(starts_at, ends_at, now)
    head = "【紧急求助" if urgency == "emergency" else "【任务邀请"
    return (
        f"{head} T{task_id}】{place}需要{need}位志愿者{what}，{when}，距您约{format_distance(distance_m)}。\n"
        f"回复「接受 {task_id}」或「拒绝 {task_id}」，{duration(ttl)}内有效。"
    )


def promoted(
    *, task_id: int, title: str, place: str, starts_at: datetime, ends_at: datetime, now: datetime
) -> str:
    return (
        f"【候补成功】有人让出了名额，您已报上「{title}」· {place} · "
        f"{shift_time(starts_at, ends_at, now)}。\n不能来请回复「取消 {task_id}」，名额会让给下一位候补。"
    )


def report_taken(*, report_id: int, names: Sequence[str], by: datetime, now: datetime) -> str:
    who = "、".join(mask_name(n) for n in names)
    return f"R{report_id} 已有{len(names)}位志愿者接单：{who}，预计{when_day(by, now)} {hm(by)} 前到达。"


def report_filled(*, report_id: int, names: Sequence[str]) -> str:
    who = "、".join(mask_name(n) for n in names)
    return f"R{report_id} 所需人数已满：{who}。完成后会再通知您。"


def report_done(*, report_id: int, names: Sequence[str], hours_total: float) -> str:
    who = "、".join(mask_name(n) for n in names)
    return f"R{report_id} 已完成：{who}共服务 {hours(hours_total)} 小时。感谢您的上报！"


def exhausted(*, task_id: int, report_id: int | None, title: str, place: str, missing: int) -> str:
    ref = f"R{report_id}（T{task_id}）" if report_id else f"T{task_id}"
    return (
        f"【派单未满】{ref}「{title}」· {place}：附近已没有可邀请的志愿者，还差{missing}人。"
        "请协调安排，或发起「广播」招募。"
    )


def understaffed(
    *,
    task_id: int,
    title: str,
    place: str,
    starts_at: datetime,
    ends_at: datetime,
    accepted: int,
    slots: int,
    now: datetime,
) -> str:
    return (
        f"【班次缺人】T{task_id}「{title}」· {place} · {shift_time(starts_at, ends_at, now)}，"
        f"已报名{accepted}/{slots}人，还差{slots - accepted}人。可发起「广播」招募。"
    )


def report_title(category: str, text: str) -> str:
    text = " ".join(text.split())
    short = text if len(text) <= 30 else text[:29] + "…"
    return f"{category}：{short}" if short else category

