"""AED registry import: datums, validation (a bad file changes nothing), re-import updates."""

from __future__ import annotations

import json

from sqlmodel import select

from dispatcher.geo import distance_m, wgs84_to_gcj02
from models import AED, AEDStatus
from redgrid.aeds import import_aeds

CSV = (
    "name,address,lat,lng,hours,status,keeper,last_inspected\n"
    "东阳市人民政府一楼大厅,江北街道吴宁西路8号,29.2787,120.2284,24h,in_service,办公室,2026-11-01\n"
    "江北街道社区卫生服务中心,江北街道,29.2840,120.2290,08:00-17:00,故障,护士站,\n"
)


def test_csv_wgs84(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s, s.begin():
        rep = import_aeds(s, CSV.encode(), fmt="csv", datum="wgs84")
        assert rep.ok and rep.created == 2
    with sessions() as s:
        rows = {a.name: a for a in s.exec(select(AED))}
        gov = rows["东阳市人民政府一楼大厅"]
        assert (gov.lat, gov.lng) == (29.2787, 120.2284) and gov.h3 and gov.hours == "24h"
        assert str(gov.last_inspected_on) == "2026-11-01"
        assert rows["江北街道社区卫生服务中心"].status == AEDStatus.faulty


def test_geojson_gcj02_converted_to_wgs84(sessions) -> None:  # type: ignore[no-untyped-def]
    wgs = (29.2787, 120.2284)
    glat, glng = wgs84_to_gcj02(*wgs)
    doc = {"type": "FeatureCollection", "features": [{
        "type": "Feature", "geometry": {"type": "Point", "coordinates": [glng, glat]},
        "properties": {"name": "政府大厅", "hours": "24h"}}]}  # fmt: skip
    with sessions() as s, s.begin():
        assert import_aeds(s, json.dumps(doc).encode(), fmt="geojson", datum="gcj02").ok
    with sessions() as s:
        a = s.exec(select(AED)).one()
        assert distance_m(a.lat, a.lng, *wgs) < 0.5  # converted back to within half a metre
        assert distance_m(glat, glng, *wgs) > 100  # the datums really differ here


def test_bad_rows_reported_and_nothing_written(sessions) -> None:  # type: ignore[no-untyped-def]
    bad = CSV + "没有坐标,,,,24h,,,\n反了,,120.2,29.2,24h,,,\n怪时间,,29.27,120.23,早上,,,\n"
    with sessions() as s, s.begin():
        rep = import_aeds(s, bad.encode(), fmt="csv", datum="wgs84")
        assert not rep.ok
        assert [r for r, _ in rep.errors] == [4, 5, 6]
        assert "不在东阳市范围内" in rep.errors[1][1]
    with sessions() as s:
        assert s.exec(select(AED)).all() == []


def test_reimport_updates(sessions) -> None:  # type: ignore[no-untyped-def]
    with sessions() as s, s.begin():
        import_aeds(s, CSV.encode(), fmt="csv", datum="wgs84")
    changed = CSV.replace("08:00-17:00,故障", "07:30-18:00,正常")
    with sessions() as s, s.begin():
        rep = import_aeds(s, changed.encode(), fmt="csv", datum="wgs84")
        assert rep.created == 0 and rep.updated == 2
    with sessions() as s:
        rows = s.exec(select(AED)).all()
        assert len(rows) == 2
        clinic = next(a for a in rows if a.name == "江北街道社区卫生服务中心")
        assert clinic.hours == "07:30-18:00" and clinic.status == AEDStatus.in_service
