"""A simulated month of dispatch on the demo's volunteers: fairer than nearest-first?

    python -m bench.fairness [--tasks 500] [--volunteers 3000] [--seed 1]

The volunteers are the demo seed's (``redgrid.demo.build_demo``: Dongyang's towns, villages
and grids, kinds, certificates, quiet hours). 500 tasks over 30 days land at random grids
(more where more volunteers live), each asking for 1-3 people for 2 hours. Both policies
see the same tasks and the same people with the same answers: whether person P accepts
task T is a fixed coin flip (60%). Each task walks down its ranked list (the routine radius,
all hard filters, history kept as the month goes on: overlaps, weekly cap, recent work,
answer record) until its places are filled.

- ours: the dispatcher's ranking (distance, then fairness, reliability, locality);
- baseline: nearest first (the same filters, ``distance_band_m = 0``).

It prints the Gini coefficient of tasks per eligible volunteer (anyone eligible for at
least one task within reach) and the mean distance of the people who went, for both.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from dispatcher.index import VolunteerIndex
from dispatcher.matching import NO_FACTS, Clock, Facts, TaskSpec, Volunteer, facts_ok, static_ok
from models.settings import DispatchPolicy

START = datetime(2027, 3, 1, 0, 0, tzinfo=UTC)  # 08:00 in Dongyang
KINDS = ["elderly_visit", "fridge_restock", "dementia_outreach", "checkpoint", "publicity", "drill"]
ACCEPT_P = 0.6


def gini(values: list[float]) -> float:
    """0 when everyone did the same amount, towards 1 when one person did everything."""
    xs = sorted(values)
    n, total = len(xs), sum(xs)
    if n == 0 or total == 0:
        return 0.0
    return (2 * sum((i + 1) * x for i, x in enumerate(xs)) / (n * total)) - (n + 1) / n


def accepts(task_id: int, person_id: int, seed: int) -> bool:
    h = hashlib.blake2b(f"{seed}:{task_id}:{person_id}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64 < ACCEPT_P


def demo_people(seed: int, volunteers: int) -> tuple[list[Volunteer], list[tuple[float, float, tuple[int, ...]]]]:
    from redgrid.demo import build_demo

    data = build_demo(seed=seed, volunteers=volunteers)
    ids: dict[str, int] = {u.code: i + 1 for i, u in enumerate(data.units)}
    parent = {u.code: u.parent_code for u in data.units}

    def chain(code: str | None) -> tuple[int, ...]:
        out: list[int] = []
        while code:
            out.append(ids[code])
            code = parent.get(code)
        return tuple(reversed(out))

    people = []
    for i, p in enumerate(data.people, start=1):
        if not p.is_volunteer:
            continue
        people.append(
            Volunteer(
                id=i,
                lat=p.lat,
                lng=p.lng,
                active=p.status.value == "active",
                subscribed=p.subscribed,
                kinds=frozenset(p.kinds),
                certs=tuple(p.certs),
                quiet=p.quiet,
                weekly_cap_hours=p.weekly_cap_hours,
                units=chain(p.home_grid),
            )
        )
    grids = [(u.lat, u.lng, chain(u.code)) for u in data.units if u.level.value == "grid"]
    return people, grids


def make_tasks(n: int, people: list[Volunteer], grids: list[Any], rng: random.Random) -> list[TaskSpec]:
    # weight grids by the volunteers living in them: needs arise where people live
    weight: dict[tuple[int, ...], int] = defaultdict(int)
    for v in people:
        weight[v.units] += 1
    w = [1 + weight.get(g[2], 0) for g in grids]
    out = []
    for i in range(1, n + 1):
        lat, lng, units = rng.choices(grids, w)[0]
        day = rng.randrange(30)
        start = START + timedelta(days=day, hours=rng.choice([0, 1, 2, 6, 7, 8]))
        out.append(
            TaskSpec(
                id=i,
                kind=rng.choice(KINDS),
                lat=lat + rng.uniform(-0.004, 0.004),
                lng=lng + rng.uniform(-0.004, 0.004),
                starts_at=start,
                ends_at=start + timedelta(hours=2),
                urgency="routine",
                units=units,
            )
        )
    out.sort(key=lambda t: (t.starts_at, t.id))
    for j, t in enumerate(out, start=1):  # ids in time order, fixed per seed
        object.__setattr__(t, "id", j)
    return out


@dataclass
class History:
    work: list[tuple[datetime, datetime]]  # accepted windows
    offers: int = 0
    accepts: int = 0

    def facts(self, now: datetime, window_days: int) -> Facts:
        since = now - timedelta(days=window_days)
        done = [(s, e) for s, e in self.work if e <= now and e >= since]
        return Facts(
            busy=tuple((s, e) for s, e in self.work if e > now),
            load=tuple((s, (e - s).total_seconds() / 3600) for s, e in self.work),
            recent_hours=sum((e - s).total_seconds() / 3600 for s, e in done),
            recent_tasks=len(done),
            offers=self.offers,
            accepts=self.accepts,
            shows=len([1 for _, e in self.work if e <= now]),
        )


class LiveFacts(dict):  # type: ignore[type-arg]
    """Facts computed on demand from the running histories, as the database would give them."""

    def __init__(self, hist: dict[int, History], now: datetime, window_days: int) -> None:
        super().__init__()
        self.hist, self.now, self.window = hist, now, window_days

    def get(self, key: int, default: Facts | None = None) -> Facts:  # type: ignore[override]
        h = self.hist.get(key)
        return h.facts(self.now, self.window) if h else NO_FACTS


def simulate(policy: DispatchPolicy, people: list[Volunteer], tasks: list[TaskSpec], seed: int) -> dict[str, Any]:
    idx = VolunteerIndex(res=policy.index_h3_res)
    for v in people:
        idx.upsert(v)
    hist: dict[int, History] = defaultdict(lambda: History([]))
    eligible_ever: set[int] = set()
    went: dict[int, int] = defaultdict(int)
    distances: list[float] = []
    unfilled = 0
    radius = policy.radius_routine_m
    for t in tasks:
        now = t.starts_at - timedelta(hours=2)  # offers go out two hours ahead
        facts = LiveFacts(hist, now, policy.fairness_window_days)
        clock = Clock.of(t, now)
        for v in idx.near(t.lat, t.lng, radius):
            if static_ok(v, t, now, clock) and facts_ok(v, facts.get(v.id), t, policy):
                eligible_ever.add(v.id)
        ranked = idx.search(t, facts=facts, policy=policy, now=now, radius_m=radius, limit=None)
        need = 1 + (t.id * 7919) % 3  # 1-3 people, the same for both policies
        for r in ranked:
            if need == 0:
                break
            h = hist[r.person_id]
            h.offers += 1
            if accepts(t.id, r.person_id, seed):
                h.accepts += 1
                h.work.append((t.starts_at, t.ends_at))
                went[r.person_id] += 1
                distances.append(r.distance_m)
                need -= 1
        unfilled += need
    counts = [float(went.get(pid, 0)) for pid in eligible_ever]
    return {
        "gini": gini(counts),
        "mean_distance_m": sum(distances) / len(distances) if distances else 0.0,
        "eligible": len(eligible_ever),
        "served_people": sum(1 for c in counts if c > 0),
        "placements": len(distances),
        "unfilled": unfilled,
        "max_tasks_one_person": max(counts, default=0),
    }


def compare(*, seed: int = 1, tasks: int = 500, volunteers: int = 3000) -> tuple[dict[str, Any], dict[str, Any]]:
    people, grids = demo_people(seed, volunteers)
    ts = make_tasks(tasks, people, grids, random.Random(seed))
    ours = simulate(DispatchPolicy(), people, ts, seed)
    nearest = simulate(DispatchPolicy(distance_band_m=0.0), people, ts, seed)
    return ours, nearest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=500)
    ap.add_argument("--volunteers", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    ours, nearest = compare(seed=args.seed, tasks=args.tasks, volunteers=args.volunteers)
    print(f"simulated month: {args.tasks} tasks, demo seed {args.seed} with {args.volunteers} volunteers")
    print(f"{'':22}{'ours':>12}{'nearest-first':>16}")
    for key, fmt in (
        ("gini", "{:.3f}"),
        ("mean_distance_m", "{:.0f} m"),
        ("eligible", "{}"),
        ("served_people", "{}"),
        ("placements", "{}"),
        ("unfilled", "{}"),
        ("max_tasks_one_person", "{:.0f}"),
    ):
        print(f"{key:22}{fmt.format(ours[key]):>12}{fmt.format(nearest[key]):>16}")
    ratio = ours["mean_distance_m"] / nearest["mean_distance_m"]
    print(f"distance ratio        {ratio:.3f} (limit 1.10)")
    ok = ours["gini"] < nearest["gini"] and ratio <= 1.10
    print("fairer at <= 10% more distance:", "yes" if ok else "NO")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
