"""The console in a real browser: headless Chromium (the system's /usr/bin/chromium, driven by
Playwright; no browser is downloaded) against the app served on 127.0.0.1. Screenshots go to
tests/artifacts/ (git-ignored). Any request to a host other than the app fails the test:
the console must never reach for a CDN or a tile server."""

from __future__ import annotations

import asyncio
import csv
import io
import shutil
import threading
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

import pytest
from aiohttp import web
from sqlmodel import select

from bot.app import create_app
from models.db import utcnow
from models.settings import Settings
from models.tables import Campaign, Delivery, DeliveryStatus, Person, Task
from tests.conftest import require
from tests.procs import free_port as _free_port
from tests.test_console_world import PASSWORD, ConsoleWorld, build_console_world, cheap_argon2

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
SHANGHAI = ZoneInfo("Asia/Shanghai")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(Path(CHROMIUM).exists() or bool(shutil.which("chromium")), f"no Chromium at {CHROMIUM}")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:  # pragma: no cover
        require(False, "the playwright package is not installed")
        raise
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=ARGS)
        yield b
        b.close()




@pytest.fixture
def world(sessions, monkeypatch) -> ConsoleWorld:  # type: ignore[no-untyped-def]
    cheap_argon2(monkeypatch)
    return build_console_world(sessions, utcnow())


@pytest.fixture
def base_url(settings: Settings, world: ConsoleWorld, redis_client) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """The real app on a free loopback port, in its own thread and event loop."""
    port = _free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(settings))
    started = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert started.wait(30)
    yield f"http://127.0.0.1:{port}"
    asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(30)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(30)
    loop.close()


@pytest.fixture
def page(browser, base_url: str) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000}, accept_downloads=True)
    pg = ctx.new_page()
    outside: list[str] = []

    def guard(route: Any) -> None:
        if urlsplit(route.request.url).hostname == "127.0.0.1":
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    pg.route("**/*", guard)
    pg.set_default_timeout(15_000)
    yield pg
    ctx.close()
    assert outside == [], f"the console asked for remote resources: {outside}"


def login(pg: Any, base_url: str, who: str = "coord-a") -> None:
    pg.goto(f"{base_url}/console/")
    assert pg.url.endswith("/console/login")
    pg.fill("input[name=login]", who)
    pg.fill("input[name=password]", PASSWORD)
    pg.click("button[type=submit]")
    pg.wait_for_url(f"{base_url}/console/")


def expect(locator: Any) -> Any:
    from playwright.sync_api import expect as pw_expect

    return pw_expect(locator)


def shot(pg: Any, name: str) -> None:
    pg.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_login_and_dashboard(page, base_url, world) -> None:  # type: ignore[no-untyped-def]
    login(page, base_url)
    assert "吴宁街道 · 总览" in page.inner_text("h1")
    assert page.locator("svg.map polygon").count() >= 1  # volunteer density cells
    assert page.locator("#shift-fill tbody tr").first.inner_text().startswith("爱心冰柜补货")
    assert "横店" not in page.content()
    shot(page, f"console-dashboard-{world.coord_a}")


def test_create_a_recurring_shift(page, base_url, world, sessions) -> None:  # type: ignore[no-untyped-def]
    login(page, base_url)
    page.click("text=班次与任务")
    page.click("text=新建班次")
    first = (world.now + timedelta(days=1)).astimezone(SHANGHAI).date()
    codes = ["MO", "TU", "WE", "TH", "FR", "SA", "SU"]
    page.fill("input[name=title]", "周二周五冰柜补货")
    page.select_option("select[name=kind]", "fridge_restock")
    page.select_option("select[name=grid_id]", str(world.grid_a1))
    page.fill("input[name=date]", first.isoformat())
    page.fill("input[name=start]", "09:00")
    page.fill("input[name=end]", "11:00")
    page.fill("input[name=slots]", "3")
    page.check(f"input[name=repeat][value={codes[first.weekday()]}]")
    page.check(f"input[name=repeat][value={codes[(first.weekday() + 3) % 7]}]")
    shot(page, "console-shift-form")
    page.click("button[type=submit]")
    page.wait_for_url(f"{base_url}/console/tasks/*")
    assert "已按每周重复生成后续班次" in page.inner_text(".flash")
    assert page.locator("#series li").count() >= 2
    shot(page, "console-shift-created")
    with sessions() as s:
        head = s.exec(select(Task).where(Task.title == "周二周五冰柜补货", Task.series_id.is_(None))).one()
        assert head.recurrence and len(s.exec(select(Task).where(Task.series_id == head.id)).all()) >= 2


def test_broadcast_preview_send_and_watch_progress(page, base_url, world, sessions) -> None:  # type: ignore[no-untyped-def]
    login(page, base_url)
    page.click("text=广播")
    expect(page.locator("#pv-total")).to_have_text("3")
    page.check("input[name=skills][value=first_aid]")  # the live preview follows the filters
    expect(page.locator("#pv-total")).to_have_text("1")
    page.uncheck("input[name=skills][value=first_aid]")
    expect(page.locator("#pv-total")).to_have_text("3")
    page.fill("textarea[name=text]", "明早冰柜补货还缺2人，回复「班次」报名。")
    shot(page, "console-broadcast-preview")
    page.click("#composer button[type=submit]")
    page.wait_for_url(f"{base_url}/console/broadcasts/*")
    cid = int(page.url.rsplit("/", 1)[1])
    assert page.inner_text("#cp-sent") == "0"
    # The fan-out as the worker records it: rows, then each one sent; the page polls the JSON
    # endpoint and its count rises with the database.
    with sessions() as s:
        camp = s.get(Campaign, cid)
        assert camp is not None and camp.created_by_id == world.coord_a
        for pid in world.vol_a:
            s.add(Delivery(dedupe_key=f"broadcast:{cid}:{pid}", person_id=pid, purpose="broadcast",
                           campaign_id=cid, text=camp.text))
        camp.targeted = 3
        s.add(camp)
        s.commit()
    expect(page.locator("#cp-targeted")).to_have_text("3")
    seen = []
    for n in (1, 2, 3):
        with sessions() as s:
            d = s.exec(select(Delivery).where(Delivery.campaign_id == cid, Delivery.status == DeliveryStatus.pending)).first()
            d.status = DeliveryStatus.sent
            s.add(d)
            s.commit()
        expect(page.locator("#cp-sent")).to_have_text(str(n))
        seen.append(int(page.inner_text("#cp-sent")))
    assert seen == [1, 2, 3]
    shot(page, "console-broadcast-progress")


def test_import_with_two_bad_rows_imports_nothing(page, base_url, world, sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        before = len(s.exec(select(Person)).all())
    login(page, base_url)
    page.goto(f"{base_url}/console/people/import")
    data = ("姓名,手机,网格编码\n"
            "新人一,13911119001,330783-01-001-1\n"
            "新人二,12345,330783-01-001-1\n"  # row 3: bad phone
            "新人三,13911119003,330783-01-001-2\n"
            "新人四,13911119004,330783-17-001-1\n")  # row 5: town B's grid
    page.set_input_files("input[name=file]", files=[{"name": "roster.csv", "mimeType": "text/csv",
                                                      "buffer": data.encode("utf-8-sig")}])
    page.click("form.form button[type=submit]")
    page.wait_for_selector("#import-errors")
    rows = page.locator("#import-errors tbody tr").all_inner_texts()
    assert [r.split("\t")[0] for r in rows] == ["3", "5"]
    assert "没有导入任何人" in page.inner_text("#import-failed")
    shot(page, "console-import-errors")
    with sessions() as s:
        assert len(s.exec(select(Person)).all()) == before


def test_export_hours(page, base_url, world) -> None:  # type: ignore[no-untyped-def]
    login(page, base_url)
    page.click("text=导出")
    month = (world.now - timedelta(days=35)).astimezone(SHANGHAI).strftime("%Y-%m")
    page.select_option("select[name=month]", month)
    page.select_option("select[name=format]", "csv")
    shot(page, "console-export")
    with page.expect_download() as dl:
        page.click("#export-go")
    path = dl.value.path()
    rows = list(csv.reader(io.StringIO(Path(path).read_bytes().decode("utf-8-sig"))))
    assert rows[0][:2] == ["月份", "镇街"] and rows[1][:3] == [month, "吴宁街道", "1"]
    assert all("横店" not in ",".join(r) for r in rows)
