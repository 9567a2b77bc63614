"""SOS: from the caller's location reaching the webhook to the first alert WeChat accepted.

    python -m bench.sos [--runs 20] [--volunteers 3000]

Everything real but WeChat's cloud, on loopback:

- the app (``bot.app.create_app``, the real webhook and engine) served by aiohttp in this
  process, driven by ``bot.simulator.Simulator`` (signed requests, locations in GCJ-02);
- real Redis: a ``redis-server`` this script spawns on a free port (or
  ``REDGRID_BENCH_REDIS_URL``);
- a demo-seeded SQLite database in a temp directory (``redgrid.demo.seed_demo``, seed 1) plus
  six certified first-aiders 30-180 m from the patient at the city government (the roster's
  ``updated_at`` set an hour back, as a live roster's is; ``--fresh`` times it as just written);
- a running worker: ``python -m redgrid.cli worker`` (what ``redgrid worker`` runs: a forking
  RQ worker on high, default, bulk, with its scheduler), started and warmed before timing;
- the fake WeChat API (``tests/fakewechat.py``) in a thread, ``WECHAT_API_BASE`` pointed at it.

Each run: a new caller sends 急救 (not timed), then the clock starts and the location is
POSTed; the figure is the moment the fake WeChat accepted the first alert of that SOS (its own
``time.time()`` on receipt) minus the start. After each run the SOS is cancelled (as a
coordinator would), so the first-aiders are free for the next one.

Baseline, in the same run and interleaved with the SOS runs: one plain Delivery queued on
the ``high`` queue for a first-aider, from the database write to the fake's receipt: the
floor of "a worker picks up a job and calls WeChat". Printed: median and p90 of both, the
webhook's reply time, and the ratio SOS / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from tests.procs import free_port, spawn_redis, stop_process

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TOKEN = "bench-token-0123456789"
APP_ID = "wx1234567890abcdef"
SECRET = "test-secret"
PATIENT = (29.2785, 120.2282)  # the city government, 江北街道 (WGS-84)
M = 1 / 111_195  # degrees of latitude per metre
FIRST_AIDERS = [(30, 0), (-60, 0), (0, 90), (120, 0), (-150, 0), (0, -180)]  # metres north, east


def prepare(settings: Any, volunteers: int, *, backdate: bool = True) -> list[tuple[int, str]]:
    """Migrate, seed the demo, add the first-aiders near the patient; returns (id, openid)."""
    from sqlalchemy import update
    from sqlmodel import col

    from dispatcher.geo import cell
    from dispatcher.places import grid_at
    from models.db import make_engine, session_factory, utcnow
    from models.migrate import upgrade
    from models.tables import Certificate, Person, PersonStatus, TaskKind
    from redgrid.demo import seed_demo

    engine = make_engine(settings)
    upgrade(engine)
    sessions = session_factory(engine)
    seed_demo(sessions, seed=1, volunteers=volunteers, if_empty=True)
    out = []
    with sessions() as s, s.begin():
        grid = grid_at(s, lat=PATIENT[0], lng=PATIENT[1])
        assert grid is not None
        for i, (dn, de) in enumerate(FIRST_AIDERS):
            lat, lng = PATIENT[0] + dn * M, PATIENT[1] + de * M * 1.147  # ~metres east at 29.3 N
            p = Person(openid=f"bench-fa-{i}", name=f"救护员{i}", phone=f"1380000{i:04d}", is_volunteer=True,
                       status=PersonStatus.active, lat=lat, lng=lng, h3=cell(lat, lng), home_grid_id=grid.id,
                       kinds=[k.value for k in TaskKind], last_interaction_at=utcnow())  # fmt: skip
            s.add(p)
            s.flush()
            s.add(Certificate(person_id=int(p.id or 0), skill="first_aid", expires_on=date.today() + timedelta(days=700)))
            out.append((int(p.id or 0), str(p.openid)))
        if backdate:
            # A live roster was written long before an SOS (the demo seed an hour ago, the
            # first-aiders' last change half an hour ago). The worker's index is refreshed in
            # each forked job from the watermark it had at start-up, minus a 2-minute overlap
            # (jobs/dispatch.py, services._WATERMARK_OVERLAP): a roster written just now is
            # re-read whole by every wave; --fresh measures that case.
            s.execute(update(Person).values(updated_at=utcnow() - timedelta(hours=1)))
            s.execute(update(Person).where(col(Person.openid).startswith("bench-fa-"))
                      .values(updated_at=utcnow() - timedelta(minutes=30)))
    engine.dispose()
    return out


def start_worker(env: dict[str, str], log_path: Path, connection: Any) -> subprocess.Popen[bytes]:
    from rq import Worker

    logf = log_path.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "redgrid.cli", "worker"], cwd=ROOT, env=env, stdout=logf,
                            stderr=logf)  # fmt: skip
    deadline = time.monotonic() + 120
    while not Worker.all(connection=connection):  # registered after its start-up hooks ran
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"worker did not start (see {log_path})")
        time.sleep(0.1)
    return proc


async def wait_for(fake: Any, match: Any, timeout: float = 15.0) -> float | None:
    """The fake's receipt time of the first message matching ``match``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        hits = [m.at for m in fake.received() if match(m)]
        if hits:
            return min(hits)
        await asyncio.sleep(0.002)
    return None


def drain(connection: Any, timeout: float = 10.0) -> None:
    """Let the worker finish what the last run queued (stand-downs, coordinator notices)."""
    from jobs import queues

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        busy = 0
        for name in queues.ALL:
            q = queues.queue(name, connection)
            busy += q.count + len(q.started_job_registry.get_job_ids())
        if not busy:
            return
        time.sleep(0.01)


def cancel_sos(sessions: Any, task_id: int) -> None:
    from sqlalchemy import update

    from models.tables import Task, TaskStatus

    with sessions() as s, s.begin():
        s.execute(update(Task).where(Task.id == task_id).values(status=TaskStatus.cancelled))  # type: ignore[arg-type]


def baseline_once(sessions: Any, connection: Any, person_id: int, n: int) -> float:
    from dispatcher.effects import Effects
    from jobs.effects import apply
    from models.outbox import queue_message

    t0 = time.time()
    with sessions() as s, s.begin():
        row = queue_message(s, person_id=person_id, purpose="bench_ping", target=n, text=f"bench ping {n}")
        assert row is not None and row.id is not None
        fx = Effects(deliveries=[row.id], urgent=True)
    apply(connection, fx)
    return t0


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[k]


async def bench(args: argparse.Namespace) -> int:
    import redis
    from aiohttp import web

    from bot.app import create_app
    from bot.simulator import Simulator
    from models.db import make_engine, session_factory
    from models.settings import load_settings
    from tests.fakewechat import FakeWeChat

    work = Path(tempfile.mkdtemp(prefix="redgrid-bench-sos-"))
    procs: list[subprocess.Popen[bytes]] = []
    fake = FakeWeChat(appid=APP_ID, secret=SECRET).start()
    fake.state.window_limit = 1_000_000
    runner: web.AppRunner | None = None
    try:
        redis_url = os.environ.get("REDGRID_BENCH_REDIS_URL")
        if not redis_url:
            redis_url, rproc = spawn_redis(work)
            procs.append(rproc)
        db_url = f"sqlite:///{work / 'bench.db'}"
        env_settings = {
            "DATABASE_URL": db_url, "REDIS_URL": redis_url, "WECHAT_API_BASE": fake.base_url,
            "WECHAT_APP_ID": APP_ID, "WECHAT_APP_SECRET": SECRET, "WECHAT_TOKEN": TOKEN, "VAR_DIR": str(work),
        }  # fmt: skip
        settings = load_settings(**{k.lower(): v for k, v in env_settings.items()})
        t = time.perf_counter()
        first_aiders = prepare(settings, args.volunteers, backdate=not args.fresh)
        print(f"database: demo seed ({args.volunteers} volunteers) + {len(first_aiders)} first-aiders "
              f"in {time.perf_counter() - t:.1f} s")  # fmt: skip
        for _pid, openid in first_aiders:
            fake.set_user(openid, last_interaction=time.time())
        connection = redis.Redis.from_url(redis_url)
        env = {**os.environ, **env_settings, "PYTHONPATH": str(ROOT)}
        procs.append(start_worker(env, work / "worker.log", connection))

        app = create_app(settings)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}/wechat"
        engine = make_engine(settings)
        sessions = session_factory(engine)

        sos_s: list[float] = []
        reply_s: list[float] = []
        base_s: list[float] = []
        missed = 0
        total = args.runs + args.warmup
        for i in range(total):
            # baseline: a plain message through the same worker and queue
            t0 = baseline_once(sessions, connection, first_aiders[0][0], i)
            got = await wait_for(fake, lambda m, i=i: m.text == f"bench ping {i}")
            drain(connection)
            # the SOS
            caller_id = f"bench-caller-{i}"
            fake.set_user(caller_id, last_interaction=time.time())
            sim = Simulator(url, token=TOKEN, app_id=APP_ID, openid=caller_id)
            await sim.send(sim.text("急救"))
            t1 = time.time()
            reply = await sim.send(sim.location(*PATIENT, "东阳市人民政府"))
            t_reply = time.time() - t1
            m = re.search(r"（T(\d+)）", reply or "")
            if not reply or not reply.startswith("请立即拨打120") or m is None:
                raise SystemExit(f"unexpected SOS reply: {reply!r}")
            tid = int(m.group(1))
            head = f"【急救呼叫 T{tid}】"
            alert = await wait_for(fake, lambda msg, head=head: msg.text.startswith(head) and "需要急救" in msg.text)
            drain(connection)
            cancel_sos(sessions, tid)
            if i < args.warmup:
                continue
            if got is not None:
                base_s.append(got - t0)
            if alert is None:
                missed += 1
                continue
            sos_s.append(alert - t1)
            reply_s.append(t_reply)
        engine.dispose()

        def row(name: str, xs: list[float]) -> str:
            return f"| {name} | {statistics.median(xs) * 1000:.0f} ms | {pct(xs, 90) * 1000:.0f} ms | {len(xs)} |"

        fresh = " on a roster written just now (--fresh)" if args.fresh else ""
        print(f"\n{args.runs} SOS runs{fresh} ({args.warmup} warm-up runs not counted); missed alerts: {missed}\n")
        print("| | median | p90 | n |\n| --- | --- | --- | --- |")
        print(row("SOS location -> first alert accepted by WeChat", sos_s))
        print(row("webhook reply to the location (call 120 + AEDs)", reply_s))
        print(row("baseline: one queued message -> WeChat", base_s))
        ratio = statistics.median(sos_s) / statistics.median(base_s)
        print(f"\nSOS / baseline (medians): {ratio:.1f}x; target median < 2 s: "
              f"{'met' if statistics.median(sos_s) < 2.0 else 'NOT met'}")  # fmt: skip
        return 0 if sos_s and statistics.median(sos_s) < 2.0 and not missed else 1
    finally:
        if runner is not None:
            await runner.cleanup()
        for p in reversed(procs):
            stop_process(p)
        fake.stop()
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--volunteers", type=int, default=3000)
    parser.add_argument("--fresh", action="store_true",
                        help="time SOSes right after the seed (the roster written within the last 2 minutes)")
    args = parser.parse_args()
    sys.exit(asyncio.run(bench(args)))


if __name__ == "__main__":
    main()
