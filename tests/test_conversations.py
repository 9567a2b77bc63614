"""End to end: the real engine behind the real webhook on a loopback aiohttp server, real
Redis and a real database, driven by a client that signs (and encrypts) as WeChat does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestServer
from sqlmodel import select

from bot.app import create_app
from bot.simulator import Simulator
from models import (
    AED,
    AEDStatus,
    Assignment,
    AuditEntry,
    Campaign,
    Certificate,
    Delivery,
    Person,
    PersonStatus,
    Report,
    Task,
)
from models.db import utcnow
from models.settings import Settings
from tests.world import DONGFENG, GOV, World, build_world


@pytest.fixture
def world(sessions) -> World:  # type: ignore[no-untyped-def]
    return build_world(sessions, utcnow())


@pytest.fixture
async def server(settings: Settings, world: World) -> AsyncIterator[TestServer]:
    srv = TestServer(create_app(settings), host="127.0.0.1")
    await srv.start_server()
    yield srv
    await srv.close()


def sim(settings: Settings, srv: TestServer, openid: str) -> Simulator:
    return Simulator.from_settings(settings, str(srv.make_url("/wechat")), openid)


async def say(s: Simulator, text: str) -> str:
    reply = await s.send(s.text(text))
    assert reply is not None
    return reply


async def test_new_follower_registers_signs_up_and_cancels(settings, server, world, sessions) -> None:  # type: ignore[no-untyped-def]
    u = sim(settings, server, "new-follower-1")
    welcome = await u.send(u.event("subscribe"))
    assert welcome is not None and "回复「注册」" in welcome

    assert "姓名" in await say(u, "注册")
    assert "手机号" in await say(u, "赵敏")
    bad = await say(u, "1381234")
    assert "不完整" in bad and "13812345678" in bad
    assert "位置" in await say(u, "13900001234")
    # a name with several grids asks which; the answer by number settles it
    pick = await say(u, "东丰村")
    assert "东丰村第1网格" in pick and "东丰村第3网格" in pick
    skills = await say(u, "2")
    assert "已定位到：江北街道 · 东丰村 · 第3网格" in skills
    assert "有效期" in await say(u, "1 2")
    assert "格式" in await say(u, "明年吧")
    confirm = await say(u, "2027-06-30")
    assert "139****1234" in confirm and "救护员证（至2027-06-30）" in confirm and "驾驶" in confirm
    assert "注册成功" in await say(u, "确认")

    with sessions() as s:
        p = s.exec(select(Person).where(Person.openid == "new-follower-1")).one()
        assert p.is_volunteer and p.status == PersonStatus.active and p.phone == "13900001234"
        assert p.home_grid_id == world.grid3 and p.h3
        certs = {c.skill: c.expires_on for c in s.exec(select(Certificate).where(Certificate.person_id == p.id))}
        assert set(certs) == {"first_aid", "driver"} and str(certs["first_aid"]) == "2027-06-30"

    shifts = await say(u, "班次")
    assert shifts.startswith("您附近未来7天的班次")
    assert "爱心冰柜补货" in shifts.splitlines()[1]  # nearest first
    assert "报名成功" in await say(u, "报名 1")
    mine = await say(u, "我的")
    assert "爱心冰柜补货" in mine and "已确认" in mine
    assert "已取消" in await say(u, "取消 1")
    assert "没有安排" in await say(u, "我的")
    with sessions() as s:
        t = s.get(Task, world.shift_near)
        assert t is not None and t.accepted_count == 0


async def test_full_shift_waitlists(settings, server, world) -> None:  # type: ignore[no-untyped-def]
    v = sim(settings, server, "demo-volunteer")
    listing = await say(v, "班次")
    n = next(line.split()[0] for line in listing.splitlines()[1:] if "关爱阿尔兹海默症走访" in line)
    assert "已满（可排队）" in listing
    assert "候补第1位" in await say(v, f"报名 {n}")


async def test_grid_worker_reports_a_need(settings, server, world, sessions) -> None:  # type: ignore[no-untyped-def]
    g = sim(settings, server, "demo-gridworker")
    assert "类别" in await say(g, "上报")
    assert "1到5" in await say(g, "9")
    assert "描述" in await say(g, "3")
    place = await say(g, "东丰村冰柜水和藿香正气水没了")
    assert "东丰村第1网格" in place and "东丰村第3网格" in place  # serves two grids: pick one
    # a location outside the grids they serve is refused with the reason
    outside = await g.send(g.location(29.2668, 120.2412, "西街"))
    assert outside is not None and "不在您负责的网格内" in outside
    assert "紧急程度" in await say(g, "2")
    assert "几位" in await say(g, "1")
    assert "什么时候" in await say(g, "2")
    done = await say(g, "明天16:00")
    assert done.startswith("已上报，编号 R")
    rid = int(done.split("R", 1)[1].split("。")[0])
    with sessions() as s:
        r = s.get(Report, rid)
        assert r is not None and r.grid_id == world.grid3 and r.headcount == 2 and r.category == "爱心冰柜缺货"
        task = s.exec(select(Task).where(Task.report_id == rid)).one()
        assert task.slots == 2 and task.mode == "dispatch"


async def test_coordinator_previews_and_confirms_broadcast(settings, server, world, sessions) -> None:  # type: ignore[no-untyped-def]
    c = sim(settings, server, "demo-coordinator")
    assert "发给谁" in await say(c, "广播")
    assert "不在您负责的范围内" in await say(c, "吴宁街道")  # another town's people
    assert "技能" in await say(c, "江北街道")
    assert "广播内容" in await say(c, "不限")
    preview = await say(c, "周日上午世界急救日宣传，江北文化礼堂，需要10位志愿者，回复「班次」报名。")
    # 江北: 王丽 + five more volunteers; two have not written for five days
    assert "将发送给江北街道 6 位志愿者" in preview and "其中 2 位超过48小时未互动" in preview
    started = await say(c, "确认")
    assert started.startswith("已开始发送（C")
    with sessions() as s:
        camp = s.exec(select(Campaign)).one()
        assert camp.created_by_id == world.coordinator and "世界急救日" in camp.text
        audit = s.exec(select(AuditEntry).where(AuditEntry.entity == "campaign")).all()
        assert audit and audit[0].actor_id == world.coordinator


async def test_roles_are_refused_each_others_commands(settings, server, world) -> None:  # type: ignore[no-untyped-def]
    v = sim(settings, server, "demo-volunteer")
    g = sim(settings, server, "demo-gridworker")
    c = sim(settings, server, "demo-coordinator")
    stranger = sim(settings, server, "stranger")
    assert "没有权限" in await say(v, "广播")
    assert "没有权限" in await say(v, "状态")
    assert "网格员" in await say(v, "上报")
    assert "注册" in await say(g, "班次")  # not a volunteer
    assert "没有权限" in await say(g, "广播")
    assert "网格员" in await say(c, "上报")
    for cmd in ("报名 1", "签到", "我的"):
        assert "注册" in await say(stranger, cmd)
    help_v = await say(v, "帮助")
    assert "班次" in help_v and "广播" not in help_v
    help_c = await say(c, "帮助")
    assert "广播" in help_c and "状态" in help_c


async def test_dialog_quit_resume_and_help(settings, server, world) -> None:  # type: ignore[no-untyped-def]
    u = sim(settings, server, "quitter")
    await say(u, "注册")
    await say(u, "钱多多")
    resumed = await say(u, "班次")
    assert "继续刚才的「注册」" in resumed and "手机号" in resumed
    helped = await say(u, "帮助")
    assert "注册" in helped and "手机号" in helped
    assert "已退出「注册」" in await say(u, "退出")
    assert "没有进行中的操作" in await say(u, "退出")


async def test_location_gives_nearest_aeds_and_shifts(settings, server, world) -> None:  # type: ignore[no-untyped-def]
    v = sim(settings, server, "demo-volunteer")
    reply = await v.send(v.location(GOV[0], GOV[1], "东阳市人民政府"))
    assert reply is not None
    lines = reply.splitlines()
    assert lines[0] == "离您最近的AED："
    assert lines[1].startswith("1 东阳市人民政府一楼大厅 · 约") and "全天开放" in lines[1]
    assert "博爱家园" not in reply  # faulty AEDs are never offered
    assert "apis.map.qq.com" in reply and "拨打120" in reply
    assert "附近的班次" in reply
    assert len(reply.encode()) <= 2048


async def test_unknown_media_and_voice(settings, server, world) -> None:  # type: ignore[no-untyped-def]
    v = sim(settings, server, "demo-volunteer")
    img = await v.send(v.image())
    assert img is not None and "图片" in img
    voice = await v.send(v.voice("帮助"))
    assert voice is not None and "班次" in voice
    assert "没太明白" in await say(v, "今天天气不错")


async def test_two_app_instances_share_one_dialog(settings, world, sessions) -> None:  # type: ignore[no-untyped-def]
    a = TestServer(create_app(settings), host="127.0.0.1")
    b = TestServer(create_app(settings), host="127.0.0.1")
    await a.start_server()
    await b.start_server()
    try:
        ua, ub = sim(settings, a, "hopper"), sim(settings, b, "hopper")
        assert "姓名" in await say(ua, "注册")
        assert "手机号" in await say(ub, "孙悟空")
        assert "位置" in await say(ua, "13700007777")
        located = await ub.send(ub.location(*DONGFENG, "东丰村"))
        assert located is not None and "已定位到：江北街道 · 东丰村" in located
        assert "请确认：孙悟空，137****7777" in await say(ua, "0")
        assert "注册成功" in await say(ub, "确认")
    finally:
        await a.close()
        await b.close()
    with sessions() as s:
        p = s.exec(select(Person).where(Person.openid == "hopper")).one()
        assert p.name == "孙悟空" and p.is_volunteer


async def test_expired_dialog_is_explained(settings, server, world, redis_client) -> None:  # type: ignore[no-untyped-def]
    u = sim(settings, server, "slowpoke")
    await say(u, "注册")
    redis_client.delete("rg:dialog:slowpoke")  # what the TTL does after a quiet spell
    assert "已自动结束" in await say(u, "钱多多")


async def test_faulty_aed_report_takes_it_out_of_answers(settings, server, world, sessions) -> None:  # type: ignore[no-untyped-def]
    v = sim(settings, server, "demo-volunteer")
    before = await v.send(v.location(GOV[0], GOV[1]))
    assert before is not None and "东阳市人民政府一楼大厅" in before
    g = sim(settings, server, "demo-gridworker")
    await say(g, "上报")
    await say(g, "4")  # AED故障
    pick = await say(g, "屏幕不亮，按钮没反应")
    assert "是哪台AED" in pick
    n = next(line.split()[0] for line in pick.splitlines() if "东阳市人民政府一楼大厅" in line)
    done = await say(g, n)
    assert "已暂停推荐" in done
    after = await v.send(v.location(GOV[0], GOV[1]))
    assert after is not None and "东阳市人民政府一楼大厅" not in after
    with sessions() as s:
        aed = s.exec(select(AED).where(AED.name == "东阳市人民政府一楼大厅")).one()
        assert aed.status == AEDStatus.faulty
        assert s.exec(select(AuditEntry).where(AuditEntry.action == "aed.faulty")).one().actor_id == world.gridworker
        # the town's coordinator (and the city's) are told
        told = {d.person_id for d in s.exec(select(Delivery).where(Delivery.purpose == "aed_faulty"))}
        assert told == {world.coordinator, world.town_coordinator}


async def test_coordinator_status(settings, server, world) -> None:  # type: ignore[no-untyped-def]
    g = sim(settings, server, "demo-gridworker")
    for answer in ("上报", "1", "独居老人需要人帮忙取药", "1", "1", "1", "明天16:00"):
        await say(g, answer)
    c = sim(settings, server, "demo-coordinator")
    status = await say(c, "状态")
    assert status.startswith("江北街道 工作概况：")
    assert "待处理上报 1 件" in status and "独居老人帮扶" in status
    assert "爱心冰柜补货" in status  # unfilled shift in 江北 within 7 days
    assert "西街" not in status and "卡口值守" not in status  # 吴宁's shift is not in 江北's view


async def test_same_message_three_times_one_effect(settings, server, world, sessions) -> None:  # type: ignore[no-untyped-def]
    v = sim(settings, server, "demo-volunteer")
    listing = await say(v, "班次")
    n = next(line.split()[0] for line in listing.splitlines()[1:] if "爱心冰柜补货" in line)
    msg = v.text(f"报名 {n}", msg_id=987654321)
    replies = [await v.send(msg) for _ in range(3)]  # WeChat's retries carry the same MsgId
    assert replies[0] is not None and "报名成功" in replies[0]
    assert replies[0] == replies[1] == replies[2]
    with sessions() as s:
        t = s.get(Task, world.shift_near)
        assert t is not None and t.accepted_count == 1
        rows = s.exec(select(Assignment).where(Assignment.task_id == world.shift_near)).all()
        assert [(a.person_id, a.status) for a in rows] == [(world.volunteer, "accepted")]


async def test_mine_carries_a_signed_link_to_the_volunteer_pages(settings, server, world) -> None:  # type: ignore[no-untyped-def]
    from bot.console.volunteer import read_link

    v = sim(settings, server, "demo-volunteer")
    mine = await say(v, "我的")
    url = mine.split('<a href="', 1)[1].split('"', 1)[0]
    assert url.startswith(settings.public_base_url)
    assert read_link(settings, url.rsplit("/", 1)[1]) == world.volunteer


async def test_a_message_releases_that_persons_deferred_deliveries(settings, server, world, sessions, redis_client) -> None:  # type: ignore[no-untyped-def]
    from rq import Queue

    from models import DeliveryStatus

    with sessions() as s, s.begin():
        mine = Delivery(dedupe_key="broadcast:1:v", person_id=world.volunteer, purpose="broadcast",
                        text="周日宣传", status=DeliveryStatus.deferred)  # fmt: skip
        other = Delivery(dedupe_key="broadcast:1:g", person_id=world.gridworker, purpose="broadcast",
                         text="周日宣传", status=DeliveryStatus.deferred)  # fmt: skip
        s.add_all([mine, other])
        s.flush()
        mine_id, other_id = mine.id, other.id
    v = sim(settings, server, "demo-volunteer")
    assert "班次" in await say(v, "帮助")  # a read-only command still releases them
    with sessions() as s:
        assert s.get(Delivery, mine_id).status == DeliveryStatus.pending  # type: ignore[union-attr]
        assert s.get(Delivery, other_id).status == DeliveryStatus.deferred  # type: ignore[union-attr]
    assert f"delivery-{mine_id}" in Queue("default", connection=redis_client).job_ids


async def test_read_only_turns_still_record_people(settings, server, world, sessions) -> None:  # type: ignore[no-untyped-def]
    from datetime import timedelta

    stale = utcnow() - timedelta(hours=3)
    with sessions() as s, s.begin():
        p = s.get(Person, world.volunteer)
        assert p is not None
        p.last_interaction_at, p.subscribed = stale, False
        s.add(p)
    v = sim(settings, server, "demo-volunteer")
    assert "班次" in await say(v, "帮助")
    newcomer = sim(settings, server, "brand-new")
    assert "AED" in await say(newcomer, "帮助")
    with sessions() as s:
        p = s.get(Person, world.volunteer)
        assert p is not None and p.subscribed and p.last_interaction_at is not None
        assert p.last_interaction_at > stale + timedelta(hours=2)
        n = s.exec(select(Person).where(Person.openid == "brand-new")).one()
        assert n.status == PersonStatus.pending and n.last_interaction_at is not None


async def test_read_only_turns_buffer_the_interaction_time(settings, server, world, sessions, redis_client) -> None:  # type: ignore[no-untyped-def]
    """A subscribed person's lookup writes nothing to the database: the time waits in Redis
    (models/interactions.py) until the periodic flush, which moves it forward only."""
    from datetime import timedelta

    from models import interactions

    stale = utcnow() - timedelta(hours=3)
    with sessions() as s, s.begin():
        p = s.get(Person, world.volunteer)
        assert p is not None and p.subscribed
        p.last_interaction_at = stale
    v = sim(settings, server, "demo-volunteer")
    before = utcnow()
    assert "班次" in await say(v, "帮助")
    with sessions() as s:
        assert s.get(Person, world.volunteer).last_interaction_at == stale  # type: ignore[union-attr]
    buffered = interactions.latest(redis_client, "demo-volunteer", stale)
    assert buffered is not None and buffered >= before - timedelta(seconds=1)

    assert interactions.flush(redis_client, sessions) == 1
    with sessions() as s:
        flushed = s.get(Person, world.volunteer).last_interaction_at  # type: ignore[union-attr]
    assert flushed is not None and abs((flushed - buffered).total_seconds()) < 0.01
    # a time older than the row's never moves it back
    interactions.record(redis_client, "demo-volunteer", stale)
    assert interactions.flush(redis_client, sessions) == 1
    with sessions() as s:
        assert s.get(Person, world.volunteer).last_interaction_at == flushed  # type: ignore[union-attr]
    assert interactions.flush(redis_client, sessions) == 0


async def test_the_claim_reads_the_senders_state(settings, server, world, redis_client) -> None:  # type: ignore[no-untyped-def]
    """The webhook's dedupe claim also reads the sender's dialog state (one round trip): a
    lookup then makes no Redis read of its own, and a dialog in progress is still seen."""
    v = sim(settings, server, "demo-volunteer")
    await say(v, "帮助")  # warm: this person's interaction time is buffered now
    redis_client.config_resetstat()
    assert "班次" in await say(v, "帮助")
    stats = redis_client.info("commandstats")
    # (GETs run inside the claim's script count as GETs too: the engine's own read is an MGET)
    assert "cmdstat_mget" not in stats and stats["cmdstat_evalsha"]["calls"] == 1, stats
    assert "姓名" in await say(v, "注册")
    assert "注册" in await say(v, "帮助")  # mid-dialog: help, then where we were


def test_a_read_only_turn_retried_after_a_lost_connection_starts_from_the_same_state(  # type: ignore[no-untyped-def]
        settings, world, sessions, redis_client, monkeypatch) -> None:
    """The database connection dies as a 更多 turn commits (after it saved its page): the
    retry starts from the state the first attempt read, so it shows the same page."""
    from datetime import timedelta

    from sqlalchemy.exc import OperationalError

    from bot.engine import Conversation
    from bot.inbound import Inbound
    from models import Task, TaskKind, TaskMode

    with sessions() as s, s.begin():
        near = s.get(Task, world.shift_near)
        assert near is not None
        for i in range(8):  # enough shifts for a second page
            s.add(Task(kind=TaskKind.fridge_restock, mode=TaskMode.signup, title=f"补货{i}", place="东丰村",
                       lat=near.lat, lng=near.lng, h3=near.h3, grid_id=near.grid_id,
                       starts_at=near.starts_at + timedelta(hours=i + 1),
                       ends_at=near.ends_at + timedelta(hours=i + 1), slots=2))
    conv = Conversation(settings=settings, sessions=sessions, redis_client=redis_client)
    ask = lambda text: conv.handle(Inbound(user="demo-volunteer", kind="text", text=text))  # noqa: E731
    assert "回复「更多」" in (ask("班次") or "")
    real = conv._handle
    calls: list[int] = []

    def dies_once(inbound, **kw):  # type: ignore[no-untyped-def]
        out = real(inbound, **kw)
        calls.append(1)
        if len(calls) == 1:
            raise OperationalError("COMMIT", {}, Exception("server closed the connection"),
                                   connection_invalidated=True)
        return out

    monkeypatch.setattr(conv, "_handle", dies_once)
    page2 = ask("更多") or ""
    assert len(calls) == 2
    assert page2.splitlines()[1].startswith("6 "), page2  # the second page, not the third
