"""Broadcast benchmark: a 22,000-member campaign sent by two RQ worker processes to the fake
WeChat server (loopback), end to end (materialize, batches, rate limiter, claims, counters).

Prints messages per second, the time from "confirm" to the last message, the peak memory of a
worker (its main process and its biggest work-horse), the duplicate count (must be 0), and, as
the baseline of the same run, the raw channel: one process sending straight through
``jobs.wechat_api`` with no database or queue. The ratio campaign/raw is the figure to compare
between machines.

    .venv/bin/python bench/broadcast.py                       # SQLite file, own redis-server
    .venv/bin/python bench/broadcast.py --database-url postgresql+psycopg://postgres@127.0.0.1:5432/bench

Without ``--redis-url`` it starts its own ``redis-server`` on a free loopback port (it flushes
the Redis it uses). With ``--database-url`` the database must be empty or disposable: the
bench creates its tables there and drops them at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sqlalchemy import insert, text  # noqa: E402
from sqlmodel import SQLModel  # noqa: E402

from dispatcher.audience import Audience, create_campaign  # noqa: E402
from dispatcher.effects import Effects  # noqa: E402
from jobs.effects import apply  # noqa: E402
from jobs.wechat_api import WeChatAPI  # noqa: E402
from models.db import make_engine, session_factory, utcnow  # noqa: E402
from models.migrate import upgrade  # noqa: E402
from models.redisconn import connect_redis  # noqa: E402
from models.settings import load_settings  # noqa: E402
from models.tables import Campaign, CampaignStatus, Person  # noqa: E402
from tests.fakewechat import FakeWeChat, make_grid, make_person  # noqa: E402
from tests.procs import free_port as _free_port  # noqa: E402

APPID, SECRET = "wx1234567890abcdef", "bench-secret"




def _family(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _rss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):  # the process's own peak resident set
                return int(line.split()[1])
    except OSError:
        pass
    return 0


class MemoryWatch(threading.Thread):
    """Polls the peak RSS of each worker's main process and of its children (work-horses)."""

    def __init__(self, pids: list[int]) -> None:
        super().__init__(daemon=True)
        self.pids = pids
        self.main_peak = dict.fromkeys(pids, 0)
        self.child_peak = dict.fromkeys(pids, 0)
        self.stop_flag = threading.Event()

    def run(self) -> None:
        while not self.stop_flag.is_set():
            for pid in self.pids:
                self.main_peak[pid] = max(self.main_peak[pid], _rss_kib(pid))
                for child in _family(pid):
                    self.child_peak[pid] = max(self.child_peak[pid], _rss_kib(child))
            time.sleep(0.1)


def seed(sessions, n: int, stale: int) -> tuple[int, int]:  # type: ignore[no-untyped-def]
    now = utcnow()
    with sessions() as s, s.begin():
        city = make_grid(s, name="东阳市", level="city")
        grid = make_grid(s, name="江北街道东丰村第3网格", parent=city)
        coord = make_person(s, openid="oBenchCoord", coordinator_scope=city, volunteer=False, last=now)
        from datetime import timedelta

        rows = [{
            "openid": f"oM{i:06d}", "name": f"会员{i}", "is_volunteer": True, "home_grid_id": grid.id,
            "status": "active", "subscribed": True, "kinds": [], "share_live_location": False,
            "is_grid_worker": False, "is_coordinator": False, "created_at": now, "updated_at": now,
            "last_interaction_at": now - (timedelta(days=3) if i >= n - stale else timedelta(hours=2)),
        } for i in range(n)]
        cols = set(Person.__table__.columns.keys())
        rows = [{k: v for k, v in r.items() if k in cols} for r in rows]
        for i in range(0, n, 5000):
            s.execute(insert(Person), rows[i:i + 5000])
        return coord.id, grid.id  # type: ignore[return-value]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--members", type=int, default=22_000)
    ap.add_argument("--stale", type=int, default=2_000, help="members outside 48 h (deferred, no template)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=1000.0, help="BROADCAST_RATE_PER_S for the run")
    ap.add_argument("--batch", type=int, default=200)
    ap.add_argument("--baseline", type=int, default=2000, help="messages in the raw-channel baseline")
    ap.add_argument("--database-url", default=None)
    ap.add_argument("--redis-url", default=None)
    ap.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="redgrid-bench-"))
    redis_proc = None
    redis_url = args.redis_url
    if redis_url is None:
        if shutil.which("redis-server") is None:
            print("no redis-server on PATH: pass --redis-url", file=sys.stderr)
            return 2
        port = _free_port()
        redis_proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL)
        redis_url = f"redis://127.0.0.1:{port}/0"
    db_url = args.database_url or f"sqlite:///{tmp / 'bench.db'}"
    fake = FakeWeChat(appid=APPID, secret=SECRET).start()
    settings = load_settings(database_url=db_url, redis_url=redis_url, var_dir=tmp, wechat_app_id=APPID,
                             wechat_app_secret=SECRET, wechat_api_base=fake.base_url,
                             broadcast_rate_per_s=args.rate, broadcast_batch=args.batch)
    workers: list[subprocess.Popen[bytes]] = []
    engine = None
    try:
        for _ in range(50):
            try:
                if connect_redis(settings).ping():
                    break
            except Exception:
                time.sleep(0.1)
        r = connect_redis(settings)
        r.flushdb()
        engine = make_engine(settings)
        upgrade(engine)
        sessions = session_factory(engine)
        t = time.perf_counter()
        coord_id, grid_id = seed(sessions, args.members, args.stale)
        seed_s = time.perf_counter() - t
        wall = time.time()
        for i in range(args.members):
            fake.set_user(f"oM{i:06d}", last_interaction=wall - (3 * 86400 if i >= args.members - args.stale else 7200))

        # baseline: the raw channel, one process, no database or queue
        api = WeChatAPI(settings, r)
        t = time.perf_counter()
        for i in range(args.baseline):
            api.send_text(f"oM{i:06d}", "基准测试")
        raw_rate = args.baseline / (time.perf_counter() - t)
        with fake.state.lock:
            fake.state.messages.clear()
            for u in fake.state.users.values():
                u.window_count = 0

        env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL"))}
        env.update({"DATABASE_URL": db_url, "REDIS_URL": redis_url, "WECHAT_API_BASE": fake.base_url,
                    "WECHAT_APP_ID": APPID, "WECHAT_APP_SECRET": SECRET, "BROADCAST_RATE_PER_S": str(args.rate),
                    "BROADCAST_BATCH": str(args.batch), "LOG_LEVEL": "WARNING", "PYTHONPATH": str(ROOT)})
        log = (tmp / "workers.log").open("ab")
        for _ in range(args.workers):
            workers.append(subprocess.Popen([sys.executable, "-m", "redgrid.cli", "worker"], env=env, cwd=ROOT,
                                            stdout=log, stderr=subprocess.STDOUT))
        log.close()
        time.sleep(2.0)  # workers up (imports, start-up reconcile) before the clock starts
        watch = MemoryWatch([w.pid for w in workers])
        watch.start()

        fx = Effects()
        t0 = time.time()
        with sessions() as s, s.begin():
            camp = create_campaign(s, fx, coordinator_id=coord_id, audience=Audience(grid_id=grid_id),
                                   text="周日上午世界急救日宣传，江北文化礼堂，需要10位志愿者，回复「班次」报名。", now=utcnow())
            cid = camp.id
        apply(r, fx)
        deadline = time.monotonic() + 3600
        while True:
            with sessions() as s:
                c = s.get(Campaign, cid)
                status = c.status
            if status != CampaignStatus.sending:
                break
            if time.monotonic() > deadline or any(w.poll() is not None for w in workers):
                print("campaign did not finish; see", tmp / "workers.log", file=sys.stderr)
                return 1
            time.sleep(0.2)
        t_done = time.time()
        watch.stop_flag.set()
        watch.join()

        msgs = fake.received()
        per = fake.counts()
        duplicates = sum(v - 1 for v in per.values() if v > 1)
        first, last = min(m.at for m in msgs), max(m.at for m in msgs)
        rate = len(msgs) / (last - first) if last > first else float("nan")
        with sessions() as s:
            c = s.get(Campaign, cid)
            figures = {
                "members": args.members, "workers": args.workers, "rate_limit_per_s": args.rate,
                "database": engine.dialect.name,
                "sent": c.sent, "deferred": c.deferred, "failed": c.failed, "targeted": c.targeted,
                "received_by_fake": len(msgs), "duplicates": duplicates,
                "messages_per_s": round(rate, 1),
                "time_to_last_message_s": round(last - t0, 2),
                "time_to_done_s": round(t_done - t0, 2),
                "raw_channel_messages_per_s": round(raw_rate, 1),
                "ratio_vs_raw_channel": round(rate / raw_rate, 3),
                "worker_main_peak_rss_mib": round(max(watch.main_peak.values()) / 1024, 1),
                "worker_horse_peak_rss_mib": round(max(watch.child_peak.values()) / 1024, 1),
                "seed_s": round(seed_s, 2),
            }
        print(f"broadcast: {figures['members']} members, {figures['workers']} workers, "
              f"{figures['database']}, rate limit {args.rate:g}/s")
        print(f"  sent {figures['sent']}, deferred {figures['deferred']}, failed {figures['failed']}, "
              f"fake received {figures['received_by_fake']}, duplicates {duplicates}")
        print(f"  {figures['messages_per_s']} messages/s; last message {figures['time_to_last_message_s']} s "
              f"after confirm (campaign done at {figures['time_to_done_s']} s)")
        print(f"  raw channel (1 process, no DB/queue): {figures['raw_channel_messages_per_s']} messages/s; "
              f"ratio {figures['ratio_vs_raw_channel']}")
        print(f"  peak RSS per worker: main {figures['worker_main_peak_rss_mib']} MiB, "
              f"work-horse {figures['worker_horse_peak_rss_mib']} MiB")
        if args.json:
            print(json.dumps(figures))
        ok = duplicates == 0 and figures["sent"] == args.members - args.stale == len(msgs)
        return 0 if ok else 1
    finally:
        for w in workers:
            for p in [*_family(w.pid), w.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(p, signal.SIGKILL)
            w.wait(10)
        fake.stop()
        if engine is not None:
            if args.database_url:
                SQLModel.metadata.drop_all(engine)
                with engine.begin() as conn:
                    conn.execute(text("DROP TABLE IF EXISTS alembic_version"))
            engine.dispose()
        if redis_proc is not None:
            redis_proc.terminate()
            redis_proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
