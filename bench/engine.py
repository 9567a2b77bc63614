"""The conversation engine in-process: what one message costs without HTTP.

    python -m bench.engine [--messages 600] [--rounds 3] [--senders 300] [--volunteers 3000]
                           [--baseline-root DIR] [--json]

The same mixed messages (帮助, 班次, 我的, 更多, AED, location, unknown text; from ``--senders``
distinct demo people) go straight to ``Conversation.handle`` in one thread, on a demo-seeded
database (``redgrid.demo.seed_demo(seed=1)``: a temp SQLite file, or PostgreSQL when
``REDGRID_BENCH_DATABASE_URL`` is set: two databases are made from it as templates) and a
redis-server this script spawns on a free port.

With ``--baseline-root`` (an older checkout, e.g. ``git archive <commit> | tar -x -C DIR``)
the same messages also run through that checkout's engine, each side on its own copy of the
seeded database and its own Redis db, in alternating rounds (the machine's load drifts);
every reply of the two sides is compared (they must be identical: the change is for speed,
not behaviour). Printed per command and overall: mean/p50/p99 ms, SQL statements and Redis
round trips per message.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WARMUP = 60


# --- the child: one side's run (imports that side's code via PYTHONPATH) ----------------------


def child(spec_path: str) -> None:
    """Run the messages in ``spec_path`` through this checkout's engine; JSON lines out."""
    spec = json.loads(Path(spec_path).read_text())
    here = Path(__file__).resolve().parent  # bench/ must not shadow top-level names
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != here]
    import redis
    from sqlalchemy import event

    from bot.engine import Conversation
    from bot.inbound import Inbound
    from models.db import make_engine, session_factory
    from models.settings import load_settings

    settings = load_settings(database_url=spec["db_url"], redis_url=spec["redis_url"])
    engine = make_engine(settings)
    client = redis.Redis.from_url(spec["redis_url"])
    conv = Conversation(settings=settings, sessions=session_factory(engine), redis_client=client)
    counts = {"sql": 0, "redis": 0}

    @event.listens_for(engine, "before_cursor_execute")
    def _count_sql(*_a: Any) -> None:
        counts["sql"] += 1

    send = redis.connection.Connection.send_packed_command

    def counted(self: Any, *a: Any, **k: Any) -> Any:  # one call per round trip (pipelines too)
        counts["redis"] += 1
        return send(self, *a, **k)

    redis.connection.Connection.send_packed_command = counted  # type: ignore[method-assign]

    def inbound(m: dict[str, Any]) -> Inbound:
        if m["text"] == "@location":
            return Inbound(user=m["user"], kind="location", lat=m["lat"], lng=m["lng"], label="东阳")
        return Inbound(user=m["user"], kind="text", text=m["text"])

    for m in spec["warmup"]:
        conv.handle(inbound(m))
    prof = None
    if os.environ.get("BENCH_ENGINE_PROFILE"):  # cProfile stats of the measured messages
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    out = []
    for m in spec["messages"]:
        ib = inbound(m)
        counts["sql"] = counts["redis"] = 0
        t0 = time.perf_counter()
        reply = conv.handle(ib)
        ms = (time.perf_counter() - t0) * 1000
        out.append({"cmd": m["text"], "ms": ms, "sql": counts["sql"], "redis": counts["redis"], "reply": reply})
    if prof is not None:
        prof.disable()
        prof.dump_stats(os.environ["BENCH_ENGINE_PROFILE"])
    engine.dispose()
    print(json.dumps(out, ensure_ascii=False))


# --- the parent -------------------------------------------------------------------------------


def pct(values: list[float], p: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(p / 100 * (len(s) - 1)))]


def make_messages(openids: list[str], n: int, rng: random.Random) -> list[dict[str, Any]]:
    # the webhook bench's busy-day mix (imported here, in the parent: a side's child runs
    # with only that side's checkout on its path)
    from bench.webhook import MIX, PLACES

    words, weights = zip(*MIX, strict=True)
    out = []
    for _ in range(n):
        text = rng.choices(words, weights)[0]
        lat, lng = rng.choice(PLACES)
        out.append({"user": rng.choice(openids), "text": text,
                    "lat": lat + rng.uniform(-0.01, 0.01), "lng": lng + rng.uniform(-0.01, 0.01)})
    return out


def pg_copies(url: str, names: list[str]) -> dict[str, str]:
    """A fresh database per side, made from the seeded one as a template."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    base = make_url(url)
    admin = create_engine(base.set(database="postgres"), isolation_level="AUTOCOMMIT")
    out = {}
    with admin.connect() as conn:
        for name in names:
            db = f"{base.database}_eng_{name}"
            conn.execute(text(f'DROP DATABASE IF EXISTS "{db}"'))
            conn.execute(text(f'CREATE DATABASE "{db}" TEMPLATE "{base.database}"'))
            out[name] = base.set(database=db).render_as_string(hide_password=False)
    admin.dispose()
    return out


def run_side(root: Path, spec: dict[str, Any], work: Path, name: str) -> list[dict[str, Any]]:
    path = work / f"spec-{name}.json"
    path.write_text(json.dumps(spec, ensure_ascii=False))
    env = {**os.environ, "PYTHONPATH": str(root)}
    # run by path so this file's own checkout is not on sys.path: the side's code is imported
    res = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(path)],
                         cwd=root, env=env, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"{name} run failed:\n{res.stderr[-4000:]}")
    return list(json.loads(res.stdout.strip().splitlines()[-1]))


def summarize(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["cmd"], []).append(r)
    groups["(all)"] = rows
    out = {}
    for cmd, rs in groups.items():
        ms = [r["ms"] for r in rs]
        out[cmd] = {"n": len(rs), "mean": statistics.fmean(ms), "p50": pct(ms, 50), "p99": pct(ms, 99),
                    "sql": statistics.fmean(r["sql"] for r in rs), "redis": statistics.fmean(r["redis"] for r in rs)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=600, help="per round and side")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--senders", type=int, default=300)
    ap.add_argument("--volunteers", type=int, default=3000)
    ap.add_argument("--baseline-root", type=Path, default=None, help="an older checkout to compare with")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child)
        return 0

    from bench.webhook import demo_openids, prepare_database, spawn_redis, stop

    rng = random.Random(11)
    work = Path(tempfile.mkdtemp(prefix="redgrid-engine-"))
    procs = []
    try:
        redis_base, rproc = spawn_redis(work)
        procs.append(rproc)
        sides = {"current": ROOT} if args.baseline_root is None else {"baseline": args.baseline_root.resolve(),
                                                                      "current": ROOT}
        pg = os.environ.get("REDGRID_BENCH_DATABASE_URL")
        seed_url = pg or f"sqlite:///{work / 'seed.db'}"
        prepare_database(seed_url, args.volunteers)
        openids = demo_openids(seed_url, args.senders, rng)
        if pg:
            urls = pg_copies(pg, list(sides))
        else:
            urls = {}
            for name in sides:
                shutil.copy(work / "seed.db", work / f"{name}.db")
                urls[name] = f"sqlite:///{work / f'{name}.db'}"
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; database "
              f"{seed_url.split('://')[0]}; {len(openids)} senders", flush=True)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in sides}
        order = list(sides)
        for rnd in range(args.rounds):
            msgs = make_messages(openids, args.messages, rng)
            warm = make_messages(openids, WARMUP, rng)
            for name in order if rnd % 2 == 0 else order[::-1]:
                db = list(sides).index(name)
                spec = {"db_url": urls[name], "redis_url": redis_base.rsplit("/", 1)[0] + f"/{db}",
                        "messages": msgs, "warmup": warm}
                results[name] += run_side(sides[name], spec, work, name)
            print(f"round {rnd + 1}/{args.rounds} done", flush=True)
        summaries = {name: summarize(rows) for name, rows in results.items()}
        from bench.webhook import MIX

        cmds = [w for w, _ in MIX] + ["(all)"]
        print()
        print("| message | side | n | mean ms | p50 ms | p99 ms | SQL/msg | Redis trips/msg |")
        print("| --- | --- | --- | --- | --- | --- | --- | --- |")
        for cmd in cmds:
            for name in sides:
                s = summaries[name].get(cmd)
                if s:
                    label = "location" if cmd == "@location" else ("unknown text" if cmd == "今天天气怎么样" else cmd)
                    print(f"| {label} | {name} | {s['n']:.0f} | {s['mean']:.2f} | {s['p50']:.2f} | "
                          f"{s['p99']:.2f} | {s['sql']:.1f} | {s['redis']:.1f} |")
        for name in sides:
            s = summaries[name]["(all)"]
            print(f"{name}: {1000 / s['mean']:.0f} messages/s single-threaded (mean {s['mean']:.2f} ms)")
        if "baseline" in results:
            a, b = results["baseline"], results["current"]
            for row in a + b:  # signed links carry their signing time
                row["reply"] = re.sub(r"/v/s/[^\"]+", "/v/s/…", row["reply"] or "")
            same = sum(x["reply"] == y["reply"] for x, y in zip(a, b, strict=True))
            print(f"replies identical to the baseline: {same}/{len(a)}")
            for x, y in zip(a, b, strict=True):
                if x["reply"] != y["reply"]:
                    import difflib

                    print(f"first difference ({x['cmd']}):")
                    print("\n".join(difflib.unified_diff(x["reply"].splitlines(), y["reply"].splitlines(),
                                                        "baseline", "current", lineterm="")))
                    break
            ratio = summaries["baseline"]["(all)"]["mean"] / summaries["current"]["(all)"]["mean"]
            print(f"current is {ratio:.2f}x the baseline's speed (mean per message)")
        if args.json:
            print(json.dumps(summaries))
        return 0
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
