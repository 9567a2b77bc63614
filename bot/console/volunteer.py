"""Volunteer pages for inside WeChat (/v/): my upcoming shifts, open shifts near me, sign up
and cancel — through ``dispatcher.services``, so the rules are exactly the chat's.

Entry is a signed, expiring link sent in the chat (``volunteer_link``); WeChat OAuth can
replace it later without touching the pages. Opening the link starts a server-side session
and redirects, so the token does not linger in the address bar or in Referer headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from itsdangerous import BadSignature, URLSafeTimedSerializer
from sqlmodel import Session

from bot.console.base import WS, Ctx, make_ctx, redirect, render, run_sync, session_store, set_cookie
from dispatcher import services
from dispatcher.geo import format_distance
from models.settings import Settings
from models.tables import Person, PersonStatus

SALT = "redgrid-volunteer-link"

SIGNUP_TEXT = {
    "accepted": "报名成功！开始前会提醒您。",
    "waitlisted": "名额已满，您已进入候补第{pos}位，有人取消会自动替补并通知您。",
    "already": "您已经报过这个班次了。",
    "overlap": "这个时间您已有「{other}」，不能重复报名。",
    "not_eligible": "这个班次需要相应资质，暂时不能报名。",
    "closed": "这个班次已截止或取消。",
}
CANCEL_TEXT = {
    "cancelled": "已取消报名，名额会让给候补的志愿者。",
    "too_late": "开始前{hours}小时内不能自行取消，请联系协调员。",
    "not_found": "没有找到您的这项报名。",
}


def _serializer(settings: Settings) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(settings.signing_key("volunteer-link"), salt=SALT)


def volunteer_link(settings: Settings, *, person_id: int) -> str:
    """A link to the person's own pages, valid for ``volunteer_link_ttl_s``."""
    token = _serializer(settings).dumps({"p": person_id})
    return f"{settings.public_base_url.rstrip('/')}/v/s/{token}"


def read_link(settings: Settings, token: str) -> int | None:
    try:
        data = _serializer(settings).loads(token, max_age=settings.volunteer_link_ttl_s)
    except BadSignature:  # includes SignatureExpired
        return None
    pid = data.get("p") if isinstance(data, dict) else None
    return pid if isinstance(pid, int) else None


def _volunteer(session: Session, person_id: int | None) -> Person | None:
    p = session.get(Person, person_id) if person_id is not None else None
    if p is None or not p.is_volunteer or p.status in (PersonStatus.suspended, PersonStatus.left):
        return None
    return p


async def enter(request: web.Request) -> web.StreamResponse:
    ctx = await make_ctx(request)
    pid = read_link(ctx.settings, request.match_info["token"])

    def check() -> bool:
        with ctx.sessions() as s:
            return _volunteer(s, pid) is not None

    if pid is None or not await asyncio.to_thread(check):
        return render(ctx, "v_error.html", http_status=401, message="链接已失效，请在公众号里回复「我的」获取新链接。")
    store = session_store(request)
    if ctx.ws is not None:
        await asyncio.to_thread(store.destroy, ctx.ws)
    ws = await asyncio.to_thread(store.create, person_id=pid)
    resp = web.Response(status=303, headers={"Location": "/v/"})
    set_cookie(request, resp, ws)
    return resp


def vpage(fn: Callable[[Ctx, Session, Person], web.StreamResponse]) -> Callable[[web.Request], Any]:
    async def handler(request: web.Request) -> web.StreamResponse:
        ctx = await make_ctx(request)

        def run(c: Ctx, s: Session) -> web.StreamResponse:
            person = _volunteer(s, c.person_id)
            if person is None:
                return render(c, "v_error.html", http_status=403, message="您的志愿者账号暂不可用，请联系协调员。")
            return fn(c, s, person)

        return await asyncio.to_thread(run_sync, ctx, run, fallback="/v/")

    handler.__name__ = fn.__name__
    return handler


@vpage
def home(ctx: Ctx, session: Session, person: Person) -> web.StreamResponse:
    mine = services.my_summary(session, person_id=int(person.id or 0), now=ctx.now)
    shifts = services.open_shifts(session, person=person, now=ctx.now, days=7, limit=20)
    return render(ctx, "v_home.html", person=person, mine=mine, shifts=shifts, fmt_distance=format_distance)


@vpage
def signup(ctx: Ctx, session: Session, person: Person) -> web.StreamResponse:
    out = services.sign_up(session, ctx.fx, person_id=int(person.id or 0), task_id=ctx.int_arg("task_id"),
                           now=ctx.now, policy=ctx.settings.dispatch)
    text = SIGNUP_TEXT.get(out.status, SIGNUP_TEXT["closed"])
    ctx.flash(text.format(pos=out.waitlist_pos, other=out.clash.title if out.clash else ""),
              "ok" if out.status in ("accepted", "waitlisted") else "error")
    return redirect(ctx, "/v/")


@vpage
def cancel(ctx: Ctx, session: Session, person: Person) -> web.StreamResponse:
    out = services.cancel(session, ctx.fx, person_id=int(person.id or 0), task_id=ctx.int_arg("task_id"),
                          now=ctx.now, policy=ctx.settings.dispatch)
    hours = f"{ctx.settings.dispatch.cancel_cutoff_s / 3600:g}"
    ctx.flash(CANCEL_TEXT.get(out.status, CANCEL_TEXT["not_found"]).format(hours=hours),
              "ok" if out.status == "cancelled" else "error")
    return redirect(ctx, "/v/")


__all__ = ["WS", "cancel", "enter", "home", "read_link", "signup", "volunteer_link"]
