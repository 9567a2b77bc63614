"""50 people accept a 3-slot task at the same moment: exactly 3 get it, 47 are told it is full.

Threads against each back end (SQLite: BEGIN IMMEDIATE serialises writers), and 50 separate
processes against PostgreSQL (spawned, each with its own engine), where the guarded
``UPDATE ... WHERE accepted_count < slots`` and the row lock are what hold the line.
The process test is marked slow: spawning 50 interpreters takes tens of seconds.
"""

from __future__ import annotations

import multiprocessing as mp
import threading
from collections import Counter
from datetime import timedelta

import pytest
from dispatch_world import NOW, assign, build_world, person, task
from sqlalchemy.engine import Engine
from sqlmodel import select

from dispatcher import services
from dispatcher.effects import Effects
from models.tables import Assignment, AssignmentStatus, Task, TaskStatus

N, SLOTS = 50, 3


def _setup(sessions) -> tuple[int, list[int]]:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        tid = task(s, grid=w.grid3, slots=SLOTS, start=NOW, hours=3)
        people = [person(s, f"志愿者{i}", lat=29.2785 + i * 1e-4) for i in range(N)]
        for p in people:
            assign(s, tid, p, AssignmentStatus.offered, wave=1, offered_at=NOW, expires_at=NOW + timedelta(hours=1))
    return tid, people


def _check(sessions, tid: int, statuses: list[str]) -> None:  # type: ignore[no-untyped-def]
    assert Counter(statuses) == {"accepted": SLOTS, "full": N - SLOTS}
    with sessions() as s:
        t = s.get(Task, tid)
        assert (t.accepted_count, t.status) == (SLOTS, TaskStatus.filled)
        rows = Counter(a.status for a in s.exec(select(Assignment).where(Assignment.task_id == tid)))
        assert rows == {AssignmentStatus.accepted: SLOTS, AssignmentStatus.withdrawn: N - SLOTS}


def _accept(factory, tid: int, pid: int) -> str:  # type: ignore[no-untyped-def]
    with factory() as s, s.begin():
        return services.accept_offer(s, Effects(), person_id=pid, task_id=tid, now=NOW).status


def test_concurrent_accepts_threads(sessions, engine: Engine) -> None:  # type: ignore[no-untyped-def]
    tid, people = _setup(sessions)
    barrier = threading.Barrier(N)
    out: list[str] = []
    lock = threading.Lock()

    def run(pid: int) -> None:
        barrier.wait()
        status = _accept(sessions, tid, pid)
        with lock:
            out.append(status)

    threads = [threading.Thread(target=run, args=(p,)) for p in people]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    _check(sessions, tid, out)


def _accept_in_process(url: str, tid: int, pid: int, barrier, results) -> None:  # type: ignore[no-untyped-def]
    from models.db import make_engine, session_factory
    from models.settings import load_settings

    engine = make_engine(load_settings(database_url=url), pool_size=1, max_overflow=0)
    try:
        factory = session_factory(engine)
        with factory() as s:  # connect before the start line, so the race is on the update
            s.exec(select(Task.id).where(Task.id == tid)).one()
        barrier.wait(timeout=120)
        results.put((pid, _accept(factory, tid, pid)))
    except Exception as exc:  # reported to the parent, which fails the test
        results.put((pid, f"error: {exc!r}"))
    finally:
        engine.dispose()


@pytest.mark.slow
@pytest.mark.postgres
def test_concurrent_accepts_processes_postgres(pg_sessions, pg_database_url: str) -> None:  # type: ignore[no-untyped-def]
    # separate processes race on PostgreSQL; SQLite's writers are covered by the thread test
    sessions, database_url = pg_sessions, pg_database_url
    tid, people = _setup(sessions)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(N)
    results = ctx.Queue()
    procs = [ctx.Process(target=_accept_in_process, args=(database_url, tid, p, barrier, results)) for p in people]
    for p in procs:
        p.start()
    got = [results.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert sorted(pid for pid, _ in got) == sorted(people)
    _check(sessions, tid, [status for _, status in got])
