"""AED registry import from CSV or GeoJSON, with the coordinate datum named by the caller.

Rows are validated first; a file with any bad row changes nothing and the report says which
rows and why. AEDs are matched by name + address, so importing the same file again updates
instead of duplicating.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any, Literal

from sqlmodel import Session, select

from dispatcher.aed import parse_hours
from dispatcher.geo import cell, gcj02_to_wgs84
from dispatcher.places import grid_at
from models.tables import AED, AEDStatus

Datum = Literal["wgs84", "gcj02"]
# Dongyang and a margin: a point outside is almost always swapped lat/lng or the wrong datum
BOUNDS = (28.9, 29.5, 120.0, 120.75)
_STATUS = {
    "in_service": AEDStatus.in_service, "正常": AEDStatus.in_service, "在用": AEDStatus.in_service,
    "faulty": AEDStatus.faulty, "故障": AEDStatus.faulty,
    "retired": AEDStatus.retired, "停用": AEDStatus.retired, "报废": AEDStatus.retired,
}  # fmt: skip


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # (row number, reason)

    @property
    def ok(self) -> bool:
        return not self.errors


def _records(data: bytes, fmt: str) -> list[dict[str, Any]]:
    if fmt == "geojson":
        doc = json.loads(data.decode("utf-8-sig"))
        out = []
        for feat in doc.get("features", []):
            props = dict(feat.get("properties") or {})
            geom = feat.get("geometry") or {}
            if geom.get("type") == "Point" and len(geom.get("coordinates", [])) >= 2:
                props["lng"], props["lat"] = geom["coordinates"][0], geom["coordinates"][1]
            out.append(props)
        return out
    return list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"))))


def _validate(rec: dict[str, Any], datum: Datum) -> dict[str, Any]:
    name = str(rec.get("name") or "").strip()
    if not name:
        raise ValueError("缺少名称 name")
    try:
        lat, lng = float(rec["lat"]), float(rec["lng"])
    except (KeyError, TypeError, ValueError):
        raise ValueError("经纬度 lat/lng 不是数字") from None
    if datum == "gcj02":
        lat, lng = gcj02_to_wgs84(lat, lng)
    if not (BOUNDS[0] <= lat <= BOUNDS[1] and BOUNDS[2] <= lng <= BOUNDS[3]):
        raise ValueError(f"位置 {lat:.5f},{lng:.5f} 不在东阳市范围内（经纬度写反了？）")
    hours = str(rec.get("hours") or "24h").strip()
    if hours not in ("24h", "全天", "24小时") and parse_hours(hours) is None:
        raise ValueError(f"开放时间「{hours}」应为 24h 或 08:00-17:00")
    status_text = str(rec.get("status") or "in_service").strip()
    if status_text not in _STATUS:
        raise ValueError(f"状态「{status_text}」应为 in_service / faulty / retired")
    inspected = str(rec.get("last_inspected") or "").strip()
    try:
        last = date.fromisoformat(inspected) if inspected else None
    except ValueError:
        raise ValueError(f"巡检日期「{inspected}」应为 2026-11-30 格式") from None
    return {
        "name": name[:100],
        "address": str(rec.get("address") or "").strip()[:200],
        "lat": lat,
        "lng": lng,
        "hours": hours,
        "status": _STATUS[status_text],
        "keeper": str(rec.get("keeper") or "").strip()[:64],
        "last_inspected_on": last,
    }


def import_aeds(session: Session, data: bytes, *, fmt: Literal["csv", "geojson"], datum: Datum) -> ImportReport:
    """Validate every row, then write all of them (or, with any error, none)."""
    report = ImportReport()
    try:
        records = _records(data, fmt)
    except (ValueError, UnicodeDecodeError) as exc:
        report.errors.append((0, f"文件无法读取：{exc}"))
        return report
    clean: list[dict[str, Any]] = []
    for i, rec in enumerate(records, start=2 if fmt == "csv" else 1):  # CSV row 1 is the header
        try:
            clean.append(_validate(rec, datum))
        except ValueError as exc:
            report.errors.append((i, str(exc)))
    if report.errors:
        return report
    for row in clean:
        existing = session.exec(select(AED).where(AED.name == row["name"], AED.address == row["address"])).first()
        grid = grid_at(session, lat=row["lat"], lng=row["lng"])
        target = existing or AED(name=row["name"], lat=row["lat"], lng=row["lng"], h3="")
        for key, value in row.items():
            setattr(target, key, value)
        target.h3 = cell(row["lat"], row["lng"])
        target.grid_id = grid.id if grid else None
        session.add(target)
        if existing:
            report.updated += 1
        else:
            report.created += 1
    session.flush()
    return report


def import_file(session: Session, path: Path, *, datum: Datum) -> ImportReport:
    fmt: Literal["csv", "geojson"] = "geojson" if path.suffix.lower() in (".geojson", ".json") else "csv"
    return import_aeds(session, path.read_bytes(), fmt=fmt, datum=datum)
