"""The web console over HTTP (aiohttp test client, real Redis, both database back ends):
login, lock-out, CSRF, every page and action scoped to the coordinator's town, tasks and
series, cancellations told to the people on them, broadcasts, volunteer pages."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlmodel import select

from bot.app import create_app
from bot.console.volunteer import read_link, volunteer_link
from models.db import utcnow
from models.settings import Settings
from models.tables import (
    Assignment,
    AssignmentStatus,
    AuditEntry,
    Campaign,
    ConsoleLogin,
    Delivery,
    Person,
    PersonStatus,
    Task,
    TaskStatus,
)
from tests.test_console_world import PASSWORD, ConsoleWorld, build_console_world, cheap_argon2, csrf_of

SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture
def world(sessions, monkeypatch) -> ConsoleWorld:  # type: ignore[no-untyped-def]
    cheap_argon2(monkeypatch)
    return build_console_world(sessions, utcnow())


@pytest.fixture
async def client(settings: Settings, world: ConsoleWorld, redis_client) -> AsyncIterator[TestClient]:  # type: ignore[no-untyped-def]
    c = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await c.start_server()
    yield c
    await c.close()


async def login(c: TestClient, who: str, password: str = PASSWORD) -> str:
    """Log in; returns the CSRF token of the new session."""
    r = await c.get("/console/login")
    token = csrf_of(await r.text())
    r = await c.post("/console/login", data={"csrf": token, "login": who, "password": password})
    assert r.status == 200 and r.url.path == "/console/", await r.text()
    return csrf_of(await r.text())


async def post(c: TestClient, path: str, token: str | None, **data: object) -> tuple[int, str, str]:
    form = dict(data)
    if token is not None:
        form["csrf"] = token
    r = await c.post(path, data=form, allow_redirects=True)
    return r.status, await r.text(), r.url.path


# --- login, sessions, lock-out, CSRF ------------------------------------------------------------


async def test_login_sets_a_signed_httponly_lax_cookie_and_logout_ends_it(client) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/console/", allow_redirects=False)
    assert r.status == 303 and r.headers["Location"] == "/console/login"
    r = await client.get("/console/login")
    token = csrf_of(await r.text())
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/console" in cookie
    r = await client.post("/console/login", data={"csrf": token, "login": "13700000002", "password": PASSWORD},
                          allow_redirects=False)
    assert r.status == 303
    new_cookie = r.headers["Set-Cookie"]
    assert new_cookie.split(";")[0] != cookie.split(";")[0]  # a fresh session id at login
    page = await (await client.get("/console/")).text()
    assert "吴宁协调员" in page and "吴宁街道 · 总览" in page
    assert "Content-Security-Policy" in r.headers
    token = csrf_of(page)
    await post(client, "/console/logout", token)
    r = await client.get("/console/", allow_redirects=False)
    assert r.status == 303


async def test_five_failures_lock_the_account_for_fifteen_minutes(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/console/login")
    token = csrf_of(await r.text())
    for i in range(4):
        r = await client.post("/console/login", data={"csrf": token, "login": "coord-a", "password": f"wrong{i}"})
        assert r.status == 401 and "账号或密码错误" in await r.text()
    r = await client.post("/console/login", data={"csrf": token, "login": "coord-a", "password": "wrong5"})
    assert r.status == 429 and "锁定" in await r.text()
    # the right password does not get in while locked
    r = await client.post("/console/login", data={"csrf": token, "login": "coord-a", "password": PASSWORD})
    assert r.status == 429
    with sessions() as s:
        row = s.get(ConsoleLogin, world.coord_a)
        assert row.locked_until is not None
        left = row.locked_until - utcnow()
        assert timedelta(minutes=14) < left <= timedelta(minutes=15)
        fails = s.exec(select(AuditEntry).where(AuditEntry.action == "console.login_failed")).all()
        assert len(fails) == 5 and fails[-1].detail.get("locked_until")
        # the lock ends: then the right password works
        row.locked_until = utcnow() - timedelta(seconds=1)
        s.add(row)
        s.commit()
    r = await client.post("/console/login", data={"csrf": token, "login": "coord-a", "password": PASSWORD})
    assert r.status == 200 and r.url.path == "/console/"


async def test_passwords_are_argon2id_hashes(sessions, world) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        row = s.get(ConsoleLogin, world.coord_a)
        assert row.password_hash.startswith("$argon2id$") and PASSWORD not in row.password_hash


async def test_a_volunteer_cannot_log_in(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    r = await client.get("/console/login")
    r = await client.post("/console/login", data={"csrf": csrf_of(await r.text()), "login": "va-1",
                                                  "password": PASSWORD})
    assert r.status == 401


@pytest.mark.parametrize("path,data", [
    ("/console/login", {"login": "coord-a", "password": PASSWORD}),
    ("/console/tasks", {"title": "x"}),
    ("/console/people/{pending}/status", {"action": "approve"}),
    ("/console/tasks/{task}/cancel", {"reason": "x"}),
    ("/console/broadcasts", {"text": "hi"}),
    ("/console/logout", {}),
])
async def test_a_form_without_its_csrf_token_is_refused(client, sessions, world, path, data) -> None:  # type: ignore[no-untyped-def]
    await login(client, "coord-a")
    url = path.format(pending=world.pending_a, task=world.task_a)
    status, body, _ = await post(client, url, None, **data)
    assert status == 403 and "CSRF" in body
    status, body, _ = await post(client, url, "forged-token", **data)
    assert status == 403
    with sessions() as s:  # nothing changed
        assert s.get(Person, world.pending_a).status == PersonStatus.pending
        assert s.get(Task, world.task_a).status == TaskStatus.open
        assert len(s.exec(select(Campaign)).all()) == 1


async def test_a_token_from_another_session_is_refused(client, settings, world) -> None:  # type: ignore[no-untyped-def]
    other = TestClient(TestServer(create_app(settings), host="127.0.0.1"))
    await other.start_server()
    try:
        foreign = await login(other, "coord-b")
    finally:
        await other.close()
    await login(client, "coord-a")
    status, _, _ = await post(client, f"/console/people/{world.pending_a}/status", foreign, action="approve")
    assert status == 403


# --- scope: a town coordinator sees and changes only their town ---------------------------------


async def test_town_coordinator_cannot_see_another_towns_records(client, world) -> None:  # type: ignore[no-untyped-def]
    await login(client, "coord-a")
    pages = {p: await (await client.get(p)).text() for p in
             ("/console/", "/console/tasks", "/console/people", "/console/people?q=志愿者", "/console/broadcasts",
              "/console/charts", "/console/tasks/new")}
    for path, html in pages.items():
        assert "横店" not in html, path  # no town B person, task, unit or campaign anywhere
    assert "爱心冰柜补货" in pages["/console/tasks"] and "吴宁志愿者1" in pages["/console/people"]
    for path in (f"/console/tasks/{world.task_b}", f"/console/tasks/{world.task_b}/edit",
                 f"/console/people/{world.vol_b[0]}", f"/console/people/{world.coord_b}",
                 f"/console/broadcasts/{world.campaign_b}", f"/console/api/campaigns/{world.campaign_b}",
                 f"/console/api/audience?grid_id={world.town_b}"):
        r = await client.get(path)
        assert r.status == 404, path
    # the export holds only town A's hours
    month = (world.now - timedelta(days=35)).astimezone(SHANGHAI)
    r = await client.get(f"/console/export/hours?month={month:%Y-%m}&format=csv&by=person")
    body = (await r.read()).decode("utf-8-sig")
    assert r.status == 200 and "吴宁志愿者1" in body and "横店" not in body and "138****1001" in body


async def test_town_coordinator_cannot_change_another_towns_records(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    token = await login(client, "coord-a")
    tomorrow = (world.now + timedelta(days=2)).astimezone(SHANGHAI)
    actions = [
        (f"/console/tasks/{world.task_b}/cancel", {"reason": "x"}),
        (f"/console/tasks/{world.task_b}/edit", {"title": "改", "kind": "other", "grid_id": world.grid_a1,
                                                "date": f"{tomorrow:%Y-%m-%d}", "start": "09:00", "end": "10:00",
                                                "slots": "5", "urgency": "routine"}),
        (f"/console/people/{world.vol_b[0]}/status", {"action": "suspend"}),
        (f"/console/people/{world.vol_b[0]}/roles", {"volunteer": "1", "coordinator": "1",
                                                     "coordinator_scope_id": world.town_a}),
        (f"/console/broadcasts/{world.campaign_b}/cancel", {}),
    ]
    for path, data in actions:
        status, _, _ = await post(client, path, token, **data)
        assert status == 404, path
    # creating in town B, or broadcasting to it, or giving someone a scope there: refused
    status, _, _ = await post(client, "/console/tasks", token, title="越权", kind="other", grid_id=world.grid_b1,
                              date=f"{tomorrow:%Y-%m-%d}", start="09:00", end="10:00", slots="2", urgency="routine")
    assert status == 404
    status, _, _ = await post(client, "/console/broadcasts", token, grid_id=world.town_b, roles="volunteer",
                              text="越权广播")
    assert status == 404
    status, _, _ = await post(client, f"/console/people/{world.vol_a[0]}/roles", token, volunteer="1",
                              coordinator="1", coordinator_scope_id=world.town_b)
    assert status == 404
    status, _, _ = await post(client, f"/console/people/{world.vol_a[0]}/roles", token, volunteer="1",
                              coordinator="1", coordinator_scope_id=world.city)
    assert status == 404
    with sessions() as s:
        assert s.get(Task, world.task_b).status == TaskStatus.open and s.get(Task, world.task_b).title == "横店卡口值守"
        vb = s.get(Person, world.vol_b[0])
        assert vb.status == PersonStatus.active and not vb.is_coordinator
        assert not s.get(Person, world.vol_a[0]).is_coordinator
        assert len(s.exec(select(Campaign)).all()) == 1
        assert s.exec(select(Task).where(Task.title == "越权")).first() is None
        assert s.exec(select(AuditEntry).where(AuditEntry.actor_id == world.coord_a,
                                               AuditEntry.action != "console.login")).all() == []


async def test_import_refuses_grids_of_another_town(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    token = await login(client, "coord-a")
    csv = "姓名,手机,网格编码\n新人甲,13911112222,330783-01-001-1\n新人乙,13911113333,330783-17-001-1\n"
    from aiohttp import FormData

    form = FormData()
    form.add_field("csrf", token)
    form.add_field("file", csv.encode(), filename="roster.csv", content_type="text/csv")
    r = await client.post("/console/people/import", data=form)
    html = await r.text()
    assert r.status == 422 and "不在您的管理范围内" in html and "没有导入任何人" in html
    with sessions() as s:
        assert s.exec(select(Person).where(Person.name.in_(["新人甲", "新人乙"]))).all() == []


async def test_city_coordinator_sees_both_towns(client, world) -> None:  # type: ignore[no-untyped-def]
    await login(client, "coord-city")
    html = await (await client.get("/console/tasks")).text()
    assert "横店卡口值守" in html and "爱心冰柜补货" in html
    assert (await client.get(f"/console/tasks/{world.task_b}")).status == 200


# --- tasks ---------------------------------------------------------------------------------------


async def test_create_a_weekly_shift_makes_its_series(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    from zoneinfo import ZoneInfo

    token = await login(client, "coord-a")
    first = (world.now + timedelta(days=1)).astimezone(ZoneInfo("Asia/Shanghai")).date()
    codes = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
    days = {codes[first.weekday()], codes[(first.weekday() + 3) % 7]}
    status, html, path = await post(client, "/console/tasks", token, title="周期补货", kind="fridge_restock",
                                    grid_id=world.grid_a2, date=first.isoformat(), start="09:00", end="11:00",
                                    slots="4", urgency="routine", repeat=sorted(days), skills="first_aid")
    assert status == 200 and re.fullmatch(r"/console/tasks/\d+", path), html
    with sessions() as s:
        head = s.exec(select(Task).where(Task.title == "周期补货", Task.series_id.is_(None))).one()
        assert head.recurrence.startswith("WEEKLY:") and head.required_skills == ["first_aid"]
        assert head.starts_at.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M") == "09:00"
        occ = s.exec(select(Task).where(Task.series_id == head.id)).all()
        # 14 days ahead: two days a week, minus the template itself
        assert 2 <= len(occ) <= 4
        assert all(o.starts_at.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M") == "09:00" for o in occ)
        audit = s.exec(select(AuditEntry).where(AuditEntry.action == "task.create")).one()
        assert audit.actor_id == world.coord_a and audit.entity_id == head.id and audit.detail["occurrences"] == len(occ)
    assert "周期补货" in html and "同一系列" in html


async def test_invalid_task_form_shows_errors_and_writes_nothing(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    token = await login(client, "coord-a")
    status, html, _ = await post(client, "/console/tasks", token, title="", kind="other", grid_id=world.grid_a1,
                                 date="2099-01-01", start="10:00", end="09:00", slots="0", urgency="routine")
    assert status == 400 and "请填写名称" in html and "结束时间须晚于开始时间" in html and "人数为1到500" in html
    with sessions() as s:
        assert len(s.exec(select(Task)).all()) == 4


async def test_cancel_a_task_tells_the_people_on_it(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    token = await login(client, "coord-a")
    status, html, _ = await post(client, f"/console/tasks/{world.task_a}/cancel", token, reason="天气原因")
    assert status == 200 and "已取消1个班次" in html
    with sessions() as s:
        t = s.get(Task, world.task_a)
        assert t.status == TaskStatus.cancelled
        a = s.exec(select(Assignment).where(Assignment.task_id == world.task_a)).one()
        assert a.status == AssignmentStatus.cancelled
        d = s.exec(select(Delivery).where(Delivery.purpose == "task_cancelled")).one()
        assert d.person_id == world.vol_a[1] and "爱心冰柜补货" in d.text and "天气原因" in d.text
        audit = s.exec(select(AuditEntry).where(AuditEntry.action == "task.cancel")).one()
        assert audit.entity_id == world.task_a and audit.detail["told"] == 1


async def test_edit_slots_below_signups_is_refused_and_time_change_is_told(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    from zoneinfo import ZoneInfo

    token = await login(client, "coord-a")
    with sessions() as s:
        t = s.get(Task, world.task_a)
        s.add(Assignment(task_id=t.id, person_id=world.vol_a[2], status=AssignmentStatus.accepted))
        t.accepted_count = 2
        s.add(t)
        s.commit()
    day = (world.now + timedelta(days=3)).astimezone(ZoneInfo("Asia/Shanghai")).date().isoformat()
    base = {"title": "爱心冰柜补货", "kind": "fridge_restock", "grid_id": world.grid_a1, "date": day,
            "start": "14:00", "end": "16:00", "urgency": "routine", "place": "南街社区"}
    status, html, _ = await post(client, f"/console/tasks/{world.task_a}/edit", token, slots="1", **base)
    assert "名额不能少于此数" in html
    status, html, _ = await post(client, f"/console/tasks/{world.task_a}/edit", token, slots="5", **base)
    assert status == 200 and "已保存修改" in html
    with sessions() as s:
        t = s.get(Task, world.task_a)
        assert t.slots == 5 and t.starts_at.astimezone(ZoneInfo("Asia/Shanghai")).strftime("%H:%M") == "14:00"
        told = s.exec(select(Delivery).where(Delivery.purpose == "task_changed")).all()
        assert {d.person_id for d in told} == {world.vol_a[1], world.vol_a[2]}
        assert s.exec(select(AuditEntry).where(AuditEntry.action == "task.edit")).one().detail["changes"]["slots"] == [3, 5]


async def test_task_page_shows_who_is_on_it_with_masked_phones(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        a = s.exec(select(Assignment).where(Assignment.task_id == world.task_a)).one()
        a.status, a.checked_in_at = AssignmentStatus.checked_in, utcnow()
        s.add(a)
        s.commit()
    await login(client, "coord-a")
    html = await (await client.get(f"/console/tasks/{world.task_a}")).text()
    assert "吴宁志愿者2" in html and "138****1002" in html and "13800001002" not in html and "已签到" in html


# --- people --------------------------------------------------------------------------------------


async def test_approve_suspend_and_roles_are_audited(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    token = await login(client, "coord-a")
    _, html, _ = await post(client, f"/console/people/{world.pending_a}/status", token, action="approve")
    assert "已通过审核" in html
    await post(client, f"/console/people/{world.vol_a[0]}/status", token, action="suspend")
    await post(client, f"/console/people/{world.vol_a[2]}/roles", token, volunteer="1", grid_worker="1")
    _status, html, _ = await post(client, f"/console/people/{world.coord_a}/status", token, action="suspend")
    assert "不能修改自己的状态" in html
    with sessions() as s:
        assert s.get(Person, world.pending_a).status == PersonStatus.active
        assert s.get(Person, world.vol_a[0]).status == PersonStatus.suspended
        assert s.get(Person, world.vol_a[2]).is_grid_worker
        assert s.get(Person, world.coord_a).status == PersonStatus.active
        acts = {(e.action, e.entity_id) for e in s.exec(select(AuditEntry).where(AuditEntry.actor_id == world.coord_a))}
        assert {("person.approve", world.pending_a), ("person.suspend", world.vol_a[0]),
                ("person.roles", world.vol_a[2])} <= acts


async def test_roster_search_masks_phones(client, world) -> None:  # type: ignore[no-untyped-def]
    await login(client, "coord-a")
    html = await (await client.get("/console/people?q=1003")).text()
    assert "吴宁志愿者3" in html and "138****1003" in html and "13800001003" not in html
    assert "吴宁志愿者1" not in html


# --- broadcasts ----------------------------------------------------------------------------------


async def test_broadcast_preview_send_progress_and_cancel(client, sessions, world) -> None:  # type: ignore[no-untyped-def]
    token = await login(client, "coord-a")
    r = await client.get(f"/console/api/audience?grid_id={world.town_a}&roles=volunteer")
    assert await r.json() == {"total": 3, "reachable_now": 3, "deferred": 0}
    r = await client.get(f"/console/api/audience?grid_id={world.town_a}&roles=volunteer&skills=first_aid")
    assert (await r.json())["total"] == 1
    status, html, path = await post(client, "/console/broadcasts", token, grid_id=world.town_a, roles="volunteer",
                                    text="周六补货缺人，回复「班次」报名")
    assert status == 200 and "已开始发送" in html
    cid = int(path.rsplit("/", 1)[1])
    with sessions() as s:
        camp = s.get(Campaign, cid)
        assert camp.created_by_id == world.coord_a and camp.audience["grid_id"] == world.town_a
        # what the fan-out job would write: the rows, then their outcomes one by one
        for pid in world.vol_a:
            s.add(Delivery(dedupe_key=f"broadcast:{cid}:{pid}", person_id=pid, purpose="broadcast",
                           campaign_id=cid, text=camp.text))
        camp.targeted = 3
        s.add(camp)
        s.commit()
    progress = await (await client.get(f"/console/api/campaigns/{cid}")).json()
    assert (progress["targeted"], progress["sent"], progress["pending"], progress["finished"]) == (3, 0, 3, False)
    with sessions() as s:
        d = s.exec(select(Delivery).where(Delivery.campaign_id == cid)).first()
        d.status = "sent"
        s.add(d)
        s.commit()
    progress = await (await client.get(f"/console/api/campaigns/{cid}")).json()
    assert (progress["sent"], progress["pending"], progress["pct"]) == (1, 2, 33)
    status, html, _ = await post(client, f"/console/broadcasts/{cid}/cancel", token)
    assert "已取消广播" in html
    progress = await (await client.get(f"/console/api/campaigns/{cid}")).json()
    assert (progress["status"], progress["sent"], progress["cancelled"], progress["finished"]) == ("cancelled", 1, 2, True)


# --- volunteer pages -----------------------------------------------------------------------------


async def test_volunteer_link_signs_up_and_cancels_through_the_dispatcher(client, settings, sessions, world) -> None:  # type: ignore[no-untyped-def]
    link = volunteer_link(settings, person_id=world.vol_a[0])
    assert read_link(settings, link.rsplit("/", 1)[1]) == world.vol_a[0]
    path = "/v/s/" + link.rsplit("/", 1)[1]
    r = await client.get(path)
    html = await r.text()
    assert r.status == 200 and r.url.path == "/v/" and "吴宁志愿者1" in html and "爱心冰柜补货" in html
    token = csrf_of(html)
    r = await client.post(f"/v/signup/{world.task_a}", data={"csrf": token})
    html = await r.text()
    assert "报名成功" in html
    with sessions() as s:
        a = s.exec(select(Assignment).where(Assignment.task_id == world.task_a,
                                            Assignment.person_id == world.vol_a[0])).one()
        assert a.status == AssignmentStatus.accepted and s.get(Task, world.task_a).accepted_count == 2
    r = await client.post(f"/v/cancel/{world.task_a}", data={"csrf": token})
    assert "已取消报名" in await r.text()
    with sessions() as s:
        assert s.get(Task, world.task_a).accepted_count == 1
    # without the token: refused
    r = await client.post(f"/v/signup/{world.task_a}", data={})
    assert r.status == 403


async def test_volunteer_link_tampered_or_expired_is_refused(client, settings, world) -> None:  # type: ignore[no-untyped-def]
    link = volunteer_link(settings, person_id=world.vol_a[0])
    token = link.rsplit("/", 1)[1]
    r = await client.get("/v/s/" + token[:-2] + ("AA" if not token.endswith("AA") else "BB"))
    assert r.status == 401
    expired = settings.model_copy(update={"volunteer_link_ttl_s": -1})
    assert read_link(expired, token) is None
    r = await client.get("/v/", allow_redirects=False)
    assert r.status == 401
