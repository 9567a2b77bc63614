"""Candidate search: the H3 index against a brute-force scan of every volunteer, same run.

    python -m bench.dispatch [--volunteers 100000] [--tasks 1000] [--limit 20] [--seed 7]

100,000 synthetic volunteers spread over Dongyang (29.0-29.45 N, 120.05-120.65 E) with
random kinds, certificates, quiet hours and records; 1,000 tasks at random places. For each
task both methods produce the ranked list of the best ``limit`` candidates within the
routine radius, all hard filters applied; the lists must be identical. The brute force
checks every volunteer (filters, a haversine bound, then the geodesic for anyone who can be
inside the radius) and sorts; the index searches H3 rings outward and stops once no unseen
person can rank higher. Prints both medians, the ratio, and memory.
"""

from __future__ import annotations

import argparse
import random
import resource
import statistics
import sys
import time
import tracemalloc
from datetime import UTC, date, datetime, timedelta

from dispatcher.index import VolunteerIndex
from dispatcher.matching import Facts, TaskSpec, Volunteer, brute_force
from models.settings import DispatchPolicy

KINDS = [
    "checkpoint", "drill", "fridge_restock", "dementia_outreach", "first_aid_cover",
    "training", "publicity", "elderly_visit", "emergency", "other",
]  # fmt: skip
NOW = datetime(2026, 7, 15, 2, 0, tzinfo=UTC)  # 10:00 in Dongyang


def make_people(n: int, rng: random.Random) -> tuple[list[Volunteer], dict[int, Facts]]:
    people, facts = [], {}
    for i in range(1, n + 1):
        certs: tuple[tuple[str, date | None], ...] = ()
        if rng.random() < 0.3:
            certs = (("first_aid", rng.choice([None, date(2026, 1, 1), date(2028, 1, 1)])),)
        people.append(
            Volunteer(
                id=i,
                lat=rng.uniform(29.0, 29.45),
                lng=rng.uniform(120.05, 120.65),
                active=rng.random() < 0.95,
                subscribed=rng.random() < 0.97,
                kinds=frozenset(rng.sample(KINDS, rng.randint(2, 6))),
                certs=certs,
                quiet=(22 * 60, 7 * 60) if rng.random() < 0.3 else None,
                units=(1, rng.randint(2, 19), rng.randint(20, 400), rng.randint(400, 3000)),
            )
        )
        if rng.random() < 0.6:
            facts[i] = Facts(
                recent_hours=rng.uniform(0, 20),
                recent_tasks=rng.randint(0, 6),
                offers=rng.randint(0, 20),
                accepts=rng.randint(0, 15),
                shows=rng.randint(0, 12),
                no_shows=rng.randint(0, 2),
            )
    return people, facts


def make_tasks(n: int, rng: random.Random) -> list[TaskSpec]:
    out = []
    for i in range(1, n + 1):
        start = NOW + timedelta(hours=rng.randint(1, 72))
        out.append(
            TaskSpec(
                id=i,
                kind=rng.choice(KINDS),
                lat=rng.uniform(29.0, 29.45),
                lng=rng.uniform(120.05, 120.65),
                starts_at=start,
                ends_at=start + timedelta(hours=rng.choice([1, 2, 3])),
                required_skills=("first_aid",) if rng.random() < 0.2 else (),
                urgency=rng.choices(["routine", "urgent", "emergency"], [0.85, 0.1, 0.05])[0],
                units=(1, rng.randint(2, 19), rng.randint(20, 400), rng.randint(400, 3000)),
            )
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--volunteers", type=int, default=100_000)
    ap.add_argument("--tasks", type=int, default=1_000)
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    policy = DispatchPolicy()
    people, facts = make_people(args.volunteers, rng)
    tasks = make_tasks(args.tasks, rng)

    tracemalloc.start()
    t0 = time.perf_counter()
    idx = VolunteerIndex(res=policy.index_h3_res)
    for v in people:
        idx.upsert(v)
    build_s = time.perf_counter() - t0
    _, index_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    radius = {"routine": policy.radius_routine_m, "urgent": policy.radius_urgent_m, "emergency": 1_000.0}
    t_index, t_brute, mismatches, found = [], [], 0, 0
    for t in tasks:
        r = radius[t.urgency]
        a = time.perf_counter()
        got = idx.search(t, facts=facts, policy=policy, now=NOW, radius_m=r, limit=args.limit)
        b = time.perf_counter()
        want = brute_force(people, t, facts=facts, policy=policy, now=NOW, radius_m=r, limit=args.limit)
        c = time.perf_counter()
        t_index.append(b - a)
        t_brute.append(c - b)
        found += len(got)
        if got != want:
            mismatches += 1

    mi, mb = statistics.median(t_index), statistics.median(t_brute)
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"volunteers {args.volunteers:,}  tasks {args.tasks:,}  top {args.limit}  (seed {args.seed})")
    print(f"index build       {build_s:.2f} s, traced peak {index_peak / 2**20:.1f} MiB (index + snapshots)")
    print(f"index median      {mi * 1e3:.3f} ms   (p95 {sorted(t_index)[int(0.95 * len(t_index))] * 1e3:.3f} ms)")
    print(f"brute median      {mb * 1e3:.3f} ms   (p95 {sorted(t_brute)[int(0.95 * len(t_brute))] * 1e3:.3f} ms)")
    print(f"speed-up          {mb / mi:.1f}x (median brute / median index)")
    print(f"process peak RSS  {rss_mb:.0f} MiB")
    print(f"candidates found  {found:,} (mean {found / len(tasks):.1f} per task)")
    print(f"identical lists   {len(tasks) - mismatches}/{len(tasks)}")
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
