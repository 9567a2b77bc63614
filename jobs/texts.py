"""What the background jobs say (reminders, digests, weekly hours), in Chinese.

Times are shown in the display zone (Asia/Shanghai); everything stored is aware UTC.
"""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

WEEKDAYS = "一二三四五六日"


def local(dt: datetime, tz: str) -> datetime:
    return dt.astimezone(ZoneInfo(tz))


def day_label(dt: datetime, tz: str) -> str:
    d = local(dt, tz)
    return f"{d.month}月{d.day}日(周{WEEKDAYS[d.weekday()]})"


def hhmm(dt: datetime, tz: str) -> str:
    return local(dt, tz).strftime("%H:%M")


def hours(value: float) -> str:
    """1.5 -> "1.5", 26.0 -> "26"."""
    return f"{value:.1f}".rstrip("0").rstrip(".") if value % 1 else str(int(value))


def _where(title: str, place: str) -> str:
    return f"{title} · {place}" if place else title


def reminder_before(*, title: str, place: str, starts_at: datetime, sent_at: datetime, task_id: int,
                    tz: str) -> str:
    """A reminder ahead of a shift; its wording follows how far ahead it is sent."""
    ahead = (starts_at - sent_at).total_seconds()
    next_day = (local(starts_at, tz).date() - local(sent_at, tz).date()).days == 1
    if next_day and ahead >= 6 * 3600:
        return (f"【明天的班次】{_where(title, place)} · {day_label(starts_at, tz)} {hhmm(starts_at, tz)}。"
                f"不能来请回复「取消 {task_id}」，候补的志愿者会补上。")
    if ahead >= 24 * 3600:
        return (f"【班次提醒】{_where(title, place)} · {day_label(starts_at, tz)} {hhmm(starts_at, tz)}。"
                f"不能来请回复「取消 {task_id}」，候补的志愿者会补上。")
    lead = f"{round(ahead / 3600)}小时后开始" if ahead >= 3600 else f"{max(1, round(ahead / 60))}分钟后开始"
    return f"【{lead}】{_where(title, place)} · {hhmm(starts_at, tz)}。到达后回复「签到」。"


def reminder_checkin(*, title: str, place: str, starts_at: datetime, tz: str) -> str:
    return f"【现在开始】{_where(title, place)} · {hhmm(starts_at, tz)}。到达后请回复「签到」。"


def reminder_checkout(*, title: str, ends_at: datetime, tz: str) -> str:
    return f"辛苦了！{title} 已于 {hhmm(ends_at, tz)} 结束，请回复「签退」记下本次服务时长。"


def daily_digest(*, day: datetime, tz: str, scope: str, today_tasks: int, unfilled: int, missing: int,
                 open_reports: int) -> str:
    lines = [f"【每日简报】{day_label(day, tz)} · {scope}"]
    lines.append(f"今天的任务和班次：{today_tasks} 项")
    if unfilled:
        lines.append(f"未来两天未满员的班次：{unfilled} 个，还差 {missing} 人")
    else:
        lines.append("未来两天的班次都已满员")
    lines.append(f"待处理的上报：{open_reports} 条")
    lines.append("回复「状态」查看详情。")
    return "\n".join(lines)


def weekly_hours(*, week_hours: float, year_hours: float, tasks: int) -> str:
    return (f"【上周服务】您上周参加了 {tasks} 次服务，共 {hours(week_hours)} 小时，"
            f"今年累计 {hours(year_hours)} 小时。谢谢您！")


def template_data(text: str) -> dict[str, dict[str, str]]:
    """Template messages carry the same words: the first line as the title, the rest below."""
    head, _, rest = text.partition("。")
    return {"first": {"value": head + ("。" if rest else "")}, "remark": {"value": rest}}
