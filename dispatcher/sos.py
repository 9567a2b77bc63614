"""SOS decisions, pure: how far to look, who goes where, which AED a runner fetches, and
what each person is told. No I/O; jobs/sos.py runs the flow around these.

The flow follows community first-responder systems (GoodSAM, Heartrunner, PulsePoint):

- the caller is told to ring 120 before anything else; the search runs in the background;
- the nearest active first-aiders with a valid 救护员证 are alerted, 3-5 at a time, within
  500 m in town and 1 km in the villages, widening every 60 s (the dispatcher's emergency
  waves, ranked by distance only, quiet hours ignored);
- each alert names a role. The nearest is sent straight to the patient (CPR cannot wait);
  the others are asked to fetch an AED on the way: for each of them the open, in-service AED
  that makes their whole run (them -> AED -> patient) shortest, among those within reach
  of the patient;
- an acceptance keeps the role the alert named (people act on what they read, and switching
  a runner already heading for the AED costs the minutes the AED is for), unless that role
  is already covered: then they take the role still missing; once both are covered, extra
  hands go to the patient (compressions are swapped every two minutes);
- when ``sos_responders`` have accepted, everyone else still holding an alert is stood down.

Town or village (the emergency radius) is read from the grid's ancestors: a 街道 (street) is
town; under a 镇 or 乡 it is village, except a 社区 (residential community): those are the
built-up seats of the towns, as dense as a street, so they get the town radius too.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from zoneinfo import ZoneInfo

from dispatcher.aed import AEDPoint, is_open
from dispatcher.geo import amap_link, format_distance, tencent_map_link
from dispatcher.matching import geodesic_m

LOCAL_TZ = ZoneInfo("Asia/Shanghai")

PATIENT = "patient"  # straight to the patient: start or take over CPR
FETCH_AED = "fetch_aed"  # fetch the named AED first, then to the patient
ROLE_LABEL = {PATIENT: "直奔患者", FETCH_AED: "取AED"}


# --- where and how far ---------------------------------------------------------------------


def area_is_urban(town: str | None, village: str | None) -> bool:
    """Town radius (True) or village radius (False), from the names of the grid's ancestors."""
    if town and town.endswith("街道"):
        return True
    return bool(village) and str(village).endswith("社区")


def is_repeat(
    *,
    then: datetime,
    now: datetime,
    distance_m: float,
    window_s: float,
    radius_m: float,
) -> bool:
    """A caller's second SOS this soon and this near is the same emergency (a double tap, or
    a second location to be sure): it must not alert a second crowd."""
    return timedelta(0) <= now - then <= timedelta(seconds=window_s) and distance_m <= radius_m


# --- AEDs and roles -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Reachable:
    aed: AEDPoint
    to_patient_m: float


@dataclass(frozen=True)
class Route:
    """A runner's way to the patient through an AED."""

    aed: AEDPoint
    to_aed_m: float
    to_patient_m: float  # from the AED

    @property
    def total_m(self) -> float:
        return self.to_aed_m + self.to_patient_m


def aeds_in_reach(
    points: Iterable[AEDPoint], lat: float, lng: float, at: time, reach_m: float
) -> list[Reachable]:
    """In-service AEDs open at ``at`` within ``reach_m`` of the patient, nearest first.

    A closed cabinet is not worth a run: the runner would find it locked.
    """
    out = [
        Reachable(p, geodesic_m(lat, lng, p.lat, p.lng))
        for p in points
        if p.in_service and is_open(p.hours, at)
    ]
    return sorted((r for r in out if r.to_patient_m <= reach_m), key=lambda r: (r.to_patient_m, r.aed.id))


def fetch_route(lat: float, lng: float, aeds: Sequence[Reachable]) -> Route | None:
    """The AED that makes this runner's whole way (runner -> AED -> patient) shortest."""
    best: Route | None = None
    for r in aeds:
        route = Route(r.aed, geodesic_m(lat, lng, r.aed.lat, r.aed.lng), r.to_patient_m)
        if best is None or (route.total_m, route.aed.id) < (best.total_m, best.aed.id):
            best = route
    return best


def offer_roles(order: Sequence[int], covered: Collection[str], can_fetch: Mapping[int, bool]) -> dict[int, str]:
    """The role each alert of a wave names; ``order`` is the wave's people, nearest first.

    Roles already held by someone who accepted are not handed out again: with the patient
    covered, everyone who can reach an AED is asked to fetch one; with the AED covered,
    everyone goes to the patient. With neither, the nearest goes to the patient and the rest
    fetch.
    """
    roles: dict[int, str] = {}
    patient_open = PATIENT not in covered
    fetch_open = FETCH_AED not in covered
    for i, pid in enumerate(order):
        if patient_open and (i == 0 or not fetch_open):
            roles[pid] = PATIENT
        elif fetch_open and can_fetch.get(pid, False):
            roles[pid] = FETCH_AED
        else:
            roles[pid] = PATIENT
    return roles


def role_on_accept(offered: str | None, covered: Sequence[str], can_fetch: bool) -> str:
    """The role an acceptance gets: the alert's, unless someone already holds it."""
    missing = [r for r in (PATIENT, FETCH_AED) if r not in covered and (r == PATIENT or can_fetch)]
    if offered in missing:
        return offered  # type: ignore[return-value]
    if missing:
        return missing[0]
    return PATIENT  # extra hands: CPR is tiring, rescuers swap every two minutes


def enough(accepted: int, needed: int) -> bool:
    return accepted >= needed


# --- messages (Simplified Chinese; HTML links work in WeChat customer-service text) ----------


def map_links(lat: float, lng: float, name: str) -> str:
    """Tencent (opens inside WeChat) and Amap (most people's navigator), both in GCJ-02."""
    return (
        f'<a href="{tencent_map_link(lat, lng, name)}">腾讯地图</a> | '
        f'<a href="{amap_link(lat, lng, name)}">高德地图</a>'
    )


def _ttl(ttl: timedelta) -> str:
    s = int(ttl.total_seconds())
    return f"{s // 60}分钟" if s >= 60 and s % 60 == 0 else f"{s}秒"


def alert(
    *,
    task_id: int,
    place: str,
    lat: float,
    lng: float,
    distance_m: float,
    role: str,
    route: Route | None,
    ttl: timedelta,
) -> str:
    """The alert a first-aider receives: where, how far, their role, how to answer."""
    head = f"【急救呼叫 T{task_id}】{place}附近有人需要急救，距您约{format_distance(distance_m)}。"
    if role == FETCH_AED and route is not None:
        job = (
            f"请先到「{route.aed.name}」取AED（距您约{format_distance(route.to_aed_m)}），再赶往患者身边。\n"
            f"AED位置：{map_links(route.aed.lat, route.aed.lng, route.aed.name)}"
        )
    else:
        job = "请直接赶往患者身边，协助心肺复苏。"
    return (
        f"{head}\n{job}\n患者位置：{map_links(lat, lng, '急救呼叫')}\n"
        f"能去请回复「接受 {task_id}」，不便请回复「拒绝 {task_id}」（{_ttl(ttl)}内）。"
    )


def accept_reply(
    *, task_id: int, role: str, offered: str | None, route: Route | None, lat: float, lng: float
) -> str:
    """What an acceptor is told at once: their (final) role and the links they need."""
    if role == FETCH_AED and route is not None:
        lead = "已有救护员直奔患者，" if offered != FETCH_AED else ""
        body = (
            f"谢谢您！{lead}请先到「{route.aed.name}」取AED（距您约{format_distance(route.to_aed_m)}），"
            f"再赶往患者身边。\nAED位置：{map_links(route.aed.lat, route.aed.lng, route.aed.name)}"
        )
    else:
        lead = "已有救护员去取AED，" if offered == FETCH_AED else ""
        body = f"谢谢您！{lead}请立即赶往患者身边，协助心肺复苏。"
    return (
        f"{body}\n患者位置：{map_links(lat, lng, '急救呼叫')}\n"
        f"到达后回复「签到」，结束后回复「签退」。（T{task_id}）"
    )


def caller_update(*, accepted: int, distance_m: float, role: str, aed_name: str | None) -> str:
    """The caller hears that help is on the way (and who brings the AED)."""
    text = f"已有{accepted}位持证救护员正在赶来，约{format_distance(distance_m)}。"
    if role == FETCH_AED and aed_name:
        text += f"这位救护员先去取AED（{aed_name}）。"
    return text + "请继续胸外按压，等待120。"


CALLER_NOBODY = "附近暂时没有能赶来的持证救护员。请继续胸外按压，等待120；附近有AED请尽快取来使用。"
STAND_DOWN = "【急救呼叫 T{task_id}】已有志愿者赶往现场，感谢您！"
FULL_REPLY = "已有志愿者赶往现场，感谢您！"
ALREADY_REPLY = "您已接下这次急救呼叫（T{task_id}），请尽快赶往现场。"
OVER_REPLY = "这次急救呼叫（T{task_id}）已经结束，谢谢您！"
DECLINE_REPLY = "好的，谢谢您！我们会呼叫其他救护员。"
NOT_YOURS = "没有找到发给您的急救呼叫 T{task_id}。请核对编号，或回复「我的」查看。"


def coordinator_started(*, task_id: int, place: str, at: datetime, caller: str, alerted: int) -> str:
    local = at.astimezone(LOCAL_TZ).strftime("%H:%M")
    reach = f"已呼叫附近{alerted}位持证救护员" if alerted else "附近暂无可呼叫的持证救护员，请协调支援"
    return f"【急救呼叫 T{task_id}】{local} {place}有人呼救（{caller}），{reach}。"


def coordinator_filled(*, task_id: int, who: Sequence[tuple[str, str]]) -> str:
    """``who``: (masked name, role) of everyone who accepted, in order."""
    names = "、".join(f"{name}（{ROLE_LABEL.get(role, role)}）" for name, role in who)
    return f"【急救呼叫 T{task_id}】已有{len(who)}位救护员赶往现场：{names}。"


# --- the timeline a coordinator reads -----------------------------------------------------------

EVENT_LABEL = {
    "called": "收到呼救位置",
    "repeat": "同一呼救人再次呼救（沿用本次）",
    "wave": "第{wave}轮呼叫",
    "alerted": "呼叫",
    "sent": "消息送达微信",
    "accepted": "接受",
    "declined": "拒绝",
    "stood_down": "通知无需前往",
    "caller_told": "告知呼救人",
    "coordinator_told": "告知协调员",
    "filled": "人数已够",
    "exhausted": "附近已无可呼叫的救护员",
}


def timeline_line(*, at: datetime, kind: str, wave: int | None, who: str, detail: Mapping[str, object]) -> str:
    """One line of the timeline: "20:31:05.412 第1轮呼叫 · 500米 · 4人"."""
    stamp = at.astimezone(LOCAL_TZ).strftime("%H:%M:%S.%f")[:-3]
    label = EVENT_LABEL.get(kind, kind).format(wave=wave)
    parts = [label]
    if who:
        parts.append(who)
    role = detail.get("role")
    if isinstance(role, str):
        parts.append(ROLE_LABEL.get(role, role))
    dist = detail.get("distance_m")
    if isinstance(dist, int | float):
        parts.append(format_distance(float(dist)))
    if kind == "wave":
        radius = detail.get("radius_m")
        radius_m = float(radius) if isinstance(radius, int | float) else 0.0
        parts.append(f"半径{format_distance(radius_m)} · {detail.get('alerted', 0)}人")
    return f"{stamp} " + " · ".join(parts)
