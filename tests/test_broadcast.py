# ruff: noqa: F811  (pytest fixtures imported from tests.fakewechat are redefined as arguments)
"""Issue 5: broadcast campaigns: audience, preview, weekly cap, live counts, cancel, and a
2,000-person campaign whose worker is SIGKILLed half-way: everyone eligible gets it exactly once,
those outside 48 h are deferred and get it with their next message."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, func, text
from sqlmodel import select

from dispatcher.audience import Audience, cancel_campaign, create_campaign, preview_audience
from dispatcher.effects import Effects
from jobs.broadcast import counts, run_campaign
from jobs.effects import apply
from jobs.outbound import release_deferred
from jobs.runtime import Runtime
from models.exceptions import NotAllowed
from models.tables import (
    AuditEntry,
    Campaign,
    CampaignStatus,
    Certificate,
    Delivery,
    Person,
)
from tests.fakewechat import (  # noqa: F401  (fixtures)
    FakeWeChat,
    fake,
    fake_server,
    jobrt,
    make_grid,
    make_person,
    work,
)


def _campaign(rt: Runtime, *, coordinator_id: int, audience: Audience, body: str = "周日上午世界急救日宣传，需要10位志愿者。") -> int:
    fx = Effects()
    with rt.sessions() as s, s.begin():
        camp = create_campaign(s, fx, coordinator_id=coordinator_id, audience=audience, text=body,
                               now=rt.extras["clock"]())
        cid = camp.id
    apply(rt.redis, fx)
    return cid


def _camp(rt: Runtime, cid: int) -> Campaign:
    with rt.sessions() as s:
        return s.get(Campaign, cid)


def test_audience_filters_preview_and_scope(jobrt: Runtime, fake: FakeWeChat) -> None:
    now = jobrt.extras["clock"]()
    with jobrt.sessions() as s, s.begin():
        city = make_grid(s, name="东阳市", level="city")
        jiangbei = make_grid(s, name="江北街道", level="town", parent=city)
        dongfeng = make_grid(s, name="东丰村第3网格", parent=jiangbei)
        wuning = make_grid(s, name="吴宁街道", level="town", parent=city)
        town_coord = make_person(s, openid="oC1", coordinator_scope=jiangbei, volunteer=False, grid=dongfeng)
        a = make_person(s, openid="oA", grid=dongfeng, last=now - timedelta(hours=1))  # in, recent
        b = make_person(s, openid="oB", grid=dongfeng, last=now - timedelta(days=5))  # in, stale
        make_person(s, openid="oW", grid=wuning, last=now)  # other town
        make_person(s, openid="oP", grid=dongfeng, status="pending")  # not active
        make_person(s, openid=None, grid=dongfeng)  # never followed
        s.add(Certificate(person_id=a.id, skill="first_aid", expires_on=date(2099, 1, 1)))
        s.add(Certificate(person_id=b.id, skill="first_aid", expires_on=date(2020, 1, 1)))  # expired
        a.kinds = ["drill", "training"]
        s.add(a)
        ids = (city.id, jiangbei.id, wuning.id, town_coord.id, a.id)
    city_id, jb_id, wn_id, coord_id, a_id = ids
    with jobrt.sessions() as s:
        whole = preview_audience(s, audience=Audience(grid_id=jb_id), now=now)
        assert (whole.total, whole.reachable_now, whole.deferred) == (2, 1, 1)
        tpl = preview_audience(s, audience=Audience(grid_id=jb_id), now=now, template_id="TPL")
        assert (tpl.total, tpl.reachable_now, tpl.deferred) == (2, 2, 0)
        assert preview_audience(s, audience=Audience(grid_id=jb_id, skills=("first_aid",)), now=now).total == 1
        assert preview_audience(s, audience=Audience(grid_id=jb_id, kinds=("drill",)), now=now).total == 1
        assert preview_audience(s, audience=Audience(grid_id=jb_id, kinds=("publicity",)), now=now).total == 0
        assert preview_audience(s, audience=Audience(grid_id=jb_id, active_since=now - timedelta(days=2)),
                                now=now).total == 1
        assert preview_audience(s, audience=Audience(grid_id=jb_id, roles=("coordinator",)), now=now).total == 1
        assert preview_audience(s, audience=Audience(), now=now).total == 3
    # a town coordinator may not broadcast to another town, or to the whole city
    for grid in (wn_id, None):
        with jobrt.sessions() as s, pytest.raises(NotAllowed):
            create_campaign(s, Effects(), coordinator_id=coord_id, audience=Audience(grid_id=grid), text="x",
                            now=now)
    cid = _campaign(jobrt, coordinator_id=coord_id, audience=Audience(grid_id=jb_id, skills=("first_aid",)))
    with jobrt.sessions() as s:
        (entry,) = s.exec(select(AuditEntry).where(AuditEntry.action == "campaign.create")).all()
        assert (entry.actor_id, entry.entity_id) == (coord_id, cid)
        assert Audience.from_dict(s.get(Campaign, cid).audience) == Audience(grid_id=jb_id, skills=("first_aid",))
    fake.interact("oA")
    work(jobrt.redis)
    assert fake.counts() == {"oA": 1}
    camp = _camp(jobrt, cid)
    assert (camp.status, camp.targeted, camp.sent, camp.deferred, camp.failed) == (CampaignStatus.done, 1, 1, 0, 0)
    assert camp.finished_at is not None
    assert a_id and city_id


def _people(rt: Runtime, n: int, *, fresh: int, fake: FakeWeChat) -> tuple[int, int, list[str], list[str]]:
    """A city coordinator and ``n`` volunteers in one grid; the first ``fresh`` wrote within 48 h."""
    now = rt.extras["clock"]()
    with rt.sessions() as s, s.begin():
        city = make_grid(s, name="东阳市", level="city")
        grid = make_grid(s, name="东丰村第3网格", parent=city)
        coord = make_person(s, openid="oCoord", coordinator_scope=city, volunteer=False, last=now)
        people = []
        for i in range(n):
            recent = i < fresh
            people.append(Person(openid=f"oV{i:05d}", name=f"志愿者{i}", is_volunteer=True, home_grid_id=grid.id,
                                 status="active", last_interaction_at=now - (timedelta(hours=1) if recent
                                                                               else timedelta(days=3))))
        s.add_all(people)
        ids = (coord.id, grid.id)
    fresh_ids = [f"oV{i:05d}" for i in range(fresh)]
    stale_ids = [f"oV{i:05d}" for i in range(fresh, n)]
    wall = time.time()
    for o in fresh_ids:
        fake.set_user(o, last_interaction=wall - 3600)
    for o in stale_ids:
        fake.set_user(o, last_interaction=wall - 3 * 86400)
    return ids[0], ids[1], fresh_ids, stale_ids


def test_weekly_cap_and_live_counts(jobrt: Runtime, fake: FakeWeChat) -> None:
    jobrt.settings = jobrt.settings.model_copy(update={"broadcast_weekly_cap": 2, "broadcast_batch": 7})
    coord, grid, _, _ = _people(jobrt, 30, fresh=25, fake=fake)
    for _ in range(2):
        _campaign(jobrt, coordinator_id=coord, audience=Audience(grid_id=grid))
        work(jobrt.redis)
    third = _campaign(jobrt, coordinator_id=coord, audience=Audience(grid_id=grid))
    work(jobrt.redis)
    # two broadcasts this week each: the third is capped for everyone it would have reached
    assert sum(fake.counts().values()) == 2 * 25
    camp = _camp(jobrt, third)
    assert (camp.targeted, camp.capped, camp.sent, camp.status) == (0, 30, 0, CampaignStatus.done)
    with jobrt.sessions() as s:
        first = s.exec(select(Campaign).order_by(Campaign.id)).first()
        assert (first.targeted, first.sent, first.deferred, first.failed) == (30, 25, 5, 0)
        # the counters agree with the rows they count
        assert counts(s, campaign_id=first.id) == {"sent": 25, "deferred": 5}
        assert counts(s, campaign_id=third) == {"cancelled": 30}


def test_cancel_mid_way_stops_the_rest(jobrt: Runtime, fake: FakeWeChat) -> None:
    jobrt.settings = jobrt.settings.model_copy(update={"broadcast_batch": 10})
    coord, grid, _, _ = _people(jobrt, 40, fresh=40, fake=fake)
    cid = _campaign(jobrt, coordinator_id=coord, audience=Audience(grid_id=grid))
    run_campaign(cid)  # materialize and plan 4 batches, as the worker would
    from jobs.broadcast import send_batch

    with jobrt.sessions() as s:
        ids = s.exec(select(Delivery.id).where(Delivery.campaign_id == cid).order_by(Delivery.id)).all()
    send_batch(cid, ids[0], ids[9])  # the first batch went out
    with jobrt.sessions() as s, s.begin():
        cancel_campaign(s, campaign_id=cid, actor_id=coord, now=jobrt.extras["clock"]())
    work(jobrt.redis)  # the other batches find nothing to send
    assert sum(fake.counts().values()) == 10
    camp = _camp(jobrt, cid)
    assert (camp.status, camp.sent, camp.targeted) == (CampaignStatus.cancelled, 10, 40)
    with jobrt.sessions() as s:
        assert counts(s, campaign_id=cid) == {"sent": 10, "cancelled": 30}
        (entry,) = s.exec(select(AuditEntry).where(AuditEntry.action == "campaign.cancel")).all()
        assert entry.detail["cancelled_messages"] == 30


# --- the worker killed half-way ---------------------------------------------------------------


def _family(pid: int) -> list[int]:
    """``pid`` and its descendants (rq's work-horse is a child in its own process group)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _signal(pids: list[int], sig: int) -> None:
    for p in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def _worker(rt: Runtime, fake: FakeWeChat, log: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "BROADCAST_"))}
    env.update({
        "DATABASE_URL": rt.settings.effective_database_url,
        "REDIS_URL": str(rt.settings.redis_url),
        "WECHAT_API_BASE": fake.base_url,
        "WECHAT_APP_ID": fake.state.appid,
        "WECHAT_APP_SECRET": fake.state.secret,
        "BROADCAST_RATE_PER_S": "500",
        "BROADCAST_BATCH": "100",
        "LOG_LEVEL": "WARNING",
    })
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-m", "redgrid.cli", "worker", *extra], env=env,
                                stdout=out, stderr=subprocess.STDOUT)


def test_broadcast_survives_a_sigkilled_worker(jobrt: Runtime, fake: FakeWeChat, tmp_path: Path) -> None:
    n, fresh_n = 2000, 1700
    coord, grid, fresh, stale = _people(jobrt, n, fresh=fresh_n, fake=fake)
    cid = _campaign(jobrt, coordinator_id=coord, audience=Audience(grid_id=grid))
    # a plain engine for watching: the app's SQLite engine takes the write lock on every BEGIN,
    # and a stopped worker may hold it
    watch = create_engine(jobrt.settings.effective_database_url)

    def sent_and_sending() -> tuple[int, int]:
        with watch.connect() as c:
            rows = dict(c.execute(text("SELECT status, count(*) FROM delivery WHERE campaign_id = :c GROUP BY status"),
                                  {"c": cid}).all())
        return int(rows.get("sent", 0)), int(rows.get("sending", 0))

    log = tmp_path / "worker.log"
    first = _worker(jobrt, fake, log)
    try:
        deadline = time.monotonic() + 120
        while sent_and_sending()[0] < fresh_n // 2:
            assert first.poll() is None, log.read_text()[-3000:]
            if time.monotonic() > deadline:
                with watch.connect() as c:
                    dbg = c.execute(text("SELECT status, count(*) FROM delivery GROUP BY status")).all()
                    dbg2 = c.execute(text("SELECT status, home_grid_id, is_volunteer, subscribed, count(*) FROM person GROUP BY 1,2,3,4")).all()
                    dbg2 += c.execute(text("SELECT id, path, parent_id FROM grid_unit")).all()
                raise AssertionError(f"{dbg} {dbg2} {jobrt.redis.keys('*')}")
            time.sleep(0.05)
        # freeze the worker, and let it go on only until no message is in flight; then kill it:
        # a death between two messages (a death mid-call is "in doubt": test_reconcile)
        family = _family(first.pid)
        _signal(family, signal.SIGSTOP)
        for _ in range(200):
            if sent_and_sending()[1] == 0:
                break
            _signal(family, signal.SIGCONT)
            time.sleep(0.001)
            family = _family(first.pid)
            _signal(family, signal.SIGSTOP)
        assert sent_and_sending()[1] == 0
        _signal(_family(first.pid), signal.SIGKILL)
    finally:
        _signal(_family(first.pid), signal.SIGKILL)
        first.wait(10)
    sent_at_kill = sent_and_sending()[0]
    assert fresh_n // 2 <= sent_at_kill < fresh_n  # killed half-way
    assert sum(fake.counts().values()) == sent_at_kill

    # a new worker starts (burst: it stops when the queues are empty); its start-up reconcile
    # resumes the campaign
    second = _worker(jobrt, fake, log, "--burst")
    try:
        assert second.wait(180) == 0, log.read_text()[-3000:]
    finally:
        _signal(_family(second.pid), signal.SIGKILL)
        second.wait(10)
    watch.dispose()

    got = fake.counts()
    assert set(got) == set(fresh)  # every eligible person...
    assert set(got.values()) == {1}  # ...exactly once
    camp = _camp(jobrt, cid)
    assert (camp.status, camp.targeted, camp.sent, camp.deferred, camp.failed) == (
        CampaignStatus.done, n, fresh_n, n - fresh_n, 0)
    with jobrt.sessions() as s:
        assert counts(s, campaign_id=cid) == {"sent": fresh_n, "deferred": n - fresh_n}
        assert s.exec(select(func.count()).select_from(Delivery).where(Delivery.campaign_id == cid)).one() == n

    # three of those outside 48 h write to us: it goes with their next interaction, once
    back = stale[:3]
    fx = Effects()
    now = jobrt.extras["clock"]()
    with jobrt.sessions() as s, s.begin():
        for openid in back:
            p = s.exec(select(Person).where(Person.openid == openid)).one()
            p.last_interaction_at = now
            fx.deliveries += release_deferred(s, person_id=p.id, now=now)
    for openid in back:
        fake.interact(openid)
    apply(jobrt.redis, fx)
    work(jobrt.redis)
    work(jobrt.redis)
    got = fake.counts()
    assert {o: got[o] for o in back} == dict.fromkeys(back, 1)
    assert sum(got.values()) == fresh_n + 3
    camp = _camp(jobrt, cid)
    assert (camp.sent, camp.deferred) == (fresh_n + 3, n - fresh_n - 3)
    with jobrt.sessions() as s:
        assert counts(s, campaign_id=cid) == {"sent": fresh_n + 3, "deferred": n - fresh_n - 3}


def test_45009_mid_campaign_pauses_until_midnight_then_resumes_once(jobrt: Runtime, fake: FakeWeChat) -> None:
    from jobs.outbound import PAUSE_KEY, next_local_midnight
    from tests.fakewechat import run_due, scheduled

    jobrt.settings = jobrt.settings.model_copy(update={"broadcast_batch": 50})
    coord, grid, fresh, _ = _people(jobrt, 20, fresh=20, fake=fake)
    for _ in range(4):  # let four go, then the daily quota runs out
        fake.inject("delay", 0, paths=("/cgi-bin/message/custom/send",))
    fake.inject("errcode", 45009, paths=("/cgi-bin/message/custom/send",))
    cid = _campaign(jobrt, coordinator_id=coord, audience=Audience(grid_id=grid))
    work(jobrt.redis)
    assert sum(fake.counts().values()) == 4
    camp = _camp(jobrt, cid)
    assert (camp.status, camp.sent) == (CampaignStatus.sending, 4)
    with jobrt.sessions() as s:
        assert counts(s, campaign_id=cid) == {"sent": 4, "pending": 16}
    reopen = next_local_midnight(jobrt.extras["clock"](), "Asia/Shanghai")
    assert scheduled(jobrt.redis) == {f"campaign-{cid}-at{int(reopen.timestamp())}": reopen}
    # midnight in Dongyang: the flag has expired, the campaign resumes and finishes
    jobrt.redis.delete(PAUSE_KEY)
    run_due(jobrt.redis, jobrt.extras["clock"].set(reopen))
    work(jobrt.redis)
    assert fake.counts() == dict.fromkeys(fresh, 1)
    camp = _camp(jobrt, cid)
    assert (camp.status, camp.sent, camp.deferred, camp.failed) == (CampaignStatus.done, 20, 0, 0)
