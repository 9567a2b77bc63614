"""The coordinators' web console (/console/) and the volunteers' pages (/v/).

``setup(app)`` mounts both as sub-applications of the main aiohttp app, each with its own
session cookie, CSRF check and security headers; they reach the database and Redis through
the main app's keys (``request.config_dict``).
"""

from __future__ import annotations

from aiohttp import web

from bot.console import pages, volunteer
from bot.console.base import HERE, JINJA, KIND, make_env, page, web_middleware


def _console(settings_tz: str) -> web.Application:
    sub = web.Application(middlewares=[web_middleware])
    sub[KIND] = "console"
    sub[JINJA] = make_env(settings_tz)
    r = sub.router
    r.add_get("/login", pages.login_form)
    r.add_post("/login", pages.login)
    r.add_post("/logout", pages.logout)
    r.add_get("/", page(pages.dashboard))
    r.add_get("/charts", page(pages.charts))
    r.add_get("/tasks", page(pages.task_list))
    r.add_get("/tasks/new", page(pages.task_new))
    r.add_post("/tasks", page(pages.task_create, fallback="/console/tasks"))
    r.add_get("/tasks/{task_id:\\d+}", page(pages.task_detail))
    r.add_get("/tasks/{task_id:\\d+}/edit", page(pages.task_edit_form))
    r.add_post("/tasks/{task_id:\\d+}/edit", page(pages.task_edit, fallback="/console/tasks"))
    r.add_post("/tasks/{task_id:\\d+}/cancel", page(pages.task_cancel, fallback="/console/tasks"))
    r.add_get("/broadcasts", page(pages.broadcasts))
    r.add_post("/broadcasts", page(pages.broadcast_send, fallback="/console/broadcasts"))
    r.add_get("/broadcasts/{campaign_id:\\d+}", page(pages.campaign_detail))
    r.add_post("/broadcasts/{campaign_id:\\d+}/cancel", page(pages.campaign_cancel, fallback="/console/broadcasts"))
    r.add_get("/api/audience", page(pages.audience_preview))
    r.add_get("/api/campaigns/{campaign_id:\\d+}", page(pages.campaign_progress))
    r.add_get("/people", page(pages.people))
    r.add_get("/people/import", page(pages.import_form))
    r.add_post("/people/import", page(pages.import_upload, fallback="/console/people/import"))
    r.add_get("/people/{person_id:\\d+}", page(pages.person_detail))
    r.add_post("/people/{person_id:\\d+}/status", page(pages.person_status, fallback="/console/people"))
    r.add_post("/people/{person_id:\\d+}/roles", page(pages.person_roles, fallback="/console/people"))
    r.add_get("/export", page(pages.export_form))
    r.add_get("/export/hours", page(pages.export_hours, fallback="/console/export"))
    r.add_static("/static", HERE / "static")
    return sub


def _volunteer(settings_tz: str) -> web.Application:
    sub = web.Application(middlewares=[web_middleware])
    sub[KIND] = "volunteer"
    sub[JINJA] = make_env(settings_tz, static_prefix="/v/static")
    r = sub.router
    r.add_get("/s/{token}", volunteer.enter)
    r.add_get("/", volunteer.home)
    r.add_post("/signup/{task_id:\\d+}", volunteer.signup)
    r.add_post("/cancel/{task_id:\\d+}", volunteer.cancel)
    r.add_static("/static", HERE / "static")
    return sub


async def _to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/")


def setup(app: web.Application) -> None:
    """Mount /console/ and /v/ on the main app (call from ``bot.app.create_app``)."""
    from bot.app import SETTINGS

    tz = app[SETTINGS].tz
    app.router.add_get("/console", _to_console)
    app.add_subapp("/console", _console(tz))
    app.add_subapp("/v", _volunteer(tz))
