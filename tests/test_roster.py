"""Roster import (all rows or none, row-by-row report) and service-hours export."""

from __future__ import annotations

import csv
import io
import re
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from openpyxl import Workbook, load_workbook
from sqlmodel import select

from models.db import transaction, utcnow
from models.tables import AuditEntry, Certificate, GridUnit, Person, PersonStatus
from redgrid import roster
from redgrid.cli import cli
from tests.test_console_world import ConsoleWorld, build_console_world, cheap_argon2

GOOD = ("姓名,手机,网格编码,技能,服务类别\n"
        "赵一,13911110001,330783-01-001-1,救护员证:2030-06-30、驾驶,爱心冰柜补货\n"
        "钱二,139 1111 0002,330783-01-001-2,,\n")


@pytest.fixture
def world(sessions, monkeypatch) -> ConsoleWorld:  # type: ignore[no-untyped-def]
    cheap_argon2(monkeypatch)
    return build_console_world(sessions, utcnow())


def _import(sessions, data: bytes, name: str = "roster.csv", scope: str | None = None) -> roster.ImportReport:  # type: ignore[no-untyped-def]
    with transaction(sessions) as s:
        return roster.import_volunteers(s, data=data, filename=name, actor_id=None, scope_path=scope, now=utcnow())


def _count(sessions) -> int:  # type: ignore[no-untyped-def]
    with sessions() as s:
        return len(s.exec(select(Person)).all())


def _last_month(world: ConsoleWorld) -> str:
    return (world.now - timedelta(days=35)).astimezone(ZoneInfo("Asia/Shanghai")).strftime("%Y-%m")


def test_a_good_csv_imports_every_row_with_skills_and_audit(sessions, world) -> None:  # type: ignore[no-untyped-def]
    report = _import(sessions, GOOD.encode("utf-8-sig"))
    assert report.ok and report.created == 2 and report.rows == 2
    with sessions() as s:
        zhao = s.exec(select(Person).where(Person.phone == "13911110001")).one()
        assert zhao.is_volunteer and zhao.status == PersonStatus.active and zhao.home_grid_id == world.grid_a1
        assert zhao.kinds == ["fridge_restock"] and zhao.h3
        certs = {c.skill: c.expires_on for c in s.exec(select(Certificate).where(Certificate.person_id == zhao.id))}
        assert certs == {"first_aid": datetime(2030, 6, 30).date(), "driver": None}
        qian = s.exec(select(Person).where(Person.phone == "13911110002")).one()  # spaces in the phone are fine
        assert len(qian.kinds) == 10  # no kinds given: opted in to all
        assert len(s.exec(select(AuditEntry).where(AuditEntry.action == "person.import")).all()) == 2


def test_two_bad_rows_are_reported_and_nothing_is_imported(sessions, world) -> None:  # type: ignore[no-untyped-def]
    before = _count(sessions)
    data = ("姓名,手机,网格编码\n"
            "好人甲,13911110011,330783-01-001-1\n"
            ",1391111,330783-01-001-1\n"  # row 3: no name, short phone
            "好人乙,13911110012,330783-01-001-2\n"
            "坏人丙,13911110011,330783-99-999-9\n")  # row 5: phone of row 2, unknown grid
    report = _import(sessions, data.encode())
    assert not report.ok and report.created == 0
    assert report.error_rows() == [3, 5]
    assert {(e.row, e.field) for e in report.errors} == {(3, "name"), (3, "phone"), (5, "phone"), (5, "grid_code")}
    assert any("与第2行手机号重复" in e.message for e in report.errors)
    assert _count(sessions) == before


def test_xlsx_imports_and_numbers_as_phones_work(sessions, world) -> None:  # type: ignore[no-untyped-def]
    wb = Workbook()
    ws = wb.active
    ws.append(["name", "phone", "grid_code", "skills"])
    ws.append(["孙三", 13911110021, "330783-17-001-1", "first_aid:2031-01-01"])
    buf = io.BytesIO()
    wb.save(buf)
    report = _import(sessions, buf.getvalue(), "roster.xlsx")
    assert report.ok and report.created == 1
    with sessions() as s:
        assert s.exec(select(Person).where(Person.phone == "13911110021")).one().home_grid_id == world.grid_b1


def test_file_level_problems(sessions, world) -> None:  # type: ignore[no-untyped-def]
    assert _import(sessions, b"name,grid\nx,y\n").errors[0].message.startswith("缺少列")
    assert "xlsx" in _import(sessions, b"not a zip", "r.xlsx").errors[0].message
    assert "只支持" in _import(sessions, b"x", "r.pdf").errors[0].message
    gbk = "姓名,手机,网格编码\n周四,13911110031,330783-01-001-1\n".encode("gb18030")
    assert _import(sessions, gbk).ok


def test_existing_phone_openid_scope_and_expired_skill(sessions, world) -> None:  # type: ignore[no-untyped-def]
    data = ("姓名,手机,网格编码,技能,openid\n"
            "重复,13800001001,330783-01-001-1,,\n"  # phone already in the roster
            "越界,13911110041,330783-17-001-1,,\n"  # town B, importer scoped to town A
            "过期,13911110042,330783-01-001-1,救护员证:2001-01-01,\n"
            "村级,13911110043,330783-01-001,,\n"  # a village code, not a grid
            "已注册,13911110044,330783-01-001-1,,va-1\n")
    with sessions() as s:
        scope = s.get(GridUnit, world.town_a).path
    before = _count(sessions)
    report = _import(sessions, data.encode(), scope=scope)
    msgs = {e.row: e.message for e in report.errors}
    assert "已在花名册中" in msgs[2] and "不在您的管理范围内" in msgs[3] and "已过期" in msgs[4]
    assert "不是网格" in msgs[5] and "已注册" in msgs[6]
    assert _count(sessions) == before


@given(st.text(alphabet="0123456789１a ", max_size=13))
def test_phone_rule_matches_the_chat(text: str) -> None:
    assert (roster.PHONE.match(text) is not None) == bool(re.fullmatch(r"1[3-9][0-9]{9}", text))


@given(st.lists(st.sampled_from(sorted(roster.SKILL_NAMES)), max_size=6), st.booleans())
def test_skills_parse_by_code_or_label(codes: list[str], by_label: bool) -> None:
    today = datetime(2025, 1, 1, tzinfo=UTC).date()
    text = "、".join(roster.SKILL_NAMES[c] if by_label else c for c in codes)
    parsed, why = roster.parse_skills(text, today)
    assert why is None and [c for c, _ in parsed] == list(dict.fromkeys(codes))


def test_export_hours_by_town_and_person(sessions, world) -> None:  # type: ignore[no-untyped-def]
    month = _last_month(world)
    with sessions() as s:
        body, name, ctype = roster.export_hours(s, month=month, fmt="csv", scope_path=None)
        rows = list(csv.reader(io.StringIO(body.decode("utf-8-sig"))))
        assert rows[0] == roster.TOWN_HEADER and name.endswith(".csv") and ctype.startswith("text/csv")
        towns = {r[1]: r for r in rows[1:]}
        assert towns["吴宁街道"][2:] == ["1", "1", "2.5"] and towns["横店镇"][2:] == ["1", "1", "4.0"]
        assert towns["合计"][2:] == ["2", "2", "6.5"]
        body, name, _ = roster.export_hours(s, month=month, fmt="xlsx", scope_path=None)
        wb = load_workbook(io.BytesIO(body))
        assert wb.sheetnames == ["按镇街", "志愿者明细"]
        people = list(wb["志愿者明细"].iter_rows(values_only=True))
        assert people[0] == tuple(roster.PERSON_HEADER)
        assert {p[2] for p in people[1:]} == {"吴宁志愿者1", "横店志愿者2"}
        assert all("****" in p[3] for p in people[1:])  # phones masked
        empty, _, _ = roster.export_hours(s, month="2001-01", fmt="csv", scope_path=None)
        assert list(csv.reader(io.StringIO(empty.decode("utf-8-sig"))))[1] == ["2001-01", "合计", "0", "0", "0"]
        with pytest.raises(ValueError):
            roster.export_hours(s, month="2025-13", fmt="csv", scope_path=None)


def test_export_neutralizes_formula_cells() -> None:
    body = roster.to_csv(["a"], [['=HYPERLINK("x")'], ["ok"]])
    assert body.decode("utf-8-sig").splitlines()[1].startswith("\"'=")


def test_cli_import_export_and_set_password(sessions, world, database_url, tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("DATABASE_URL", database_url)
    bad = tmp_path / "bad.csv"
    bad.write_text("姓名,手机,网格编码\n甲,123,330783-01-001-1\n")
    r = CliRunner().invoke(cli, ["import", "volunteers", str(bad)])
    assert r.exit_code == 1 and "row 2" in r.output and "nothing imported" in r.output
    good = tmp_path / "good.csv"
    good.write_text(GOOD)
    r = CliRunner().invoke(cli, ["import", "volunteers", str(good)])
    assert r.exit_code == 0 and "imported 2" in r.output
    out = tmp_path / "h.xlsx"
    r = CliRunner().invoke(cli, ["export", "hours", "--month", _last_month(world), "--format", "xlsx", "--out", str(out)])
    assert r.exit_code == 0 and load_workbook(out)["按镇街"]["B2"].value in ("横店镇", "吴宁街道")
    r = CliRunner().invoke(cli, ["console", "set-password", "--openid", "coord-a"], input="new-password-123\n")
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(cli, ["console", "set-password", "--openid", "va-1"], input="new-password-123\n")
    assert r.exit_code != 0 and "coordinators" in r.output
