"""Console pages and actions (routes in ``bot.console.setup``)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from aiohttp import web
from sqlmodel import Session, col, select

from bot.console import actions, queries
from bot.console.auth import WebSession, authenticate
from bot.console.base import (
    WS,
    Ctx,
    make_ctx,
    redirect,
    render,
    run_sync,
    session_store,
    set_cookie,
)
from bot.console.scope import (
    Scope,
    campaign_visible,
    get_campaign,
    get_person,
    get_task,
    unit_in_scope,
    units_in_scope,
)
from dispatcher.audience import Audience, cancel_campaign, create_campaign, preview_audience
from models.exceptions import Conflict, NotAllowed
from models.tables import (
    Campaign,
    CampaignStatus,
    Certificate,
    GridUnit,
    Level,
    Person,
    TaskKind,
    TaskMode,
    Urgency,
)
from redgrid import roster

ROLE_LABEL = {"volunteer": "志愿者", "grid_worker": "网格员", "coordinator": "协调员"}


def _base(ctx: Ctx, session: Session, scope: Scope) -> dict[str, Any]:
    me = session.get(Person, scope.person_id)
    return {"me": me, "scope": scope}


# --- login -------------------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.StreamResponse:
    ws = request.get(WS)
    if ws is not None and ws.person_id is not None:
        return web.Response(status=303, headers={"Location": "/console/"})
    store = session_store(request)
    new: WebSession = ws if ws is not None else await asyncio.to_thread(store.create, person_id=None)
    request[WS] = new
    ctx = await make_ctx(request)
    resp = render(ctx, "login.html", error="", login="")
    set_cookie(request, resp, new)
    return resp


async def login(request: web.Request) -> web.StreamResponse:
    ctx = await make_ctx(request)
    login_name = str(ctx.form.get("login", ""))[:64]
    password = str(ctx.form.get("password", ""))[:256]

    def check(c: Ctx, s: Session) -> web.StreamResponse:
        r = authenticate(s, login=login_name, password=password, now=c.now, settings=c.settings)
        if r.ok:
            return web.Response(status=204)
        if r.reason == "locked" and r.locked_until is not None:
            msg = f"登录失败次数过多，账号已锁定至 {r.locked_until.astimezone(c.tz):%H:%M}，请稍后再试。"
            return render(c, "login.html", http_status=429, error=msg, login=login_name)
        if r.reason == "inactive":
            return render(c, "login.html", http_status=403, error="该账号已暂停或未激活。", login=login_name)
        return render(c, "login.html", http_status=401, error="账号或密码错误。", login=login_name)

    resp = await asyncio.to_thread(run_sync, ctx, check, fallback="/console/login")
    if resp.status != 204:
        return resp
    # a new session id at login: an id planted before login is worth nothing after it
    store = session_store(request)
    with_person = await asyncio.to_thread(_person_for_login, ctx, login_name)
    if ctx.ws is not None:
        await asyncio.to_thread(store.destroy, ctx.ws)
    new = await asyncio.to_thread(store.create, person_id=with_person)
    out = web.Response(status=303, headers={"Location": "/console/"})
    set_cookie(request, out, new)
    return out


def _person_for_login(ctx: Ctx, login_name: str) -> int:
    from bot.console.auth import find_coordinator

    with ctx.sessions() as s:
        p = find_coordinator(s, login_name)
        assert p is not None and p.id is not None
        return p.id


async def logout(request: web.Request) -> web.StreamResponse:
    ws = request.get(WS)
    if ws is not None:
        await asyncio.to_thread(session_store(request).destroy, ws)
    resp = web.Response(status=303, headers={"Location": "/console/login"})
    resp.del_cookie("rg_console", path="/console")
    return resp


# --- dashboard ---------------------------------------------------------------------------------


def dashboard(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    d = queries.dashboard(session, scope, now=ctx.now, settings=ctx.settings)
    return render(ctx, "dashboard.html", d=d, nav="dash", **_base(ctx, session, scope))


def charts(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    c = queries.charts(session, scope, now=ctx.now, tz=ctx.tz)
    return render(ctx, "charts.html", c=c, nav="charts", **_base(ctx, session, scope))


# --- tasks -------------------------------------------------------------------------------------


def _task_form_values(ctx: Ctx, session: Session, scope: Scope, **extra: Any) -> dict[str, Any]:
    grids = units_in_scope(session, scope, levels=(Level.town, Level.village, Level.grid))
    return {"kinds": list(TaskKind), "urgencies": list(Urgency), "skills": actions.SKILLS,
            "weekdays": actions.WEEKDAY_CODES, "grids": grids, "nav": "tasks", **_base(ctx, session, scope), **extra}


def task_list(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    show = ctx.query.get("show", "upcoming")
    tasks = queries.task_list(session, scope, now=ctx.now, show=show)
    return render(ctx, "tasks.html", tasks=tasks, show=show, nav="tasks", **_base(ctx, session, scope))


def task_new(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    tomorrow = (ctx.now.astimezone(ctx.tz) + timedelta(days=1)).date()
    values = {"title": "", "kind": "other", "description": "", "place": "", "grid_id": "", "date": tomorrow.isoformat(),
              "start": "09:00", "end": "11:00", "slots": "3", "skills": [], "urgency": "routine", "repeat": [],
              "lat": "", "lng": ""}
    return render(ctx, "task_form.html", **_task_form_values(ctx, session, scope, v=values, errors={}, task=None))


def _form_values(ctx: Ctx) -> dict[str, Any]:
    f = ctx.form
    getall = getattr(f, "getall", lambda k, d=None: d or [])
    return {k: str(f.get(k, "")) for k in ("title", "kind", "description", "place", "grid_id", "date", "start",
                                           "end", "slots", "urgency", "lat", "lng")} | {
        "skills": list(getall("skills", [])), "repeat": list(getall("repeat", []))}


def task_create(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    data, errors = actions.parse_task_form(ctx.form, tz=ctx.tz)
    if data is None:
        return render(ctx, "task_form.html", http_status=400,
                      **_task_form_values(ctx, session, scope, v=_form_values(ctx), errors=errors, task=None))
    task = actions.create_task(session, ctx.fx, scope=scope, data=data, now=ctx.now)
    extra = "，已按每周重复生成后续班次" if task.recurrence else ""
    ctx.flash(f"已创建班次「{task.title}」{extra}。")
    return redirect(ctx, f"/console/tasks/{task.id}")


def task_detail(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    task = get_task(session, scope, ctx.int_arg("task_id"))
    grid = session.get(GridUnit, task.grid_id)
    series = actions.series_tasks(session, task, now=ctx.now) if (task.recurrence or task.series_id) else []
    return render(ctx, "task.html", task=task, grid=grid, roster=queries.task_roster(session, int(task.id or 0)),
                  series=series, audit=queries.audit_for(session, entity="task", entity_id=int(task.id or 0)),
                  nav="tasks", **_base(ctx, session, scope))


def task_edit_form(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    task = get_task(session, scope, ctx.int_arg("task_id"))
    s, e = task.starts_at.astimezone(ctx.tz), task.ends_at.astimezone(ctx.tz)
    values = {"title": task.title, "kind": task.kind.value, "description": task.description, "place": task.place,
              "grid_id": str(task.grid_id), "date": s.date().isoformat(), "start": f"{s:%H:%M}", "end": f"{e:%H:%M}",
              "slots": str(task.slots), "skills": list(task.required_skills or []), "urgency": task.urgency.value,
              "repeat": [], "lat": "", "lng": ""}
    return render(ctx, "task_form.html", **_task_form_values(ctx, session, scope, v=values, errors={}, task=task))


def task_edit(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    task = get_task(session, scope, ctx.int_arg("task_id"))
    data, errors = actions.parse_task_form(ctx.form, tz=ctx.tz)
    if data is None:
        return render(ctx, "task_form.html", http_status=400,
                      **_task_form_values(ctx, session, scope, v=_form_values(ctx), errors=errors, task=task))
    changes = actions.edit_task(session, ctx.fx, scope=scope, task_id=int(task.id or 0), data=data, now=ctx.now)
    ctx.flash("已保存修改。" if changes else "没有改动。")
    return redirect(ctx, f"/console/tasks/{task.id}")


def task_cancel(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    task_id = ctx.int_arg("task_id")
    reason = str(ctx.form.get("reason", "")).strip()[:100]
    whole = ctx.form.get("series") == "1"
    done = actions.cancel_task(session, ctx.fx, scope=scope, task_id=task_id, now=ctx.now, reason=reason,
                               whole_series=whole)
    ctx.flash(f"已取消{len(done)}个班次，已通知报名的志愿者。" if done else "该班次已取消或已结束。")
    return redirect(ctx, f"/console/tasks/{task_id}")


# --- broadcasts --------------------------------------------------------------------------------


def _audience(ctx: Ctx, session: Session, scope: Scope, src: Any) -> Audience:
    getall = getattr(src, "getall", lambda k, d=None: d or [])
    raw = str(src.get("grid_id", "") or "")
    grid_id = int(raw) if raw.isdigit() else scope.unit_id
    unit_in_scope(session, scope, grid_id)
    roles = tuple(r for r in getall("roles", []) if r in ROLE_LABEL) or ("volunteer",)
    skills = tuple(s for s in getall("skills", []) if s in actions.SKILLS)
    kinds = tuple(k for k in getall("kinds", []) if k in {t.value for t in TaskKind})
    days = str(src.get("active_days", "") or "")
    since = ctx.now - timedelta(days=int(days)) if days.isdigit() and int(days) > 0 else None
    # a city-wide scope's own unit means "the whole city" to the audience
    return Audience(grid_id=None if grid_id == scope.unit_id and scope.city_wide else grid_id, roles=roles,
                    skills=skills, kinds=kinds, active_since=since)


def broadcasts(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    camps = [c for c in session.exec(select(Campaign).order_by(col(Campaign.id).desc()).limit(200))
             if campaign_visible(session, scope, c)][:30]
    units = units_in_scope(session, scope, levels=(Level.city, Level.town, Level.village))
    shifts = [t for t in queries.task_list(session, scope, now=ctx.now) if t.mode == TaskMode.signup][:100]
    return render(ctx, "broadcasts.html", campaigns=camps, units=units, shifts=shifts, roles=ROLE_LABEL,
                  skills=actions.SKILLS, kinds=list(TaskKind), nav="broadcasts", **_base(ctx, session, scope))


def audience_preview(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    aud = _audience(ctx, session, scope, ctx.query)
    p = preview_audience(session, audience=aud, now=ctx.now, template_id=ctx.settings.template_broadcast)
    return web.json_response({"total": p.total, "reachable_now": p.reachable_now, "deferred": p.deferred})


def broadcast_send(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    aud = _audience(ctx, session, scope, ctx.form)
    text = str(ctx.form.get("text", "")).strip()
    if not text:
        raise Conflict("请填写广播内容")
    if len(text) > 600:
        raise Conflict("广播内容请控制在600字以内（微信单条消息有长度限制）")
    raw_task = str(ctx.form.get("task_id", "") or "")
    task_id = get_task(session, scope, int(raw_task)).id if raw_task.isdigit() else None
    try:
        camp = create_campaign(session, ctx.fx, coordinator_id=scope.person_id, audience=aud, text=text,
                               now=ctx.now, task_id=task_id)
    except NotAllowed as exc:
        raise Conflict("所选范围超出您的管理范围") from exc
    ctx.flash(f"广播 #{camp.id} 已开始发送。")
    return redirect(ctx, f"/console/broadcasts/{camp.id}")


def campaign_detail(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    camp = get_campaign(session, scope, ctx.int_arg("campaign_id"))
    return render(ctx, "campaign.html", camp=camp, p=queries.campaign_progress(session, camp),
                  nav="broadcasts", **_base(ctx, session, scope))


def campaign_progress(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    camp = get_campaign(session, scope, ctx.int_arg("campaign_id"))
    return web.json_response(queries.campaign_progress(session, camp))


def campaign_cancel(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    camp = get_campaign(session, scope, ctx.int_arg("campaign_id"))
    if camp.status in (CampaignStatus.done, CampaignStatus.cancelled):
        ctx.flash("广播已结束，无需取消。")
    else:
        try:
            cancel_campaign(session, campaign_id=int(camp.id or 0), actor_id=scope.person_id, now=ctx.now)
        except NotAllowed as exc:
            raise Conflict("无权取消这条广播") from exc
        ctx.flash("已取消广播，未发出的消息不再发送。")
    return redirect(ctx, f"/console/broadcasts/{camp.id}")


# --- people ------------------------------------------------------------------------------------


def people(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    q, status, role = ctx.query.get("q", ""), ctx.query.get("status", ""), ctx.query.get("role", "")
    page_no = int(ctx.query.get("page", "1")) if ctx.query.get("page", "1").isdigit() else 1
    lines, total = queries.search_people(session, scope, q=q, status=status, role=role,
                                         offset=(page_no - 1) * 50, limit=50)
    return render(ctx, "people.html", lines=lines, total=total, q=q, status=status, role=role, page=page_no,
                  roles=ROLE_LABEL, nav="people", **_base(ctx, session, scope))


def person_detail(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    person = get_person(session, scope, ctx.int_arg("person_id"))
    grid = session.get(GridUnit, person.home_grid_id) if person.home_grid_id else None
    certs = session.exec(select(Certificate).where(Certificate.person_id == person.id)).all()
    return render(ctx, "person.html", p=person, grid=grid, certs=certs, scopes=actions.scope_choices(session, scope),
                  audit=queries.audit_for(session, entity="person", entity_id=int(person.id or 0)),
                  roles=ROLE_LABEL, nav="people", **_base(ctx, session, scope))


def person_status(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    pid = ctx.int_arg("person_id")
    action = str(ctx.form.get("action", ""))
    if action not in actions.PERSON_ACTIONS:
        raise Conflict("未知操作")
    try:
        p = actions.set_status(session, ctx.fx, scope=scope, person_id=pid, action=action, now=ctx.now)
    except NotAllowed as exc:
        raise Conflict(str(exc)) from exc
    ctx.flash(f"{p.name}：{ {'approve': '已通过审核', 'suspend': '已暂停', 'reactivate': '已恢复'}[action]}。")
    return redirect(ctx, f"/console/people/{pid}")


def person_roles(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    pid = ctx.int_arg("person_id")
    f = ctx.form
    raw_scope = str(f.get("coordinator_scope_id", "") or "")
    try:
        actions.set_roles(session, scope=scope, person_id=pid, volunteer=f.get("volunteer") == "1",
                          grid_worker=f.get("grid_worker") == "1", coordinator=f.get("coordinator") == "1",
                          coordinator_scope_id=int(raw_scope) if raw_scope.isdigit() else None, now=ctx.now)
    except NotAllowed as exc:
        raise Conflict(str(exc)) from exc
    ctx.flash("角色已更新。")
    return redirect(ctx, f"/console/people/{pid}")


def import_form(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    return render(ctx, "import.html", report=None, filename="", nav="people", **_base(ctx, session, scope))


def import_upload(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    upload = ctx.form.get("file")
    if not isinstance(upload, tuple):
        raise Conflict("请选择要导入的文件")
    filename, data = upload
    report = roster.import_volunteers(session, data=data, filename=str(filename), actor_id=scope.person_id,
                                      scope_path=scope.path, now=ctx.now, tz=ctx.settings.tz)
    return render(ctx, "import.html", http_status=200 if report.ok else 422, report=report, filename=str(filename),
                  nav="people", **_base(ctx, session, scope))


def export_form(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    months = queries.last_months(ctx.now, ctx.tz)[::-1]
    return render(ctx, "export.html", months=months, nav="export", **_base(ctx, session, scope))


def export_hours(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    month = ctx.query.get("month", "")
    fmt = ctx.query.get("format", "csv")
    by = ctx.query.get("by", "town")
    try:
        body, name, ctype = roster.export_hours(session, month=month, fmt=fmt, scope_path=scope.path,
                                                by="person" if by == "person" else "town", tz=ctx.settings.tz)
    except ValueError as exc:
        raise Conflict("请选择月份和格式") from exc
    actions.audit(session, actor_id=scope.person_id, action="hours.export", entity="roster", entity_id=None,
                  now=ctx.now, month=month, format=fmt, by=by)
    return web.Response(body=body, headers={"Content-Type": ctype,
                                            "Content-Disposition": f'attachment; filename="{name}"'})


def not_found(ctx: Ctx, session: Session, scope: Scope) -> web.StreamResponse:
    return render(ctx, "error.html", http_status=404, title="找不到", message="没有这个页面。",
                  **_base(ctx, session, scope))

