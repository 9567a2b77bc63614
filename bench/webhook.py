"""The webhook under load, against a bare aiohttp + wechatpy echo app in the same run.

    python -m bench.webhook [--requests 4000] [--max-seconds 60] [--concurrency 50,200]
                            [--openids 2000] [--volunteers 3000] [--mode plain|safe]
                            [--processes N] [--threads N] [--app-root DIR] [--edge-only]

Ours: the real app (``redgrid web``, i.e. ``bot.app.create_app`` with the real engine) as
production runs it: ``--processes`` web processes (default one per core; gunicorn when more
than one), on a demo-seeded database (``redgrid.demo.seed_demo(seed=1)``: a temp SQLite file,
or PostgreSQL when ``REDGRID_BENCH_DATABASE_URL`` is set) and real Redis (a redis-server this
script spawns on a free port, or ``REDGRID_BENCH_REDIS_URL``). Logs on, at INFO, as in
production (to a file).

Floor: an aiohttp app that only verifies the signature, parses the XML and renders a text
reply with wechatpy: what any Python webhook must at least spend per message.

The load generator is an aiohttp client in this process, with a fixed number of requests in
flight (each concurrency level in turn), a bounded request count and a time cap. Every
request is signed as WeChat signs it, from one of ``--openids`` distinct demo people
(volunteers ``demo-v-NNNNN`` and grid workers ``demo-g-NNNNN``), with a mix of commands
(帮助, 班次, 我的, 更多, AED, location messages, unknown text). Bodies are built before the clock
starts so the client spends its CPU on the wire only; the server and the client still share
this machine's cores, for both apps alike.

Printed per app and level: requests/s, p50/p99 latency (ms), errors, the web processes'
peak RSS (VmHWM from /proc, summed over the process tree) and CPU time per request (user +
system, over the tree); then ours/echo ratios. ``BENCH_PROFILE=file`` runs our server under
py-spy; ``BENCH_YAPPI=script`` runs it through a profiling wrapper script of your own.
The issue's target: at 50 concurrent, p99 < 100 ms and throughput at least half the echo's.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.procs import free_port, spawn_redis, stop_process, wait_port

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "bench-token-0123456789"
APP_ID = "wx00000000bench0001"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
ACCOUNT = "gh_redgrid_bench"

# What people send on a busy day (weights): mostly lookups, some locations, a few typos.
MIX: list[tuple[str, int]] = [
    ("帮助", 15), ("班次", 20), ("我的", 15), ("更多", 5), ("AED", 10), ("@location", 20),
    ("今天天气怎么样", 15),
]  # fmt: skip
# points around Dongyang (WGS-84) for location messages
PLACES = [(29.2785, 120.2282), (29.2862, 120.2330), (29.2680, 120.2420), (29.1540, 120.3080),
          (29.2200, 120.3600), (29.3300, 120.2100)]  # fmt: skip


# --- the echo app (the floor) -----------------------------------------------------------------


def echo_app(token: str, aes_key: str | None) -> Any:
    from aiohttp import web
    from wechatpy import parse_message
    from wechatpy.crypto import WeChatCrypto
    from wechatpy.exceptions import InvalidSignatureException
    from wechatpy.replies import TextReply
    from wechatpy.utils import check_signature

    crypto = WeChatCrypto(token, aes_key, APP_ID) if aes_key else None

    async def post(request: web.Request) -> web.Response:
        q = request.query
        body = await request.read()
        try:
            if crypto is not None and q.get("encrypt_type") == "aes":
                body = crypto.decrypt_message(body, q["msg_signature"], q["timestamp"], q["nonce"])
            else:
                check_signature(token, q.get("signature", ""), q.get("timestamp", ""), q.get("nonce", ""))
        except (InvalidSignatureException, KeyError):
            return web.Response(status=403)
        msg = parse_message(body)
        xml = TextReply(message=msg, content=f"收到：{getattr(msg, 'content', msg.type)}").render()
        if crypto is not None and q.get("encrypt_type") == "aes":
            xml = crypto.encrypt_message(xml, q["nonce"], q["timestamp"])
        return web.Response(text=xml, content_type="application/xml")

    app = web.Application()
    app.router.add_post("/wechat", post)
    return app


def serve_echo(port: int, aes: bool) -> None:
    from aiohttp import web

    web.run_app(echo_app(TOKEN, AES_KEY if aes else None), host="127.0.0.1", port=port,
                access_log=None, print=lambda *_: None)


# --- services ---------------------------------------------------------------------------------


def prepare_database(url: str, volunteers: int) -> dict[str, int]:
    from models.db import make_engine, session_factory
    from models.migrate import upgrade
    from models.settings import load_settings
    from redgrid.demo import seed_demo

    engine = make_engine(load_settings(database_url=url))
    upgrade(engine)
    counts = seed_demo(session_factory(engine), seed=1, volunteers=volunteers, if_empty=True)
    engine.dispose()
    return counts


def demo_openids(url: str, n: int, rng: random.Random) -> list[str]:
    from sqlalchemy import select

    from models.db import make_engine
    from models.settings import load_settings
    from models.tables import Person

    engine = make_engine(load_settings(database_url=url))
    with engine.connect() as conn:
        rows = [r[0] for r in conn.execute(
            select(Person.openid).where(Person.openid.like("demo-v-%") | Person.openid.like("demo-g-%"))  # type: ignore[union-attr]
        )]
    engine.dispose()
    rng.shuffle(rows)
    return rows[:n]


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (a gunicorn master and its workers)."""
    parents: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            parents.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    tree, todo = [], [pid]
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += parents.get(p, [])
    return tree


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process and its descendants have used so far (/proc)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            continue
    return total


def peak_rss_mb(pid: int) -> float:
    """VmHWM, each process's peak resident set so far, summed over the process and its
    descendants (for several processes: an upper bound of their peak together)."""
    total = 0.0
    for p in process_tree(pid):
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            continue
    return total or float("nan")


# --- load ------------------------------------------------------------------------------------


@dataclass
class Result:
    app: str
    concurrency: int
    requests: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float
    peak_rss_mb: float
    statuses: dict[int, int]
    cpu_ms: float = float("nan")  # the web process's CPU time per request (user + system)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


def build_requests(openids: list[str], n: int, mode: str, rng: random.Random) -> list[tuple[dict[str, str], bytes]]:
    from bot.simulator import Simulator

    words = [w for w, _ in MIX]
    weights = [k for _, k in MIX]
    out = []
    sims: dict[str, Simulator] = {}
    for i in range(n):
        openid = openids[i % len(openids)]
        sim = sims.get(openid)
        if sim is None:
            sim = sims[openid] = Simulator("http://unused", token=TOKEN, app_id=APP_ID, openid=openid,
                                           aes_key=AES_KEY if mode != "plain" else None, mode=mode,  # type: ignore[arg-type]
                                           account=ACCOUNT)
        word = rng.choices(words, weights)[0]
        if word == "@location":
            lat, lng = rng.choice(PLACES)
            fields = sim.location(lat + rng.uniform(-0.01, 0.01), lng + rng.uniform(-0.01, 0.01), "位置")
        else:
            fields = sim.text(word)
        out.append(sim.request(fields))
    return out


async def run_load(url: str, reqs: list[tuple[dict[str, str], bytes]], concurrency: int,
                   max_seconds: float) -> tuple[list[float], int, dict[int, int], float]:
    import aiohttp

    latencies: list[float] = []
    statuses: dict[int, int] = {}
    errors = 0
    it = iter(reqs)
    deadline = time.monotonic() + max_seconds
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(limit=concurrency, force_close=False)
    headers = {"Content-Type": "text/xml"}

    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal errors
            for query, body in it:
                if time.monotonic() > deadline:
                    return
                t0 = time.perf_counter()
                try:
                    async with session.post(url, params=query, data=body, headers=headers) as resp:
                        text = await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                        if resp.status != 200 or not text:
                            errors += 1
                except (aiohttp.ClientError, TimeoutError):
                    errors += 1
                    statuses[0] = statuses.get(0, 0) + 1
                latencies.append(time.perf_counter() - t0)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return latencies, errors, statuses, elapsed


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))
    return ordered[k] * 1000


def measure(targets: dict[str, tuple[str, int]], openids: list[str], args: argparse.Namespace,
            concurrency: int, rng: random.Random) -> list[Result]:
    """Both apps at one level, in alternating rounds (this machine's load drifts: each app gets
    its share of good and bad moments); latencies pooled over the rounds."""
    per_round = max(1, args.requests // args.rounds)
    pooled: dict[str, tuple[list[float], int, dict[int, int], float]] = {
        app: ([], 0, {}, 0.0) for app in targets
    }
    cpu = dict.fromkeys(targets, 0.0)
    for url, _pid in targets.values():  # warm-up: connections, caches, the JIT-less Python
        asyncio.run(run_load(url, build_requests(openids, min(300, per_round), args.mode, rng), concurrency, 20))
    for _ in range(args.rounds):
        for app, (url, pid) in targets.items():
            reqs = build_requests(openids, per_round, args.mode, rng)
            cpu0 = cpu_seconds(pid)
            lat, errors, statuses, elapsed = asyncio.run(run_load(url, reqs, concurrency, args.max_seconds))
            cpu[app] += cpu_seconds(pid) - cpu0
            all_lat, all_err, all_st, all_s = pooled[app]
            all_lat += lat
            for code, n in statuses.items():
                all_st[code] = all_st.get(code, 0) + n
            pooled[app] = (all_lat, all_err + errors, all_st, all_s + elapsed)
    return [
        Result(app, concurrency, len(lat), errors, secs, pct(lat, 50), pct(lat, 99), peak_rss_mb(targets[app][1]),
               statuses, cpu[app] * 1000 / len(lat) if lat else float("nan"))
        for app, (lat, errors, statuses, secs) in pooled.items()
    ]


# --- main ------------------------------------------------------------------------------------


def serve_edge_only(port: int) -> None:
    """Our real web app and webhook edge (verify, parse, dedupe claim, rate limit, stored reply,
    log line, metrics) with a handler that answers at once: what our edge costs on its own."""
    from aiohttp import web

    from bot.app import create_app
    from models.settings import load_settings
    from redgrid.cli import _setup_logging

    class Instant:
        def handle(self, inbound: Any) -> str:
            return "收到：" + (inbound.text or inbound.kind)

        def deliver_late(self, user: str, text: str) -> None:
            pass

    _setup_logging("web")
    web.run_app(create_app(load_settings(), handler_factory=lambda app: Instant()), host="127.0.0.1",
                port=port, access_log=None, print=lambda *_: None)


def start_ours(env: dict[str, str], port: int, log_path: Path, root: Path = ROOT,
               edge_only: bool = False) -> subprocess.Popen[bytes]:
    logf = log_path.open("ab")
    # exactly what `redgrid web` runs (or, --edge-only, our app with an instant handler)
    cmd = [sys.executable, "-m", "redgrid.cli", "web", "--port", str(port)]
    if edge_only:
        cmd = [sys.executable, "-m", "bench.webhook", "--serve-edge-only", str(port)]
    if os.environ.get("BENCH_YAPPI"):  # a script that runs `redgrid web` under a profiler
        cmd = [sys.executable, os.environ["BENCH_YAPPI"], "--port", str(port)]
    if os.environ.get("BENCH_PROFILE"):  # py-spy's collapsed stacks of the web process
        cmd = ["py-spy", "record", "-r", "250", "--threads", "-f", "raw", "-o", os.environ["BENCH_PROFILE"], "--", *cmd]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=logf, stderr=logf)
    wait_port(port, proc)
    return proc


def start_echo(port: int, aes: bool) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "bench.webhook", "--serve-echo", str(port)] + (["--mode", "safe"] if aes else [])
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port, proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None and os.environ.get("BENCH_PROFILE"):
        import signal

        proc.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(30)
    stop_process(proc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=4000, help="per app and concurrency level")
    ap.add_argument("--rounds", type=int, default=4, help="alternating echo/ours rounds per level")
    ap.add_argument("--max-seconds", type=float, default=30.0, help="time cap per round")
    ap.add_argument("--concurrency", default="50,200")
    ap.add_argument("--openids", type=int, default=2000, help="distinct senders")
    ap.add_argument("--volunteers", type=int, default=3000, help="demo seed size")
    ap.add_argument("--mode", choices=["plain", "safe"], default="plain")
    ap.add_argument("--threads", type=int, default=None, help="WEB_THREADS for our app")
    ap.add_argument("--processes", type=int, default=os.cpu_count() or 1,
                    help="WEB_PROCESSES for our app (default: one per core, as README's Running at scale says)")
    ap.add_argument("--app-root", type=Path, default=ROOT,
                    help="serve our app from this checkout (e.g. a git worktree of an older commit)")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    ap.add_argument("--keep", action="store_true", help="keep the temp directory (logs, database)")
    ap.add_argument("--edge-only", action="store_true",
                    help="ours = our web app with an instant handler, one process (the edge's own cost)")
    ap.add_argument("--serve-echo", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--serve-edge-only", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.serve_echo is not None:
        serve_echo(args.serve_echo, args.mode == "safe")
        return 0
    if args.serve_edge_only is not None:
        serve_edge_only(args.serve_edge_only)
        return 0

    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    rng = random.Random(7)
    work = Path(tempfile.mkdtemp(prefix="redgrid-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    try:
        redis_url = os.environ.get("REDGRID_BENCH_REDIS_URL")
        if not redis_url:
            redis_url, rproc = spawn_redis(work)
            procs.append(rproc)
        db_url = os.environ.get("REDGRID_BENCH_DATABASE_URL") or f"sqlite:///{work / 'bench.db'}"
        t0 = time.perf_counter()
        prepare_database(db_url, args.volunteers)
        openids = demo_openids(db_url, args.openids, rng)
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start; "
              f"ours: {'our edge with an instant handler, 1' if args.edge_only else args.processes} "
              f"web process(es), echo: 1", flush=True)
        print(f"seeded in {time.perf_counter() - t0:.1f}s; {len(openids)} senders; database "
              f"{db_url.split('://')[0]}; redis {'spawned' if len(procs) else 'given'}", flush=True)

        env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "DATABASE_URL", "REDIS_URL"))}
        env.update(DATABASE_URL=db_url, REDIS_URL=redis_url, WECHAT_TOKEN=TOKEN, WECHAT_APP_ID=APP_ID,
                   WECHAT_API_BASE="http://127.0.0.1:9", LOG_LEVEL="INFO", VAR_DIR=str(work / "var"),
                   # the bench sends far more per sender than a person would
                   RATELIMIT_MESSAGES="0")
        if args.mode == "safe":
            env["WECHAT_AES_KEY"] = AES_KEY
        if args.threads:
            env["WEB_THREADS"] = str(args.threads)
        env["WEB_PROCESSES"] = str(args.processes)

        results: list[Result] = []
        ports = {"echo": free_port(), "ours": free_port()}
        echo = start_echo(ports["echo"], args.mode == "safe")
        procs.append(echo)
        ours = start_ours(env, ports["ours"], work / "web.log", args.app_root, edge_only=args.edge_only)
        procs.append(ours)
        targets = {app: (f"http://127.0.0.1:{ports[app]}/wechat", p.pid) for app, p in (("echo", echo), ("ours", ours))}
        for level in levels:
            for res in measure(targets, openids, args, level, rng):
                results.append(res)
                print(f"{res.app:5} c={level:<4} {res.rps:8.0f} req/s  p50 {res.p50_ms:7.1f} ms  "
                      f"p99 {res.p99_ms:7.1f} ms  errors {res.errors}/{res.requests}  "
                      f"peak RSS {res.peak_rss_mb:6.1f} MB  CPU {res.cpu_ms:.2f} ms/req", flush=True)
        print()
        print("| concurrency | app | req/s | p50 ms | p99 ms | errors | peak RSS MB | CPU ms/req |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for r in results:
            print(f"| {r.concurrency} | {r.app} | {r.rps:.0f} | {r.p50_ms:.1f} | {r.p99_ms:.1f} | "
                  f"{r.errors}/{r.requests} | {r.peak_rss_mb:.0f} | {r.cpu_ms:.2f} |")
        print()
        verdict = 0
        for level in levels:
            ours = next(r for r in results if r.app == "ours" and r.concurrency == level)
            echo = next(r for r in results if r.app == "echo" and r.concurrency == level)
            ratio = ours.rps / echo.rps if echo.rps else float("nan")
            line = (f"c={level}: ours/echo throughput {ratio:.2f}, p99 ours {ours.p99_ms:.1f} ms "
                    f"vs echo {echo.p99_ms:.1f} ms")
            if level == 50:
                ok = ratio >= 0.5 and ours.p99_ms < 100 and ours.errors == 0
                line += f"  target (ratio >= 0.5, p99 < 100 ms, no errors): {'MET' if ok else 'MISSED'}"
                verdict |= 0 if ok else 1
            print(line)
        if args.json:
            print(json.dumps([{**r.__dict__, "rps": r.rps} for r in results], default=str))
        stray = sum(1 for line in (work / "web.log").read_text(errors="replace").splitlines()
                    if '"level": "ERROR"' in line)
        print(f"web log: {stray} ERROR lines ({work / 'web.log'}{'' if args.keep else ', removed'})")
        return verdict
    finally:
        for p in procs:
            stop(p)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
