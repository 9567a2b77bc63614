"""Faults under load: Redis killed and restarted, every PostgreSQL backend terminated, a worker
SIGKILLed mid-job, and the WeChat API timing out or answering 5xx.

Every Redis here is a redis-server this file spawns on a free port (the shared one is never
touched); PostgreSQL faults are made by terminating the backends of a database this file
creates. The load is a dozen people registering at once through the real webhook and engine,
each answering what they are asked (and resending when told the system had a hiccup), so a
dialog that lost or mangled its state would show as a wrong or missing registration.

Marked slow: each test takes a few seconds (the worker test ~15 s, most of it RQ's retry delay).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from aiohttp.test_utils import TestServer
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlmodel import create_engine, select

from bot.app import create_app
from bot.copy import HELP_HEAD
from bot.simulator import Simulator
from bot.state import Dialog
from bot.webhook import APOLOGY, TOO_FAST
from jobs.outbound import RATE_KEY, deliver, plan_send
from models.db import make_engine, session_factory, transaction, utcnow
from models.migrate import upgrade
from models.outbox import queue_message
from models.settings import Settings, load_settings
from models.tables import Delivery, DeliveryStatus, Person, PersonStatus
from tests import fakewechat
from tests.conftest import PG_URL, require
from tests.procs import free_port
from tests.world import World, build_world

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

# the fake WeChat fixtures (a loopback server, reset per test; a job runtime pointed at it)
fake_server = fakewechat.fake_server
fake = fakewechat.fake
jobrt = fakewechat.jobrt


# --- a Redis of our own ------------------------------------------------------------------------


class OwnRedis:
    """redis-server on a free loopback port, with an append-only file so a restart keeps data."""

    def __init__(self, workdir: Path) -> None:
        exe = shutil.which("redis-server")
        require(exe is not None, "redis-server is not installed")
        self.exe = str(exe)
        self.port = free_port()
        self.dir = workdir
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "yes",
             "--appendfsync", "always", "--dir", str(self.dir)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        for _ in range(100):
            try:
                if client.ping():
                    return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("own redis-server did not start")

    def crash(self) -> None:
        assert self.proc is not None
        self.proc.kill()  # SIGKILL: no goodbye to the clients
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[OwnRedis]:
    r = OwnRedis(tmp_path)
    r.start()
    yield r
    r.stop()


# --- the load: people registering, reading each reply ------------------------------------------

NAMES = ["赵敏", "钱多多", "孙丽", "李强", "周杰", "吴磊", "郑爽", "王芳", "冯远", "陈晨", "褚英", "卫东"]


def answer(reply: str | None, last: str, name: str, phone: str) -> str | None:
    """What a person types next, having read ``reply``; None once registered."""
    if reply is None or reply in (APOLOGY, TOO_FAST):
        return last  # no answer, or "try again later": send the same again
    if "注册成功" in reply or "信息已更新" in reply:
        return None
    if "请确认" in reply or "请回复「确认」" in reply:
        return "确认"
    if "姓名" in reply:
        return name
    if "手机号" in reply:
        return phone
    if "找到几个地方" in reply:
        return next(line.split()[0] for line in reply.splitlines() if "第3网格" in line)
    if "技能" in reply:
        return "0"
    if "位置" in reply or "村社" in reply:
        return "东丰村第3网格"
    return "注册"  # anything else (the dialog was lost): start again


async def register(sim: Simulator, name: str, phone: str, outcomes: Counter[str], max_messages: int = 60) -> None:
    text: str | None = "注册"
    for _ in range(max_messages):
        assert text is not None
        reply = await sim.send(sim.text(text))  # a non-2xx answer raises WebhookRefused: a failure
        outcomes["apology" if reply == APOLOGY else "success" if reply is None else "reply"] += 1
        nxt = answer(reply, text, name, phone)
        if nxt is None:
            return
        text = nxt
        if reply in (APOLOGY, None):
            await asyncio.sleep(0.05)  # a person needs a moment to resend
    raise AssertionError(f"{sim.openid} did not finish registering in {max_messages} messages")


async def run_load(settings: Settings, srv: TestServer, fault: Any, *, people: int = 12,
                   fault_after: int = 30) -> Counter[str]:
    """Everyone registers at once; ``fault()`` runs (in a thread) once ``fault_after`` replies came."""
    outcomes: Counter[str] = Counter()

    async def trigger() -> None:
        while sum(outcomes.values()) < fault_after:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(fault)
        outcomes["faults"] += 1

    sims = [Simulator.from_settings(settings, str(srv.make_url("/wechat")), f"fault-user-{i}") for i in range(people)]
    await asyncio.gather(trigger(), *(register(s, NAMES[i], f"1390000{i:04d}", outcomes) for i, s in enumerate(sims)))
    return outcomes


def check_registrations(sessions: Any, world: World, people: int = 12) -> None:
    with sessions() as s:
        rows = {p.openid: p for p in s.exec(select(Person).where(Person.openid.like("fault-user-%")))}  # type: ignore[union-attr]
    assert len(rows) == people
    for i in range(people):
        p = rows[f"fault-user-{i}"]
        assert (p.name, p.phone, p.home_grid_id) == (NAMES[i], f"1390000{i:04d}", world.grid3)
        assert p.is_volunteer and p.status == PersonStatus.active


def check_dialogs(client: redis.Redis) -> None:
    for key in client.scan_iter("rg:dialog:*"):
        raw = client.get(key)
        if raw is not None:
            Dialog(**json.loads(raw))  # readable, or this raises


async def eventually_answers(sim: Simulator, attempts: int = 50) -> str:
    for _ in range(attempts):
        reply = await sim.send(sim.text("帮助"))
        if reply not in (None, APOLOGY):
            assert reply is not None
            return reply
        await asyncio.sleep(0.1)
    raise AssertionError("the webhook did not recover")


# --- Redis restarted under load -------------------------------------------------------------------


async def test_redis_restart_under_load(settings: Settings, sessions, own_redis: OwnRedis) -> None:  # type: ignore[no-untyped-def]
    world = build_world(sessions, utcnow())
    app_settings = settings.model_copy(update={"redis_url": own_redis.url})

    def restart() -> None:
        own_redis.crash()
        time.sleep(0.5)  # the webhook answers without Redis meanwhile
        own_redis.start()

    srv = TestServer(create_app(app_settings), host="127.0.0.1")
    await srv.start_server()
    try:
        outcomes = await run_load(app_settings, srv, restart)
        sim = Simulator.from_settings(app_settings, str(srv.make_url("/wechat")), "fault-probe")
        assert (await eventually_answers(sim)).startswith(HELP_HEAD)
    finally:
        await srv.close()
    assert outcomes["faults"] == 1
    check_registrations(sessions, world)
    check_dialogs(redis.Redis.from_url(own_redis.url))
    print(f"redis restart: {dict(outcomes)}")


# --- PostgreSQL backends terminated under load ----------------------------------------------------


@pytest.fixture
def own_pg_database(pg_database_url: str) -> Iterator[str]:
    # pg_database_url: the suite's check that PostgreSQL is there (skip, or fail under CI)
    name = f"redgrid_fault_{uuid.uuid4().hex[:10]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def terminate_backends(database: str) -> int:
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            killed = conn.execute(
                text("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                     "WHERE datname = :db AND pid <> pg_backend_pid()"),
                {"db": database},
            ).scalar_one()
    finally:
        admin.dispose()
    return int(killed)


async def test_postgres_backends_terminated_under_load(own_pg_database: str, redis_client: redis.Redis,
                                                       redis_url: str, tmp_path: Path) -> None:
    settings = load_settings(database_url=own_pg_database, redis_url=redis_url, var_dir=tmp_path / "var",
                             wechat_token="test-token", wechat_app_id="wx1234567890abcdef",
                             wechat_api_base="http://127.0.0.1:9")
    engine = make_engine(settings)
    upgrade(engine)
    sessions = session_factory(engine)
    world = build_world(sessions, utcnow())
    dbname = make_url(own_pg_database).database
    assert dbname
    killed: list[int] = []

    def terminate_twice() -> None:
        killed.append(terminate_backends(dbname))
        time.sleep(0.3)
        killed.append(terminate_backends(dbname))

    srv = TestServer(create_app(settings), host="127.0.0.1")
    await srv.start_server()
    try:
        outcomes = await run_load(settings, srv, terminate_twice)
        sim = Simulator.from_settings(settings, str(srv.make_url("/wechat")), "fault-probe")
        assert (await eventually_answers(sim)).startswith(HELP_HEAD)
        async with __import__("aiohttp").ClientSession() as http, http.get(srv.make_url("/readyz")) as resp:
            assert resp.status == 200 and (await resp.json())["database"] == "ok"
        assert killed[0] > 0  # the app's pooled connections were there, and were cut
        check_registrations(sessions, world)
        check_dialogs(redis_client)
    finally:
        await srv.close()
        engine.dispose()  # last: the checks above use this engine's pool
    print(f"postgres terminate: killed {killed}, {dict(outcomes)}")


# --- a worker SIGKILLed mid-job -----------------------------------------------------------------


def _delivery(jobrt: Any, openid: str) -> int:
    with transaction(jobrt.sessions) as s:
        grid = fakewechat.make_grid(s)
        p = fakewechat.make_person(s, openid=openid, grid=grid, last=utcnow())
        row = queue_message(s, person_id=p.id, purpose="late_reply", target="t1", text="您的班次已确认")
        assert row is not None
        return int(row.id)  # type: ignore[arg-type]


def _row(jobrt: Any, did: int) -> Delivery:
    with jobrt.sessions() as s:
        row = s.get(Delivery, did)
        assert row is not None
        return row


def _worker(settings: Settings, fake_url: str, **env: str) -> subprocess.Popen[bytes]:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "DATABASE_URL", "REDIS_URL"))}
    full.update(DATABASE_URL=settings.effective_database_url, REDIS_URL=str(settings.redis_url),
                WECHAT_API_BASE=fake_url, WECHAT_APP_ID=settings.wechat_app_id,
                WECHAT_APP_SECRET=settings.wechat_app_secret.get_secret_value(), WECHAT_TIMEOUT_S="10",
                LOG_LEVEL="WARNING", **env)
    with open(os.environ.get("REDGRID_FAULT_WORKER_LOG", os.devnull), "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "redgrid.cli", "worker"], cwd=ROOT, env=full,
                                stdout=subprocess.DEVNULL, stderr=log)


def _descendants(pid: int) -> list[int]:
    """Child processes, grandchildren too (from /proc): RQ's work-horse and scheduler."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the worker and everything it forked (the work-horse runs in a session of its
    own, so a process-group kill would miss it): what a machine crash or OOM kill does."""
    for pid in [proc.pid, *_descendants(proc.pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    proc.wait(10)


def _until(check: Any, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting: {what}")
        time.sleep(0.1)


def _retry_abandoned(connection: redis.Redis) -> None:
    """What RQ's maintenance does once a dead worker's job outlives its lease: requeue it (with
    its retry delay). Run now rather than after the job timeout."""
    from rq.scheduler import RQScheduler

    from jobs import queues

    q = queues.queue(queues.DEFAULT, connection)
    q.started_job_registry.cleanup(timestamp=time.time() + 10**6)
    # likewise the dead worker's scheduler locks, which would expire by themselves, so the
    # next worker's scheduler takes over and enqueues the retry when it falls due
    connection.delete(*(RQScheduler.get_locking_key(name) for name in queues.ALL))


@pytest.mark.parametrize("when", ["before_claim", "during_send"])
def test_worker_killed_mid_job(jobrt: Any, fake: fakewechat.FakeWeChat, when: str) -> None:
    settings, conn = jobrt.settings, jobrt.redis
    fake.interact("o-killed-worker")
    did = _delivery(jobrt, "o-killed-worker")
    send_path = "/cgi-bin/message/custom/send"
    if when == "before_claim":
        # the shared rate limiter is booked far ahead: the job waits for its token, unclaimed
        now = float(conn.time()[0])
        conn.set(RATE_KEY, str(now + 60), ex=120)
    else:
        fake.inject("delay", 3.0, paths=(send_path,))  # WeChat got the request, has not answered
    plan_send(conn, did)
    first = _worker(settings, fake.base_url)
    try:
        if when == "before_claim":
            from rq.job import Job

            _until(lambda: Job.fetch(f"delivery-{did}", connection=conn).get_status() == "started", "job started")
            time.sleep(0.5)  # well inside the 60 s wait for a token
        else:
            _until(lambda: fake.state.calls[send_path] >= 1, "the send reached WeChat")
    finally:
        _kill(first)

    row = _row(jobrt, did)
    if when == "before_claim":
        assert (row.status, row.attempts) == (DeliveryStatus.pending, 0)  # nothing claimed, nothing sent
        conn.delete(RATE_KEY)
    else:
        assert (row.status, row.attempts) == (DeliveryStatus.sending, 1)  # in doubt: WeChat may have it
        claimed = row.claimed_at
        assert claimed is not None
        _until(lambda: (utcnow() - claimed).total_seconds() > 1.5, "the claim outlived the 1 s lease")

    _retry_abandoned(conn)
    second = _worker(settings, fake.base_url, OUTBOUND_CLAIM_LEASE_S="1")
    try:
        if when == "before_claim":
            _until(lambda: _row(jobrt, did).status == DeliveryStatus.sent, "the retry sent it")
        else:
            # the retry finds the row claimed and leaves it; the reconciler (at the worker's
            # start, lease 1 s) settles it as failed, in doubt: at most once, never twice
            _until(lambda: _row(jobrt, did).status == DeliveryStatus.failed, "the claim was settled")
    finally:
        _kill(second)
    row = _row(jobrt, did)
    if when == "before_claim":
        assert len(fake.received("o-killed-worker")) == 1  # sent by the retry, once
        assert (row.attempts, row.errcode) == (1, 0)
    else:
        # the one request WeChat saw may or may not have gone through (the fake drops it when
        # the caller vanishes); what must not happen is a second one
        assert fake.state.calls[send_path] == 1 and len(fake.received("o-killed-worker")) <= 1
        assert row.payload.get("in_doubt") is True and row.attempts == 1


# --- the WeChat API slow or failing -------------------------------------------------------------


@pytest.mark.parametrize("fault", [("http", 502.0, "/cgi-bin/message/custom/send"),
                                   ("http", 503.0, "/cgi-bin/token"),
                                   ("delay", 3.0, "/cgi-bin/token")])
def test_wechat_timeouts_and_5xx_are_retried_and_sent_once(jobrt: Any, fake: fakewechat.FakeWeChat,
                                                           fault: tuple[str, float, str]) -> None:
    kind, value, path = fault
    jobrt.settings = jobrt.settings.model_copy(update={"wechat_timeout_s": 1.0})
    jobrt.extras.pop("wechat_api", None)
    fake.interact("o-wechat-fault")
    did = _delivery(jobrt, "o-wechat-fault")
    fake.inject(kind, value, paths=(path,))
    first = deliver(jobrt, did)
    assert first.result == "retry" and first.reopen_at is not None  # planned again with backoff
    row = _row(jobrt, did)
    assert (row.status, row.attempts) == (DeliveryStatus.pending, 1)
    assert fake.received("o-wechat-fault") == []  # a token that never came means no send was made
    assert deliver(jobrt, did).result == "sent"
    assert len(fake.received("o-wechat-fault")) == 1
    assert (_row(jobrt, did).status, _row(jobrt, did).attempts) == (DeliveryStatus.sent, 2)
