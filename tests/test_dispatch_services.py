"""The report lifecycle, offers, check-in/out, summaries, status, and the index refresh."""

from __future__ import annotations

import importlib.util
import sys
from datetime import date, timedelta
from pathlib import Path

import pytest
from dispatch_world import LAT, LNG, NOW, assign, build_world, coordinator, person, task
from sqlmodel import select

from dispatcher import services
from dispatcher.effects import Effects
from dispatcher.index import VolunteerIndex
from models.settings import DispatchPolicy
from models.tables import (
    Assignment,
    AssignmentStatus,
    Delivery,
    Person,
    PersonStatus,
    Report,
    ReportStatus,
    Task,
    TaskKind,
    TaskMode,
    TaskStatus,
    Urgency,
)

AS = AssignmentStatus


def _call(sessions, fn, **kw):  # type: ignore[no-untyped-def]
    fx = Effects()
    with sessions() as s, s.begin():
        out = fn(s, fx, **kw)
    return out, fx


def test_report_lifecycle_taken_and_done(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        reporter = person(s, "陈网格", is_volunteer=False, is_grid_worker=True, phone="13912342231")
        wang = person(s, "王丽", lat=LAT + 0.002)
        li = person(s, "李强", lat=LAT + 0.003)
        zhang = person(s, "张敏", lat=LAT + 0.004)
    (report, t), fx = _call(
        sessions, services.create_report, reporter_id=reporter, grid_id=w.grid3, category="爱心冰柜缺货",
        text="东丰村冰柜水和藿香正气水没了", lat=LAT, lng=LNG, urgency="routine", headcount=2, needed_by=None, now=NOW,
    )
    assert (t.kind, t.mode, t.slots, t.report_id, t.contact_id) == (TaskKind.fridge_restock, TaskMode.dispatch, 2, report.id, reporter)
    assert fx.waves == [(t.id, 1, NOW)]
    assert t.ends_at == NOW + timedelta(hours=4)
    idx = VolunteerIndex()
    with sessions() as s, s.begin():
        services.refresh_index(s, idx, now=NOW)
        out = services.run_wave(s, Effects(), task_id=t.id, wave=1, now=NOW, index=idx)
    assert out.offered == [wang, li, zhang]  # 2 places x fan-out 2, only three people

    acc, fx = _call(sessions, services.accept_offer, person_id=wang, task_id=t.id, now=NOW + timedelta(minutes=3))
    assert acc.status == "accepted" and acc.contact is not None and acc.contact.id == reporter
    assert fx.assignments and len(fx.deliveries) == 1
    with sessions() as s:
        assert s.get(Report, report.id).status == ReportStatus.taken
        taken = s.exec(select(Delivery).where(Delivery.purpose == "report_taken")).one()
        assert taken.person_id == reporter and taken.text.startswith(f"R{report.id} 已有1位志愿者接单：王**")
    assert _call(sessions, services.accept_offer, person_id=wang, task_id=t.id, now=NOW)[0].status == "already"
    assert _call(sessions, services.accept_offer, person_id=li, task_id=t.id, now=NOW + timedelta(minutes=4))[0].status == "accepted"
    # full: the third is thanked and told so; the offer was withdrawn
    assert _call(sessions, services.accept_offer, person_id=zhang, task_id=t.id, now=NOW)[0].status == "full"
    with sessions() as s:
        filled = s.exec(select(Delivery).where(Delivery.purpose == "report_filled")).one()
        assert "王**、李**" in filled.text
        assert s.get(Task, t.id).status == TaskStatus.filled

    # both work and check out: the task and the report are done, the reporter told once
    for pid in (wang, li):
        ci, _ = _call(sessions, services.check_in, person_id=pid, now=NOW + timedelta(minutes=30), lat=LAT + 0.0005, lng=LNG)
        assert ci.status == "checked_in" and ci.distance_m is not None and ci.distance_m < 100
    co, _ = _call(sessions, services.check_out, person_id=wang, now=NOW + timedelta(hours=2))
    assert (co.status, co.hours, co.hours_year) == ("checked_out", 1.5, 1.5)
    with sessions() as s:
        assert s.get(Task, t.id).status == TaskStatus.filled  # 李强 is still at work
    _call(sessions, services.check_out, person_id=li, now=NOW + timedelta(hours=9))  # capped: 4 h + 1 h
    with sessions() as s:
        assert s.get(Task, t.id).status == TaskStatus.done
        assert s.get(Report, report.id).status == ReportStatus.done
        done = s.exec(select(Delivery).where(Delivery.purpose == "report_done")).one()
        assert "共服务 6.5 小时" in done.text and done.person_id == reporter
        assert s.exec(select(Assignment.hours).where(Assignment.person_id == li)).one() == 5.0


def test_dementia_report_is_urgent() -> None:
    assert services.CATEGORY_KINDS["疑似走失老人"] == (TaskKind.dementia_outreach, Urgency.urgent)


def test_offer_answers(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        a, b, c = person(s, "王丽"), person(s, "李强"), person(s, "张敏")
        tid = task(s, grid=w.grid3, start=NOW, hours=2)
        assign(s, tid, a, AS.offered, expires_at=NOW + timedelta(minutes=30))
        assign(s, tid, b, AS.offered, expires_at=NOW + timedelta(minutes=30))
    assert _call(sessions, services.accept_offer, person_id=c, task_id=tid, now=NOW)[0].status == "not_offered"
    late = NOW + timedelta(minutes=31)
    assert _call(sessions, services.accept_offer, person_id=a, task_id=tid, now=late)[0].status == "expired"
    assert _call(sessions, services.decline_offer, person_id=b, task_id=tid, now=NOW)[0].status == "declined"
    assert _call(sessions, services.accept_offer, person_id=b, task_id=tid, now=NOW)[0].status == "declined_before"


def test_check_in_window_and_distance(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        p = person(s, "王丽")
        tid = task(s, grid=w.grid3, start=NOW + timedelta(hours=3), hours=2)
        assign(s, tid, p, AS.accepted)
    assert _call(sessions, services.check_in, person_id=p, now=NOW)[0].status == "nothing"  # 3 h early
    far, _ = _call(sessions, services.check_in, person_id=p, now=NOW + timedelta(hours=2, minutes=10), lat=LAT + 0.05, lng=LNG)
    assert far.status == "too_far" and far.distance_m > 5_000
    ok, fx = _call(sessions, services.check_in, person_id=p, now=NOW + timedelta(hours=2, minutes=10))
    assert ok.status == "checked_in" and fx.assignments == [ok.assignment.id]
    assert _call(sessions, services.check_in, person_id=p, now=NOW + timedelta(hours=3))[0].status == "already"
    assert _call(sessions, services.check_out, person_id=p + 1, now=NOW)[0].status == "nothing"


def test_my_summary_and_withdraw(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        p = person(s, "王丽")
        shift = task(s, grid=w.grid3, mode=TaskMode.signup, start=NOW + timedelta(days=1))
        offer = task(s, grid=w.grid3, start=NOW, hours=3)
        old = task(s, grid=w.grid3, start=NOW - timedelta(days=3))
        assign(s, shift, p, AS.accepted)
        assign(s, offer, p, AS.offered, expires_at=NOW + timedelta(minutes=20))
        assign(s, old, p, AS.completed, hours=2.5, checked_out_at=NOW - timedelta(days=3))
    with sessions() as s:
        mine = services.my_summary(s, person_id=p, now=NOW)
    assert [t.id for _, t in mine.upcoming] == [shift]
    assert [t.id for _, t in mine.offers] == [offer]
    assert mine.hours_year == 2.5
    n, fx = _call(sessions, services.withdraw_offers, person_id=p, now=NOW)
    assert n == 1 and fx.waves == [(offer, 1, NOW)]
    with sessions() as s:
        assert services.my_summary(s, person_id=p, now=NOW).offers == []


def test_open_shifts_nearest_first_with_my_status(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        p = person(s, "王丽")
        near = task(s, grid=w.grid3, mode=TaskMode.signup, start=NOW + timedelta(days=2), lat=LAT + 0.004, slots=2)
        far = task(s, grid=w.grid3, mode=TaskMode.signup, start=NOW + timedelta(days=1), lat=LAT + 0.02)
        task(s, grid=w.grid3, mode=TaskMode.signup, start=NOW + timedelta(days=9))  # beyond 7 days
        task(s, grid=w.grid3, mode=TaskMode.signup, start=NOW - timedelta(hours=1))  # past
        task(s, grid=w.grid3, mode=TaskMode.signup, start=NOW + timedelta(days=1), status=TaskStatus.cancelled)
        task(s, grid=w.grid3, start=NOW + timedelta(days=1))  # a dispatch task is not a shift
        assign(s, far, p, AS.accepted)
    with sessions() as s:
        me = s.get(Person, p)
        views = services.open_shifts(s, person=me, now=NOW)
        assert [v.task.id for v in views] == [near, far]
        assert views[0].open_slots == 2 and views[0].my_status is None and views[0].place == "东丰村"
        assert views[1].my_status == "accepted"
        assert 400 < views[0].distance_m < 500
        # from another position, the other one is nearer
        assert [v.task.id for v in services.open_shifts(s, person=me, now=NOW, lat=LAT + 0.02, lng=LNG)] == [far, near]


def test_coordinator_status(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        reporter = person(s, "陈网格", is_volunteer=False, is_grid_worker=True)
        short = task(s, grid=w.grid3, mode=TaskMode.signup, start=NOW + timedelta(days=2), slots=3)
        task(s, grid=w.hd_grid, mode=TaskMode.signup, start=NOW + timedelta(days=2), slots=3)  # another town
    _call(sessions, services.create_report, reporter_id=reporter, grid_id=w.grid3, category="独居老人帮扶",
          text="帮独居老人取药", lat=LAT, lng=LNG, urgency="routine", headcount=1, needed_by=None,
          now=NOW - timedelta(minutes=40))
    with sessions() as s:
        view = services.coordinator_status(s, scope_grid_id=w.jiangbei, now=NOW)
    assert [(r.report.category, r.age) for r in view.open_reports] == [("独居老人帮扶", timedelta(minutes=40))]
    assert [line.task.id for line in view.unfilled] == [short]
    assert [line.task.kind for line in view.today] == [TaskKind.elderly_visit]


def test_refresh_index_follows_the_watermark(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        a = person(s, "王丽", grid=w.grid3, skills={"first_aid": date(2027, 6, 30)})
        b = person(s, "李强", grid=w.grid3)
        person(s, "网格员", is_volunteer=False)
    idx = VolunteerIndex()
    with sessions() as s:
        assert services.refresh_index(s, idx, now=NOW) == 2
    va = idx.get(a)
    assert va is not None and va.units == (w.city, w.jiangbei, w.dongfeng, w.grid3)
    assert va.certs == (("first_aid", date(2027, 6, 30)),)
    with sessions() as s:  # b moves, a leaves
        pb, pa = s.get(Person, b), s.get(Person, a)
        pb.lat = LAT + 0.05
        pa.status = PersonStatus.left
        s.commit()
    with sessions() as s:
        assert services.refresh_index(s, idx, now=NOW) >= 2
    assert a not in idx and abs(idx.get(b).lat - (LAT + 0.05)) < 1e-9  # type: ignore[union-attr]


def test_exhausted_coordinators_include_city_not_other_towns(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s:
        w = build_world(s)
        town, city = coordinator(s, "江北协调", w.jiangbei), coordinator(s, "市协调", w.city)
        coordinator(s, "横店协调", w.hengdian)
        got = [c.id for c in services.coordinators_for(s, w.grid3)]
    assert sorted(got) == sorted([town, city])


def _load_bench(name: str):  # type: ignore[no-untyped-def]
    path = Path(__file__).resolve().parents[1] / "bench" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    sys.modules[spec.name] = mod  # type: ignore[union-attr]  # dataclasses look their module up
    spec.loader.exec_module(mod)  # type: ignore[union-attr]
    return mod


@pytest.mark.slow
def test_simulated_month_is_fairer_than_nearest_first() -> None:
    """bench/fairness.py's comparison on a smaller month (the full 500 tasks run in bench)."""
    fairness = _load_bench("fairness")
    ours, nearest = fairness.compare(seed=1, tasks=200, volunteers=1500)
    assert ours["placements"] == nearest["placements"] > 0
    assert ours["gini"] < nearest["gini"]
    assert ours["mean_distance_m"] <= 1.10 * nearest["mean_distance_m"]


def test_gini() -> None:
    fairness = _load_bench("fairness")
    assert fairness.gini([1, 1, 1, 1]) == 0.0
    assert abs(fairness.gini([0, 0, 0, 4]) - 0.75) < 1e-9
    assert DispatchPolicy().distance_band_m > 0  # ours is not the baseline
