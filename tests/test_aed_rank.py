"""Nearest-AED ranking (pure): in service only, open ones first, opening times."""

from __future__ import annotations

from datetime import time

from dispatcher.aed import AEDPoint, is_open, nearest, next_opening, parse_hours

GOV = (29.2785, 120.2282)


def _p(i: int, dlat: float, hours: str = "24h", in_service: bool = True) -> AEDPoint:
    return AEDPoint(i, f"AED{i}", GOV[0] + dlat, GOV[1], hours, in_service)


def test_hours() -> None:
    assert parse_hours("24h") is None
    assert is_open("08:00-17:00", time(9))
    assert not is_open("08:00-17:00", time(17))
    assert is_open("20:00-06:00", time(2))
    assert not is_open("20:00-06:00", time(12))
    assert is_open("08:00-12:00,14:00-18:00", time(15))
    assert next_opening("08:00-12:00,14:00-18:00", time(13)) == time(14)
    assert next_opening("08:00-17:00", time(20)) == time(8)


def test_nearest_three_in_service_open_first() -> None:
    pts = [
        _p(1, 0.0009),  # ~100 m
        _p(2, 0.0018, in_service=False),  # faulty: never listed
        _p(3, 0.0027, hours="08:00-17:00"),  # ~300 m, closed at night
        _p(4, 0.0045),  # ~500 m
        _p(5, 0.0090),  # ~1 km
        _p(6, 0.1),  # ~11 km
    ]
    day = nearest(pts, *GOV, time(10))
    assert [h.aed.id for h in day] == [1, 3, 4]
    assert 90 < day[0].distance_m < 110
    night = nearest(pts, *GOV, time(22))
    # the closed one drops behind open ones about as near, and says when it opens
    assert [h.aed.id for h in night] == [1, 4, 5]
    closed_only = nearest([_p(3, 0.0027, hours="08:00-17:00")], *GOV, time(22))
    assert closed_only[0].opens_at == time(8) and not closed_only[0].open_now
