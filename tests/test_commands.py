"""Command matching and answer parsers (pure): examples plus hypothesis properties."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.commands import (
    CLICK_KEYS,
    Cmd,
    Ref,
    mask_name,
    mask_phone,
    parse,
    parse_choices,
    parse_date,
    parse_phone,
    parse_when,
)
from bot.views import clip, fit

SH = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 12, 4, 14, 0, tzinfo=SH)  # a Friday afternoon


@pytest.mark.parametrize(
    ("text", "cmd", "ref"),
    [
        ("帮助", Cmd.help, None),
        ("help", Cmd.help, None),
        ("HELP", Cmd.help, None),
        ("注册", Cmd.register, None),
        ("register", Cmd.register, None),
        ("报名 3", Cmd.signup, Ref(3, False)),
        ("报名3", Cmd.signup, Ref(3, False)),
        ("报名　３", Cmd.signup, Ref(3, False)),  # ideographic space and full-width digit
        ("ｓｉｇｎｕｐ　１２", Cmd.signup, Ref(12, False)),
        ("接受 1024", Cmd.accept, Ref(1024, False)),
        ("接受 T1024", Cmd.accept, Ref(1024, True)),
        ("decline t7", Cmd.decline, Ref(7, True)),
        ("取消 1", Cmd.cancel, Ref(1, False)),
        ("签到", Cmd.checkin, None),
        ("checkout", Cmd.checkout, None),
        ("我的", Cmd.mine, None),
        ("AED", Cmd.aed, None),
        ("aed", Cmd.aed, None),
        ("急救", Cmd.sos, None),
        ("SOS", Cmd.sos, None),
        ("广播", Cmd.broadcast, None),
        ("状态", Cmd.status, None),
        ("退出", Cmd.quit, None),
        ("quit", Cmd.quit, None),
        ("更多", Cmd.more, None),
        ("  班次  ", Cmd.shifts, None),
    ],
)
def test_commands(text: str, cmd: Cmd, ref: Ref | None) -> None:
    got = parse(text)
    assert got is not None and got.cmd == cmd and got.ref == ref


@pytest.mark.parametrize("text", ["", "   ", "你好", "注册一下", "王丽", "13812345678", "班次很多", "东丰村"])
def test_not_commands(text: str) -> None:
    assert parse(text) is None


def test_numbered_without_number_keeps_the_command() -> None:
    got = parse("报名")
    assert got is not None and got.cmd == Cmd.signup and got.ref is None
    got = parse("取消 明天的")
    assert got is not None and got.ref is None and got.rest == "明天的"


def test_click_keys_cover_the_menu() -> None:
    assert set(CLICK_KEYS.values()) >= {Cmd.shifts, Cmd.mine, Cmd.checkin, Cmd.report, Cmd.aed, Cmd.help}


@given(st.text(max_size=80))
def test_parse_never_raises(text: str) -> None:
    got = parse(text)
    assert got is None or isinstance(got.cmd, Cmd)


@given(st.integers(min_value=0, max_value=999_999_999), st.sampled_from(["报名", "取消", "接受", "拒绝"]))
def test_fullwidth_digits_equal_ascii(n: int, word: str) -> None:
    ascii_text = f"{word} {n}"
    full = ascii_text.translate({ord(c): ord(c) + 0xFEE0 for c in "0123456789"}).replace(" ", "\u3000")
    assert parse(ascii_text) == parse(full)
    got = parse(full)
    assert got is not None and got.ref == Ref(n, False)


@given(st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True))
def test_valid_phones_accepted_and_masked(phone: str) -> None:
    assert parse_phone(phone) == phone
    assert parse_phone(f"+86 {phone[:3]} {phone[3:7]} {phone[7:]}") == phone
    masked = mask_phone(phone)
    assert masked == phone[:3] + "****" + phone[-4:]
    assert phone[3:7] not in masked[3:7]  # the middle digits never show


@pytest.mark.parametrize("bad", ["1381234", "12812345678", "138123456789", "abc", "", "23812345678"])
def test_bad_phones(bad: str) -> None:
    assert parse_phone(bad) is None


@given(st.text(max_size=40))
def test_parsers_never_raise(text: str) -> None:
    parse_phone(text)
    parse_date(text)
    parse_choices(text, top=5)
    got = parse_when(text, NOW)
    assert got is None or got > NOW


def test_choices() -> None:
    assert parse_choices("1 3", top=5) == [1, 3]
    assert parse_choices("1、3，2", top=5) == [1, 2, 3]
    assert parse_choices("13", top=5) == [1, 3]
    assert parse_choices("0", top=5) == []
    assert parse_choices("6", top=5) is None
    assert parse_choices("一", top=5) is None


def test_dates() -> None:
    assert parse_date("2027-06-30") == date(2027, 6, 30)
    assert parse_date("2027/6/30") == date(2027, 6, 30)
    assert parse_date("2027年6月30日") == date(2027, 6, 30)
    assert parse_date("２０２７－０６－３０") == date(2027, 6, 30)
    assert parse_date("2027-02-30") is None
    assert parse_date("明年") is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("今天15:00", datetime(2026, 12, 4, 15, 0, tzinfo=SH)),
        ("今天 15:00 前", datetime(2026, 12, 4, 15, 0, tzinfo=SH)),
        ("明天上午", datetime(2026, 12, 5, 10, 0, tzinfo=SH)),
        ("明天9点", datetime(2026, 12, 5, 9, 0, tzinfo=SH)),
        ("下午3点半", datetime(2026, 12, 4, 15, 30, tzinfo=SH)),
        ("12月6日 9:00", datetime(2026, 12, 6, 9, 0, tzinfo=SH)),
        ("9:00", datetime(2026, 12, 5, 9, 0, tzinfo=SH)),  # already past today → tomorrow
        ("尽快", NOW + timedelta(hours=2)),
    ],
)
def test_when(text: str, expected: datetime) -> None:
    assert parse_when(text, NOW) == expected


@pytest.mark.parametrize("text", ["今天10:00", "昨天", "25:00", "随便"])
def test_when_refuses_past_or_nonsense(text: str) -> None:
    assert parse_when(text, NOW) is None


def test_mask_name() -> None:
    assert mask_name("王丽") == "王*"
    assert mask_name("欧阳娜娜") == "欧***"


@given(st.lists(st.text(min_size=1, max_size=200), max_size=60))
def test_fit_stays_within_limit(lines: list[str]) -> None:
    text, n = fit("头", lines, "尾")
    assert len(text.encode()) <= 2000
    assert 0 <= n <= len(lines)


@given(st.text(max_size=3000))
def test_clip(text: str) -> None:
    out = clip(text)
    assert len(out.encode()) <= 2000
    if len(text.encode()) <= 2000:
        assert out == text
