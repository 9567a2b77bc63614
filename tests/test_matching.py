"""Hard filters and ranking rules of dispatcher/matching.py (pure; no database).

Each filter test checks a volunteer who passes everything, and the same volunteer with one
thing changed: if the rule were removed, the second would be offered and the test fails.
Each ranking test puts the rule against distance (the favoured person is a little farther),
so without the rule the order flips.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from dispatcher.matching import (
    Facts,
    TaskSpec,
    Volunteer,
    brute_force,
    eligible,
    geodesic_m,
    in_quiet_hours,
    max_bonus,
    missing_skills,
    week_start,
)
from models.settings import DispatchPolicy

LAT, LNG = 29.2785, 120.2282
NOW = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)  # Wednesday 10:00 in Shanghai
POLICY = DispatchPolicy()
M_PER_DEG = 111_195.0
UNITS = (1, 2, 3, 4)  # city, town, village, grid of the task


def vol(pid: int, north_m: float = 500.0, **kw: object) -> Volunteer:
    base = dict(
        id=pid,
        lat=LAT + north_m / M_PER_DEG,
        lng=LNG,
        kinds=frozenset({"elderly_visit", "emergency"}),
        units=(1, 9, 10, 11),  # same city only: no locality bonus unless a test asks
    )
    base.update(kw)
    return Volunteer(**base)  # type: ignore[arg-type]


def spec(**kw: object) -> TaskSpec:
    base = dict(
        id=1,
        kind="elderly_visit",
        lat=LAT,
        lng=LNG,
        starts_at=NOW + timedelta(hours=2),
        ends_at=NOW + timedelta(hours=4),
        units=UNITS,
    )
    base.update(kw)
    return TaskSpec(**base)  # type: ignore[arg-type]


def offered(vs: list[Volunteer], task: TaskSpec, facts: dict[int, Facts] | None = None, now: datetime = NOW) -> list[int]:
    return [r.person_id for r in brute_force(vs, task, facts=facts or {}, policy=POLICY, now=now, radius_m=5_000)]


# --- hard filters ---------------------------------------------------------------------------


def test_filter_active() -> None:
    assert offered([vol(1), vol(2, active=False)], spec()) == [1]


def test_filter_subscribed() -> None:
    assert offered([vol(1), vol(2, subscribed=False)], spec()) == [1]


def test_filter_opted_in_kind() -> None:
    assert offered([vol(1), vol(2, kinds=frozenset({"drill"}))], spec()) == [1]


def test_filter_skills_with_valid_certificates() -> None:
    t = spec(required_skills=("first_aid",))  # starts 2026-12-02 (Shanghai)
    people = [
        vol(1, certs=(("first_aid", date(2027, 6, 30)),)),
        vol(2, certs=(("first_aid", date(2026, 12, 2)),)),  # valid on the day itself
        vol(3, certs=(("first_aid", None),)),  # no expiry
        vol(4, certs=(("first_aid", date(2026, 12, 1)),)),  # expired the day before
        vol(5, certs=(("driver", None),)),  # another skill
        vol(6),
    ]
    assert sorted(offered(people, t)) == [1, 2, 3]
    assert missing_skills([("first_aid", date(2026, 12, 1))], ["first_aid", "aed"], date(2026, 12, 2)) == [
        "first_aid",
        "aed",
    ]


def test_filter_no_overlapping_assignment() -> None:
    t = spec()
    facts = {
        2: Facts(busy=((t.starts_at + timedelta(hours=1), t.ends_at + timedelta(hours=1)),)),
        3: Facts(busy=((t.ends_at, t.ends_at + timedelta(hours=1)),)),  # back to back is fine
    }
    assert sorted(offered([vol(1), vol(2), vol(3)], t, facts)) == [1, 3]


def test_filter_weekly_load_cap() -> None:
    t = spec()  # 2 hours; the default cap is 12 hours a week
    monday = week_start(t.starts_at)
    facts = {
        2: Facts(load=((monday + timedelta(hours=9), 10.5),)),  # 10.5 + 2 > 12
        3: Facts(load=((monday - timedelta(days=1), 10.5),)),  # last week's hours do not count
        4: Facts(load=((monday + timedelta(hours=9), 10.0),)),  # exactly at the cap
    }
    assert sorted(offered([vol(1), vol(2), vol(3), vol(4)], t, facts)) == [1, 3, 4]
    # a personal cap replaces the default
    assert offered([vol(5, weekly_cap_hours=1.5)], t) == []


def test_filter_quiet_hours_except_emergencies() -> None:
    night = datetime(2026, 12, 2, 15, 0, tzinfo=UTC)  # 23:00 in Shanghai
    quiet = (22 * 60, 7 * 60)
    assert offered([vol(1), vol(2, quiet=quiet)], spec(), now=night) == [1]
    emergency = spec(kind="emergency", urgency="emergency")
    assert sorted(offered([vol(1), vol(2, quiet=quiet)], emergency, now=night)) == [1, 2]
    # 10:00 is outside 22:00-07:00
    assert sorted(offered([vol(1), vol(2, quiet=quiet)], spec())) == [1, 2]


@given(st.integers(0, 1439), st.integers(0, 1439), st.integers(0, 1439))
def test_quiet_hours_wrap_midnight(start: int, end: int, minute: int) -> None:
    now = datetime(2026, 12, 1, 16, 0, tzinfo=UTC) + timedelta(minutes=minute)  # 00:00 Shanghai + minute
    got = in_quiet_hours((start, end), now)
    if start == end:
        assert not got
    elif start < end:
        assert got == (start <= minute < end)
    else:
        assert got == (minute >= start or minute < end)


def test_filter_not_asked_before() -> None:
    assert offered([vol(1), vol(2)], spec(asked=frozenset({2}))) == [1]


def test_filter_radius() -> None:
    assert offered([vol(1, 4_900), vol(2, 5_100)], spec()) == [1]


# --- ranking --------------------------------------------------------------------------------


def test_rank_distance() -> None:
    # the farther person has the smaller id: without distance, the id tie-break would win
    assert offered([vol(1, 3_000), vol(2, 1_000)], spec()) == [2, 1]


def test_rank_fairness() -> None:
    facts = {1: Facts(recent_tasks=3, recent_hours=6.0), 2: Facts()}
    assert offered([vol(1, 500), vol(2, 600)], spec(), facts) == [2, 1]
    # and not beyond the band: someone far away does not overtake for being rested
    assert offered([vol(1, 500), vol(2, 500 + max_bonus(spec(), POLICY) + 1)], spec(), facts) == [1, 2]


def test_rank_reliability() -> None:
    facts = {
        1: Facts(offers=10, accepts=2, shows=1, no_shows=1),
        2: Facts(offers=10, accepts=9, shows=9, no_shows=0),
    }
    assert offered([vol(1, 500), vol(2, 560)], spec(), facts) == [2, 1]


def test_rank_continuity() -> None:
    t = spec(beneficiary="东丰村 王奶奶")
    facts = {2: Facts(beneficiaries=frozenset({"东丰村 王奶奶"}))}
    assert offered([vol(1, 500), vol(2, 650)], t, facts) == [2, 1]
    assert offered([vol(1, 500), vol(2, 650)], spec(), facts) == [1, 2]  # other beneficiary


def test_rank_locality_grid_then_village_then_town() -> None:
    people = [
        vol(1, 500),  # only the city in common
        vol(2, 540, units=(1, 2, 20, 21)),  # same town
        vol(3, 580, units=(1, 2, 3, 22)),  # same village
        vol(4, 620, units=UNITS),  # same grid
    ]
    assert offered(people, spec()) == [4, 3, 2, 1]


def test_emergency_ranks_by_distance_alone() -> None:
    facts = {1: Facts(recent_tasks=5, recent_hours=10.0)}
    t = spec(kind="emergency", urgency="emergency")
    assert offered([vol(1, 300, units=(1, 9, 9, 9)), vol(2, 320, units=UNITS)], t, facts) == [1, 2]


distances = st.floats(0, 4_000, allow_nan=False)
fact_st = st.builds(
    Facts,
    recent_hours=st.floats(0, 40),
    recent_tasks=st.integers(0, 10),
    offers=st.integers(0, 20),
    accepts=st.integers(0, 20),
    shows=st.integers(0, 20),
    no_shows=st.integers(0, 5),
)


@settings(max_examples=200, deadline=None)
@given(distances, distances, fact_st, fact_st)
def test_distance_dominates_beyond_the_band(d1: float, d2: float, f1: Facts, f2: Facts) -> None:
    a, b = vol(1, d1), vol(2, d2)
    got = offered([a, b], spec(), {1: f1, 2: f2})
    da = geodesic_m(LAT, LNG, a.lat, a.lng)
    db = geodesic_m(LAT, LNG, b.lat, b.lng)
    if db - da > max_bonus(spec(), POLICY):
        assert got == [1, 2]
    elif da - db > max_bonus(spec(), POLICY):
        assert got == [2, 1]
    # with equal records, the nearer always goes first
    same = offered([a, replace(b)], spec(), {1: f1, 2: f1})
    assert same == ([1, 2] if (da, 1) < (db, 2) else [2, 1])


def test_eligible_is_static_and_facts() -> None:
    assert eligible(vol(1), Facts(), spec(), POLICY, NOW)
    assert not eligible(vol(1), Facts(), spec(asked=frozenset({1})), POLICY, NOW)


@settings(max_examples=300, deadline=None)
@given(st.floats(28.8, 29.6), st.floats(119.9, 120.7), st.floats(28.8, 29.6), st.floats(119.9, 120.7))
def test_distance_is_geopys_geodesic(lat1: float, lng1: float, lat2: float, lng2: float) -> None:
    """dispatcher.geo.distance_m runs PROJ's C port of Karney's algorithm; geopy's geodesic
    (the same algorithm in Python) is the reference it must match."""
    from geopy.distance import geodesic

    from dispatcher.geo import distance_m

    assert abs(distance_m(lat1, lng1, lat2, lng2) - geodesic((lat1, lng1), (lat2, lng2)).meters) < 1e-6
