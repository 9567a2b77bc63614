"""The spatial index returns exactly the brute-force answer, and stays current."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dispatcher.index import VolunteerIndex
from dispatcher.matching import Facts, TaskSpec, Volunteer, brute_force
from models.settings import DispatchPolicy

LAT, LNG = 29.2785, 120.2282
NOW = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)
KINDS = ["elderly_visit", "drill", "fridge_restock"]


@st.composite
def volunteers(draw: st.DrawFn) -> list[Volunteer]:
    n = draw(st.integers(0, 60))
    # a few shared spots make exact distance ties (the id must break them identically)
    spots = draw(st.lists(st.tuples(st.floats(-0.06, 0.06), st.floats(-0.06, 0.06)), min_size=1, max_size=8))
    out = []
    for i in range(1, n + 1):
        if draw(st.booleans()):
            dlat, dlng = draw(st.sampled_from(spots))
        else:
            dlat, dlng = draw(st.floats(-0.08, 0.08)), draw(st.floats(-0.08, 0.08))
        out.append(
            Volunteer(
                id=i,
                lat=LAT + dlat,
                lng=LNG + dlng,
                active=draw(st.booleans()) or draw(st.booleans()),
                subscribed=draw(st.booleans()) or draw(st.booleans()),
                kinds=frozenset(draw(st.lists(st.sampled_from(KINDS), max_size=3))),
                certs=tuple(draw(st.lists(st.tuples(st.just("first_aid"), st.sampled_from([None, date(2026, 1, 1), date(2027, 1, 1)])), max_size=1))),
                quiet=draw(st.sampled_from([None, (22 * 60, 7 * 60), (9 * 60, 11 * 60)])),
                units=(1, draw(st.integers(2, 3)), draw(st.integers(4, 6)), draw(st.integers(7, 12))),
            )
        )
    return out


facts_st = st.builds(
    Facts,
    recent_hours=st.floats(0, 30),
    recent_tasks=st.integers(0, 6),
    offers=st.integers(0, 10),
    accepts=st.integers(0, 10),
    shows=st.integers(0, 10),
    no_shows=st.integers(0, 3),
    beneficiaries=st.sampled_from([frozenset(), frozenset({"王奶奶"})]),
    busy=st.sampled_from([(), ((NOW + timedelta(hours=1), NOW + timedelta(hours=5)),)]),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    people=volunteers(),
    data=st.data(),
    res=st.sampled_from([7, 8, 9]),
    radius=st.floats(50, 12_000),
    limit=st.one_of(st.none(), st.integers(1, 12)),
    urgency=st.sampled_from(["routine", "urgent", "emergency"]),
)
def test_index_equals_brute_force(
    people: list[Volunteer], data: st.DataObject, res: int, radius: float, limit: int | None, urgency: str
) -> None:
    facts = {v.id: data.draw(facts_st) for v in people if data.draw(st.booleans())}
    task = TaskSpec(
        id=99,
        kind=data.draw(st.sampled_from(KINDS)),
        lat=LAT + data.draw(st.floats(-0.05, 0.05)),
        lng=LNG + data.draw(st.floats(-0.05, 0.05)),
        starts_at=NOW + timedelta(hours=2),
        ends_at=NOW + timedelta(hours=4),
        required_skills=data.draw(st.sampled_from([(), ("first_aid",)])),
        urgency=urgency,
        beneficiary=data.draw(st.sampled_from([None, "王奶奶"])),
        units=(1, 2, 4, 7),
        asked=frozenset(data.draw(st.lists(st.integers(1, 60), max_size=5))),
    )
    now = NOW + timedelta(minutes=data.draw(st.integers(0, 24 * 60)))
    policy = DispatchPolicy(distance_band_m=data.draw(st.sampled_from([0.0, 300.0, 2_000.0])))
    idx = VolunteerIndex(res=res)
    for v in people:
        idx.upsert(v)
    got = idx.search(task, facts=facts, policy=policy, now=now, radius_m=radius, limit=limit)
    want = brute_force(people, task, facts=facts, policy=policy, now=now, radius_m=radius, limit=limit)
    assert got == want


def _v(pid: int, lat: float, lng: float, **kw: object) -> Volunteer:
    return Volunteer(id=pid, lat=lat, lng=lng, kinds=frozenset({"drill"}), **kw)  # type: ignore[arg-type]


def _ids(idx: VolunteerIndex, radius: float = 1_000) -> list[int]:
    task = TaskSpec(id=1, kind="drill", lat=LAT, lng=LNG, starts_at=NOW, ends_at=NOW + timedelta(hours=1))
    return [r.person_id for r in idx.search(task, facts={}, policy=DispatchPolicy(), now=NOW, radius_m=radius)]


def test_index_tracks_moves_updates_and_leavers() -> None:
    idx = VolunteerIndex()
    idx.upsert(_v(1, LAT + 0.001, LNG))
    idx.upsert(_v(2, LAT + 0.05, LNG))  # ~5.5 km away
    assert _ids(idx) == [1]
    idx.upsert(_v(2, LAT - 0.002, LNG))  # moved near: found, and only once
    assert _ids(idx) == [1, 2]
    assert sum(len(b) for b in idx._buckets.values()) == 2
    idx.upsert(_v(1, LAT + 0.001, LNG, subscribed=False))  # an update, same cell
    assert _ids(idx) == [2]
    idx.remove(2)
    assert _ids(idx) == [] and len(idx) == 1 and 2 not in idx
    idx.remove(2)  # removing twice is harmless
    idx.remove(1)
    assert idx._buckets == {}


def test_near_is_a_superset_within_radius() -> None:
    idx = VolunteerIndex()
    for i in range(1, 41):
        idx.upsert(_v(i, LAT + (i - 20) * 0.001, LNG))  # a north-south line, 111 m apart
    near = {v.id for v in idx.near(LAT, LNG, 1_000)}
    assert {i for i in range(1, 41) if abs(i - 20) * 111.2 <= 990} <= near
    assert all(abs(i - 20) * 111.0 <= 1_020 for i in near)
