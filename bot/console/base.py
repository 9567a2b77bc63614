"""The console's plumbing: session middleware with CSRF, the page runner (one transaction
per request, in a worker thread so the event loop keeps serving WeChat), and rendering."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import jinja2
import redis
from aiohttp import web
from multidict import MultiDict, MultiDictProxy, MultiMapping
from sqlalchemy.orm import sessionmaker
from sqlmodel import Session

from bot.app import REDIS, SESSIONS, SETTINGS
from bot.console.auth import SessionStore, WebSession, csrf_ok
from bot.console.scope import Scope, scope_of
from dispatcher.effects import Effects
from dispatcher.texts import KIND_NAMES, mask_phone
from models.db import transaction, utcnow
from models.exceptions import Conflict, NotAllowed, NotFound
from models.settings import Settings

log = logging.getLogger(__name__)

HERE = Path(__file__).parent
JINJA = web.AppKey("console_jinja", jinja2.Environment)
KIND = web.AppKey("console_kind", str)  # "console" | "volunteer"
WS = web.RequestKey("redgrid_web_session", object)  # WebSession | None
FORM = web.RequestKey("redgrid_form", object)  # the parsed POST form
COOKIE = {"console": "rg_console", "volunteer": "rg_v"}
MAX_UPLOAD = 5 * 1024 * 1024  # a roster of a few thousand rows is well under 1 MB
# Nothing remote, ever: pages may load only what this server serves.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")

STATUS_LABEL = {
    "pending": "待审核", "active": "在岗", "suspended": "已暂停", "left": "已退出",
    "open": "招募中", "filled": "已满员", "done": "已完成", "cancelled": "已取消", "exhausted": "无人可派",
    "draft": "草稿", "sending": "发送中", "taken": "已接单",
    "offered": "已邀请", "accepted": "已报名", "declined": "已拒绝", "expired": "已过期", "withdrawn": "已撤回",
    "waitlisted": "候补", "checked_in": "已签到", "completed": "已签退", "no_show": "缺席",
}
URGENCY_LABEL = {"routine": "一般", "urgent": "紧急", "emergency": "特急"}
WEEKDAY_LABEL = {"MO": "一", "TU": "二", "WE": "三", "TH": "四", "FR": "五", "SA": "六", "SU": "日"}


def make_env(tz: str, *, static_prefix: str = "/console/static") -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(HERE / "templates")),
        autoescape=jinja2.select_autoescape(["html"], default=True),
        undefined=jinja2.ChainableUndefined,  # a missing form error is simply absent
        trim_blocks=True,
        lstrip_blocks=True,
    )
    zone = ZoneInfo(tz)

    def local(dt: datetime | None, fmt: str = "%m-%d %H:%M") -> str:
        return dt.astimezone(zone).strftime(fmt) if dt else ""

    def age(td: Any) -> str:
        s = int(td.total_seconds())
        if s < 3600:
            return f"{max(1, s // 60)}分钟"
        if s < 86400:
            return f"{s // 3600}小时{(s % 3600) // 60}分"
        return f"{s // 86400}天{(s % 86400) // 3600}小时"

    def recurrence(rule: str | None) -> str:
        if not rule:
            return ""
        days = rule.partition(":")[2].split(",")
        return "每周" + "、".join(WEEKDAY_LABEL.get(d, d) for d in days)

    env.globals["static_url"] = lambda name: f"{static_prefix}/{name}"
    env.filters.update(
        local=local, age=age, mask=lambda p: mask_phone(p) or "未留", recurrence=recurrence,
        kind=lambda k: KIND_NAMES.get(str(getattr(k, "value", k)), str(k)),
        status=lambda s: STATUS_LABEL.get(str(getattr(s, "value", s)), str(s)),
        urgency=lambda u: URGENCY_LABEL.get(str(getattr(u, "value", u)), str(u)),
        val=lambda e: getattr(e, "value", e),
    )
    return env


# --- request context ---------------------------------------------------------------------------


@dataclass
class Ctx:
    settings: Settings
    sessions: sessionmaker[Session]
    redis: redis.Redis
    env: jinja2.Environment
    kind: str
    ws: WebSession | None
    query: MultiMapping[str]
    match: Mapping[str, str]
    form: Mapping[str, Any]
    path: str
    referer: str
    now: datetime = field(default_factory=utcnow)
    fx: Effects = field(default_factory=Effects)
    flashes: list[tuple[str, str]] = field(default_factory=list)

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.settings.tz)

    @property
    def person_id(self) -> int:
        assert self.ws is not None and self.ws.person_id is not None
        return self.ws.person_id

    def flash(self, text: str, level: str = "ok") -> None:
        self.flashes.append((level, text))

    def int_arg(self, name: str) -> int:
        try:
            return int(self.match[name])
        except (KeyError, ValueError):
            raise NotFound(name) from None


def _flash_key(ctx: Ctx) -> str:
    return f"web:{ctx.kind}:flash:{ctx.ws.sid if ctx.ws else '-'}"


def _save_flashes(ctx: Ctx) -> None:
    if ctx.flashes and ctx.ws is not None:
        key = _flash_key(ctx)
        pipe = ctx.redis.pipeline()
        for level, text in ctx.flashes:
            pipe.rpush(key, f"{level}|{text}")
        pipe.expire(key, 600)
        pipe.execute()


def _pop_flashes(ctx: Ctx) -> list[tuple[str, str]]:
    if ctx.ws is None:
        return []
    key = _flash_key(ctx)
    pipe = ctx.redis.pipeline()
    pipe.lrange(key, 0, -1)
    pipe.delete(key)
    raw, _ = pipe.execute()
    out = []
    for item in raw:
        level, _, text = item.decode().partition("|")
        out.append((level, text))
    return out


def render(ctx: Ctx, template: str, http_status: int = 200, **values: Any) -> web.Response:
    values.setdefault("nav", "")
    flashes = _pop_flashes(ctx) + ctx.flashes
    ctx.flashes = []
    html = ctx.env.get_template(template).render(
        csrf=ctx.ws.csrf if ctx.ws else "", flashes=flashes, path=ctx.path, now=ctx.now, **values)
    return web.Response(text=html, content_type="text/html", charset="utf-8", status=http_status)


def redirect(ctx: Ctx, location: str) -> web.Response:
    _save_flashes(ctx)
    return web.Response(status=303, headers={"Location": location})


def back(ctx: Ctx, fallback: str) -> str:
    """The page the form came from, when it is one of ours."""
    ref = urlsplit(ctx.referer)
    prefix = "/console" if ctx.kind == "console" else "/v"
    if ref.path.startswith(prefix):
        return ref.path + (f"?{ref.query}" if ref.query else "")
    return fallback


# --- middleware --------------------------------------------------------------------------------


def session_store(request: web.Request) -> SessionStore:
    cfg = request.config_dict
    return SessionStore(cfg[REDIS], cfg[SETTINGS], kind=cfg[KIND])


async def read_form(request: web.Request) -> Mapping[str, Any]:
    """The POSTed form: urlencoded through aiohttp (small), multipart streamed with our own cap
    (the app's body limit is sized for WeChat's XML, not for a roster upload)."""
    if FORM in request:
        return request[FORM]  # type: ignore[index, return-value]
    form: Mapping[str, Any]
    if request.content_type == "multipart/form-data":
        out: MultiDict[Any] = MultiDict()
        reader = await request.multipart()
        total = 0
        while (part := await reader.next()) is not None:
            if not hasattr(part, "read_chunk"):
                continue
            chunks = []
            while chunk := await part.read_chunk(65536):  # type: ignore[union-attr]
                total += len(chunk)
                if total > MAX_UPLOAD:
                    raise web.HTTPRequestEntityTooLarge(max_size=MAX_UPLOAD, actual_size=total)
                chunks.append(chunk)
            data = b"".join(chunks)
            name = part.name or ""  # type: ignore[union-attr]
            if part.filename:  # type: ignore[union-attr]
                out.add(name, (part.filename, data))  # type: ignore[union-attr]
            else:
                out.add(name, data.decode("utf-8", errors="replace"))
        form = MultiDictProxy(out)
    elif request.method == "POST":
        form = await request.post()
    else:
        form = MultiDictProxy(MultiDict())
    request[FORM] = form
    return form


def _public(request: web.Request) -> bool:
    p = request.path
    return p.startswith(("/console/static/", "/v/static/", "/v/s/")) or p == "/console/login"


@web.middleware
async def web_middleware(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    kind = request.config_dict[KIND]
    store = session_store(request)
    ws = await asyncio.to_thread(store.load, request.cookies.get(COOKIE[kind]))
    request[WS] = ws
    if request.method not in ("GET", "HEAD", "OPTIONS"):
        form = await read_form(request)
        token = request.headers.get("X-CSRF-Token") or form.get("csrf")
        if not csrf_ok(ws, token if isinstance(token, str) else None):
            return _secure(web.Response(status=403, text="请求已过期或来源不明（CSRF 校验失败），请刷新页面后重试。"))
    if not _public(request) and (ws is None or ws.person_id is None):
        if request.path.startswith(("/console/api/", "/v/api/")) or request.method != "GET":
            return _secure(web.json_response({"error": "login required"}, status=401))
        if kind == "console":
            return _secure(web.Response(status=303, headers={"Location": "/console/login"}))
        return _secure(web.Response(status=401, text="链接已失效，请在公众号里回复「我的」获取新链接。"))
    try:
        resp = await handler(request)
    except web.HTTPException as exc:
        return _secure(exc)
    return _secure(resp)


def _secure(resp: web.StreamResponse) -> web.StreamResponse:
    resp.headers.setdefault("Content-Security-Policy", CSP)
    resp.headers.setdefault("X-Content-Type-Options", "nosniff")
    resp.headers.setdefault("Referrer-Policy", "same-origin")
    resp.headers.setdefault("X-Frame-Options", "DENY")
    if "Cache-Control" not in resp.headers and not isinstance(resp, web.FileResponse):
        resp.headers["Cache-Control"] = "no-store"
    return resp


def set_cookie(request: web.Request, resp: web.StreamResponse, ws: WebSession) -> None:
    cfg = request.config_dict
    kind = cfg[KIND]
    resp.set_cookie(
        COOKIE[kind], session_store(request).cookie_value(ws), httponly=True, samesite="Lax",
        secure=cfg[SETTINGS].console_cookie_secure, path="/console" if kind == "console" else "/v",
        max_age=cfg[SETTINGS].console_session_ttl_s,
    )


# --- running a page ----------------------------------------------------------------------------

Page = Callable[[Ctx, Session, Scope], web.StreamResponse]


async def make_ctx(request: web.Request) -> Ctx:
    cfg = request.config_dict
    form = await read_form(request) if request.method == "POST" else MultiDictProxy(MultiDict())
    return Ctx(settings=cfg[SETTINGS], sessions=cfg[SESSIONS], redis=cfg[REDIS], env=cfg[JINJA], kind=cfg[KIND],
               ws=request.get(WS), query=request.query, match=dict(request.match_info), form=form,
               path=request.path, referer=request.headers.get("Referer", ""))


def run_sync(ctx: Ctx, fn: Callable[[Ctx, Session], web.StreamResponse], *, fallback: str) -> web.StreamResponse:
    """One transaction; Effects applied only after it committed; domain errors become pages."""
    try:
        with transaction(ctx.sessions) as session:
            resp = fn(ctx, session)
    except NotFound:
        return render(ctx, "error.html", http_status=404, title="找不到", message="没有这条记录，或它不在您的管理范围内。")
    except NotAllowed as exc:
        return render(ctx, "error.html", http_status=403, title="无权操作", message=str(exc) or "无权操作")
    except Conflict as exc:
        ctx.fx = Effects()  # rolled back: nothing to apply
        ctx.flash(str(exc), "error")
        return redirect(ctx, back(ctx, fallback))
    if ctx.fx:
        from jobs.effects import apply

        apply(ctx.redis, ctx.fx)
    return resp


def page(fn: Page, *, fallback: str = "/console/") -> Callable[[web.Request], Any]:
    """A console handler: ``fn(ctx, session, scope)`` runs in a thread inside a transaction."""

    async def handler(request: web.Request) -> web.StreamResponse:
        ctx = await make_ctx(request)

        def scoped(c: Ctx, s: Session) -> web.StreamResponse:
            return fn(c, s, scope_of(s, c.person_id))

        return await asyncio.to_thread(run_sync, ctx, scoped, fallback=fallback)

    handler.__name__ = fn.__name__
    return handler
