"""Volunteer roster import (CSV/XLSX) and service-hours export (CSV/XLSX).

Import is all or nothing: every row is checked first (required fields, phone format,
duplicates in the file and in the database, grid codes inside the importer's scope, skills
and their expiry dates), and only a file without a single error is written, in the caller's
one transaction. The report says, row by row, what was wrong.

Plain functions taking a session; the console and the ``redgrid import``/``export`` commands
both call them.
"""

from __future__ import annotations

import csv
import io
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import insert
from sqlmodel import Session, col, select

from dispatcher.geo import cell
from models.tables import (
    Assignment,
    AssignmentStatus,
    AuditEntry,
    Certificate,
    GridUnit,
    Level,
    Person,
    PersonStatus,
    TaskKind,
)

PHONE = re.compile(r"^1[3-9]\d{9}$")
MAX_ROWS = 5000
SKILL_NAMES = {"first_aid": "救护员证", "aed": "AED培训", "driver": "驾驶", "medical": "医护",
               "psych": "心理支持", "water": "净水设备"}
KIND_NAMES = {"checkpoint": "卡口值守", "drill": "应急演练", "fridge_restock": "爱心冰柜补货",
              "dementia_outreach": "关爱阿尔兹海默症走访", "first_aid_cover": "急救保障", "training": "救护培训",
              "publicity": "宣传活动", "elderly_visit": "独居老人帮扶", "emergency": "紧急救助", "other": "志愿服务"}
# accepted headers -> field
HEADERS = {
    "name": "name", "姓名": "name",
    "phone": "phone", "手机": "phone", "手机号": "phone", "电话": "phone",
    "grid_code": "grid_code", "grid": "grid_code", "网格编码": "grid_code", "网格": "grid_code",
    "skills": "skills", "技能": "skills",
    "kinds": "kinds", "服务类别": "kinds",
    "openid": "openid",
}
FIELD_LABEL = {"name": "姓名", "phone": "手机", "grid_code": "网格编码", "skills": "技能", "kinds": "服务类别",
               "openid": "openid", "file": "文件"}
_SPLIT = re.compile(r"[;；,，、\s]+")


class RosterFileError(ValueError):
    """The file cannot be read as a table at all."""


@dataclass(frozen=True)
class RowError:
    row: int  # the spreadsheet row number (the header is row 1)
    field: str
    message: str

    @property
    def label(self) -> str:
        return FIELD_LABEL.get(self.field, self.field)


@dataclass
class NewVolunteer:
    row: int
    name: str
    phone: str
    grid: GridUnit
    skills: list[tuple[str, date | None]]
    kinds: list[str]
    openid: str | None


@dataclass
class ImportReport:
    rows: int
    created: int = 0
    errors: list[RowError] = field(default_factory=list)
    person_ids: list[int] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def error_rows(self) -> list[int]:
        return sorted({e.row for e in self.errors})


# --- reading -----------------------------------------------------------------------------------


def read_table(data: bytes, filename: str) -> list[dict[str, str]]:
    """Rows of a CSV (UTF-8, with or without BOM, or GB18030 as Excel in China saves it) or an
    XLSX's first sheet, keyed by the normalized header."""
    name = filename.lower()
    if name.endswith(".xlsx"):
        rows = _xlsx_rows(data)
    elif name.endswith(".csv") or name.endswith(".txt"):
        rows = _csv_rows(data)
    else:
        raise RosterFileError("只支持 .csv 或 .xlsx 文件")
    if not rows:
        raise RosterFileError("文件是空的")
    header = [HEADERS.get(str(h or "").strip().lower(), HEADERS.get(str(h or "").strip(), "")) for h in rows[0]]
    missing = [FIELD_LABEL[f] for f in ("name", "phone", "grid_code") if f not in header]
    if missing:
        raise RosterFileError("缺少列：" + "、".join(missing))
    out: list[dict[str, str]] = []
    for raw in rows[1:]:
        cells = [("" if c is None else str(c)).strip() for c in raw]
        if not any(cells):
            out.append({})  # a blank line keeps its row number, and is skipped
            continue
        out.append({h: cells[i] if i < len(cells) else "" for i, h in enumerate(header) if h})
    if len(out) > MAX_ROWS:
        raise RosterFileError(f"一次最多导入{MAX_ROWS}行")
    return out


def _csv_rows(data: bytes) -> list[list[str]]:
    for enc in ("utf-8-sig", "gb18030"):
        try:
            text = data.decode(enc)
            break
        except UnicodeDecodeError:
            continue
    else:  # pragma: no cover - gb18030 decodes any byte string
        raise RosterFileError("无法识别文件编码")
    return [row for row in csv.reader(io.StringIO(text))]


def _xlsx_rows(data: bytes) -> list[list[Any]]:
    from zipfile import BadZipFile

    from openpyxl import load_workbook

    try:
        wb = load_workbook(io.BytesIO(data), read_only=True, data_only=True)
    except (BadZipFile, OSError, KeyError, ValueError) as exc:
        raise RosterFileError("不是有效的 .xlsx 文件") from exc
    try:
        ws = wb.worksheets[0]
        rows: list[list[Any]] = []
        for r in ws.iter_rows(values_only=True):
            rows.append([_xlsx_cell(c) for c in r])
        return rows
    finally:
        wb.close()


def _xlsx_cell(c: Any) -> Any:
    if isinstance(c, float) and c.is_integer():
        return str(int(c))  # a phone typed as a number
    if isinstance(c, datetime):
        return c.date().isoformat()
    if isinstance(c, date):
        return c.isoformat()
    return c


# --- validating --------------------------------------------------------------------------------


def _lookup(names: dict[str, str]) -> dict[str, str]:
    out = {k: k for k in names}
    out.update({v: k for k, v in names.items()})
    return out


def parse_skills(text: str, today: date) -> tuple[list[tuple[str, date | None]], str | None]:
    """"救护员证:2027-06-30、驾驶" -> [("first_aid", date), ("driver", None)]."""
    known = _lookup(SKILL_NAMES)
    out: list[tuple[str, date | None]] = []
    for part in _SPLIT.split(text.strip()):
        if not part:
            continue
        label, _, exp = part.replace("：", ":").partition(":")
        code = known.get(label.strip()) or known.get(label.strip().lower())
        if code is None:
            return [], f"未知技能「{label}」"
        expires = None
        if exp.strip():
            try:
                expires = date.fromisoformat(exp.strip().replace("/", "-"))
            except ValueError:
                return [], f"「{label}」的有效期不是日期（如 2027-06-30）"
            if expires < today:
                return [], f"「{label}」已过期（{expires.isoformat()}）"
        if code in {c for c, _ in out}:
            continue
        out.append((code, expires))
    return out, None


def parse_kinds(text: str) -> tuple[list[str], str | None]:
    if not text.strip():
        return [k.value for k in TaskKind], None  # opted in to everything until they choose
    known = _lookup(KIND_NAMES)
    out: list[str] = []
    for part in _SPLIT.split(text.strip()):
        if not part:
            continue
        code = known.get(part) or known.get(part.lower())
        if code is None:
            return [], f"未知服务类别「{part}」"
        if code not in out:
            out.append(code)
    return out, None


def validate_rows(session: Session, rows: Sequence[dict[str, str]], *, scope_path: str | None,
                  today: date) -> tuple[list[NewVolunteer], list[RowError]]:
    """Check every row; nothing is written here."""
    errors: list[RowError] = []
    good: list[NewVolunteer] = []
    phones = [r.get("phone", "") for r in rows]
    openids = [r.get("openid", "") for r in rows if r.get("openid")]
    codes = {r.get("grid_code", "") for r in rows}
    taken_phones = set(session.exec(select(Person.phone).where(col(Person.phone).in_([p for p in phones if p])))) \
        if any(phones) else set()
    taken_openids = set(session.exec(select(Person.openid).where(col(Person.openid).in_(openids)))) if openids else set()
    grids = {u.code: u for u in session.exec(select(GridUnit).where(col(GridUnit.code).in_(codes)))} if codes else {}
    seen_phone: dict[str, int] = {}
    seen_openid: dict[str, int] = {}
    for i, r in enumerate(rows, start=2):
        if not r:
            continue
        row_errors: list[RowError] = []
        name = r.get("name", "")
        if not name:
            row_errors.append(RowError(i, "name", "姓名为空"))
        elif len(name) > 64:
            row_errors.append(RowError(i, "name", "姓名超过64字"))
        phone = re.sub(r"[\s-]", "", r.get("phone", ""))
        if not PHONE.match(phone):
            row_errors.append(RowError(i, "phone", f"手机号「{phone or '空'}」格式不对（应为11位，1开头）"))
        elif phone in seen_phone:
            row_errors.append(RowError(i, "phone", f"与第{seen_phone[phone]}行手机号重复"))
        elif phone in taken_phones:
            row_errors.append(RowError(i, "phone", "该手机号已在花名册中"))
        else:
            seen_phone[phone] = i
        code = r.get("grid_code", "")
        grid = grids.get(code)
        if grid is None:
            row_errors.append(RowError(i, "grid_code", f"网格编码「{code or '空'}」不存在"))
        elif grid.level != Level.grid:
            row_errors.append(RowError(i, "grid_code", f"「{code}」是{grid.name}，不是网格"))
        elif scope_path is not None and not grid.path.startswith(scope_path):
            row_errors.append(RowError(i, "grid_code", f"网格「{grid.name}」不在您的管理范围内"))
        skills, why = parse_skills(r.get("skills", ""), today)
        if why:
            row_errors.append(RowError(i, "skills", why))
        kinds, why = parse_kinds(r.get("kinds", ""))
        if why:
            row_errors.append(RowError(i, "kinds", why))
        openid = r.get("openid", "") or None
        if openid:
            if len(openid) > 64:
                row_errors.append(RowError(i, "openid", "openid 过长"))
            elif openid in seen_openid:
                row_errors.append(RowError(i, "openid", f"与第{seen_openid[openid]}行 openid 重复"))
            elif openid in taken_openids:
                row_errors.append(RowError(i, "openid", "该 openid 已注册"))
            else:
                seen_openid[openid] = i
        if row_errors:
            errors += row_errors
        else:
            assert grid is not None
            good.append(NewVolunteer(i, name, phone, grid, skills, kinds, openid))
    return good, errors


# --- importing ---------------------------------------------------------------------------------


def import_volunteers(session: Session, *, data: bytes, filename: str, actor_id: int | None,
                      scope_path: str | None, now: datetime, tz: str = "Asia/Shanghai") -> ImportReport:
    """Validate the whole file, then (only if every row is good) add the volunteers inside the
    caller's transaction. ``scope_path``: a coordinator's subtree (None: anywhere)."""
    try:
        rows = read_table(data, filename)
    except RosterFileError as exc:
        return ImportReport(rows=0, errors=[RowError(1, "file", str(exc))])
    today = now.astimezone(ZoneInfo(tz)).date()
    good, errors = validate_rows(session, rows, scope_path=scope_path, today=today)
    report = ImportReport(rows=sum(1 for r in rows if r), errors=errors)
    if errors:
        return report
    if not good:
        report.errors.append(RowError(1, "file", "文件里没有志愿者"))
        return report
    result = session.execute(
        insert(Person).returning(Person.id, sort_by_parameter_order=True),  # type: ignore[call-overload]
        [{"openid": v.openid, "name": v.name, "phone": v.phone, "is_volunteer": True, "is_grid_worker": False,
          "is_coordinator": False, "coordinator_scope_id": None, "home_grid_id": v.grid.id,
          "lat": v.grid.lat, "lng": v.grid.lng, "h3": cell(v.grid.lat, v.grid.lng), "share_live_location": False,
          "kinds": v.kinds, "status": PersonStatus.active, "subscribed": True, "created_at": now,
          "updated_at": now} for v in good],
    )
    ids = [int(pid) for (pid,) in result]
    certs = [{"person_id": pid, "skill": s, "expires_on": exp}
             for pid, v in zip(ids, good, strict=True) for s, exp in v.skills]
    if certs:
        session.execute(insert(Certificate), certs)
    session.execute(insert(AuditEntry), [
        {"actor_id": actor_id, "action": "person.import", "entity": "person", "entity_id": pid,
         "detail": {"file": filename[:100], "row": v.row}, "at": now}
        for pid, v in zip(ids, good, strict=True)
    ])
    session.add(AuditEntry(actor_id=actor_id, action="roster.import", entity="roster", entity_id=None,
                           detail={"file": filename[:100], "created": len(ids)}, at=now))
    session.flush()
    report.created, report.person_ids = len(ids), ids
    return report


# --- exporting ---------------------------------------------------------------------------------

TOWN_HEADER = ["月份", "镇街", "服务人数", "服务次数", "服务时长(小时)"]
PERSON_HEADER = ["月份", "镇街", "姓名", "手机", "服务次数", "服务时长(小时)"]


def month_bounds(month: str, tz: str) -> tuple[datetime, datetime]:
    """"2025-06" -> the month's start and the next month's start, on the local clock."""
    m = re.fullmatch(r"(\d{4})-(\d{1,2})", month.strip())
    if not m or not 1 <= int(m.group(2)) <= 12:
        raise ValueError(f"month must be YYYY-MM, not {month!r}")
    y, mo = int(m.group(1)), int(m.group(2))
    zone = ZoneInfo(tz)
    start = datetime(y, mo, 1, tzinfo=zone)
    end = datetime(y + (mo == 12), 1 if mo == 12 else mo + 1, 1, tzinfo=zone)
    return start, end


@dataclass
class HoursExport:
    month: str
    towns: list[list[Any]]  # TOWN_HEADER rows, with a total row last
    people: list[list[Any]]  # PERSON_HEADER rows


def _mask(phone: str | None) -> str:
    return f"{phone[:3]}****{phone[-4:]}" if phone and len(phone) >= 7 else ""


def hours_by_town(session: Session, *, month: str, scope_path: str | None, tz: str = "Asia/Shanghai") -> HoursExport:
    """Completed service in the month (by check-out time, as the volunteers' yearly hours are
    counted), credited to each volunteer's home town; phones masked."""
    start, end = month_bounds(month, tz)
    stmt = (
        select(Person.id, Person.name, Person.phone, GridUnit.path, Assignment.hours)  # type: ignore[call-overload]
        .join(Person, col(Person.id) == col(Assignment.person_id))
        .join(GridUnit, col(GridUnit.id) == col(Person.home_grid_id), isouter=True)
        .where(Assignment.status == AssignmentStatus.completed, col(Assignment.checked_out_at) >= start,
               col(Assignment.checked_out_at) < end)
    )
    if scope_path is not None:
        stmt = stmt.where(col(GridUnit.path).startswith(scope_path))
    towns = {int(u.id or 0): u.name for u in session.exec(select(GridUnit).where(GridUnit.level == Level.town))}
    per_person: dict[int, list[Any]] = {}
    for pid, name, phone, path, hours in session.exec(stmt).all():
        ids = [p for p in (path or "").split("/") if p]
        town = towns.get(int(ids[1]), "") if len(ids) >= 2 else "（未分配）"
        row = per_person.setdefault(pid, [month, town, name, _mask(phone), 0, 0.0])
        row[4] += 1
        row[5] = round(row[5] + float(hours or 0), 1)
    by_town: dict[str, list[Any]] = defaultdict(lambda: [0, 0, 0.0])
    for r in per_person.values():
        t = by_town[r[1]]
        t[0] += 1
        t[1] += r[4]
        t[2] = round(t[2] + r[5], 1)
    town_rows = [[month, t, *v] for t, v in sorted(by_town.items(), key=lambda kv: -kv[1][2])]
    total = [month, "合计", sum(r[2] for r in town_rows), sum(r[3] for r in town_rows),
             round(sum(r[4] for r in town_rows), 1)]
    people = sorted(per_person.values(), key=lambda r: (r[1], -r[5], r[2]))
    return HoursExport(month, [*town_rows, total], people)


def _safe(v: Any) -> Any:
    # a cell starting with = + - @ would run as a formula in a spreadsheet (CSV injection)
    if isinstance(v, str) and v[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + v
    return v


def to_csv(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> bytes:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    for r in rows:
        w.writerow([_safe(v) for v in r])
    return ("\ufeff" + buf.getvalue()).encode()  # the BOM makes Excel read UTF-8 Chinese


def to_xlsx(sheets: Sequence[tuple[str, Sequence[str], Iterable[Sequence[Any]]]]) -> bytes:
    from openpyxl import Workbook

    wb = Workbook()
    wb.remove(wb.active)  # type: ignore[arg-type]
    for title, header, rows in sheets:
        ws = wb.create_sheet(title)
        ws.append(list(header))
        for r in rows:
            ws.append([_safe(v) for v in r])
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


def export_hours(session: Session, *, month: str, fmt: str, scope_path: str | None, by: str = "town",
                 tz: str = "Asia/Shanghai") -> tuple[bytes, str, str]:
    """(file bytes, file name, content type). CSV holds one table (``by`` town or person);
    XLSX holds both, one sheet each."""
    data = hours_by_town(session, month=month, scope_path=scope_path, tz=tz)
    if fmt == "csv":
        body = to_csv(TOWN_HEADER, data.towns) if by == "town" else to_csv(PERSON_HEADER, data.people)
        return body, f"service-hours-{month}-{by}.csv", "text/csv; charset=utf-8"
    if fmt == "xlsx":
        body = to_xlsx([("按镇街", TOWN_HEADER, data.towns), ("志愿者明细", PERSON_HEADER, data.people)])
        return body, f"service-hours-{month}.xlsx", \
            "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    raise ValueError(f"format must be csv or xlsx, not {fmt!r}")
