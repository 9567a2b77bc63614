# ruff: noqa: F811  (pytest fixtures imported from tests.fakewechat are redefined as arguments)
"""Issue 5: one outbound channel, the 48-hour rule, sent once, and the WeChat error policy.

Every test runs jobs through a real RQ worker (``SimpleWorker``, burst) on real Redis against
the fake WeChat server, and asserts both what the fake received and what the Delivery row says.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import SecretStr
from sqlmodel import select

from dispatcher.effects import Effects
from jobs.effects import apply
from jobs.outbound import (
    PAUSE_KEY,
    next_local_midnight,
    release_deferred,
    route,
    send_delivery,
)
from jobs.runtime import Runtime
from jobs.wechat_api import WeChatAPI
from models.exceptions import WeChatAPIError
from models.outbox import queue_message
from models.tables import Delivery, DeliveryStatus, Person
from tests.fakewechat import (  # noqa: F401  (fixtures)
    FakeWeChat,
    fake,
    fake_server,
    jobrt,
    make_person,
    run_due,
    scheduled,
    work,
)

OPENID = "oXyz-volunteer-0001"


def _queue(rt: Runtime, *, last: datetime | None, purpose: str = "notice", text: str = "您好，这是一条通知。",
           openid: str = OPENID) -> tuple[int, int]:
    with rt.sessions() as s, s.begin():
        p = make_person(s, openid=openid, last=last)
        d = queue_message(s, person_id=p.id, purpose=purpose, target=1, text=text)
        assert d is not None
        ids = (p.id, d.id)
    apply(rt.redis, Effects(deliveries=[ids[1]]))
    return ids


def _row(rt: Runtime, delivery_id: int) -> Delivery:
    with rt.sessions() as s:
        row = s.get(Delivery, delivery_id)
        assert row is not None
        return row


def _now(rt: Runtime) -> datetime:
    return rt.extras["clock"]()


def _fresh(fake: FakeWeChat, rt: Runtime, openid: str = OPENID) -> datetime:
    """The person wrote to us just now (both in our database's eyes and WeChat's)."""
    fake.interact(openid)
    return _now(rt) - timedelta(minutes=5)


# --- the happy path, the 48-hour rule, "sent once" ----------------------------------------------


def test_sent_once_even_when_the_job_runs_twice(jobrt: Runtime, fake: FakeWeChat) -> None:
    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    apply(jobrt.redis, Effects(deliveries=[did]))  # enqueued twice: one job id
    work(jobrt.redis)
    assert send_delivery(did) == "skip"  # and once more by hand
    assert [m.text for m in fake.received(OPENID)] == ["您好，这是一条通知。"]
    row = _row(jobrt, did)
    assert (row.status, row.channel, row.errcode, row.attempts) == (DeliveryStatus.sent, "custom", 0, 1)
    assert row.sent_at == _now(jobrt)


def test_route_is_pure_and_follows_the_window() -> None:
    now = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
    kw = {"now": now, "openid": "o1", "subscribed": True}
    assert route(last_interaction_at=now - timedelta(hours=47), template_id=None, **kw) == "custom"
    assert route(last_interaction_at=now - timedelta(hours=49), template_id=None, **kw) == "defer"
    assert route(last_interaction_at=None, template_id="tpl", **kw) == "template"
    assert route(last_interaction_at=now, template_id=None, now=now, openid="o1", subscribed=False) == "unreachable"


def test_outside_48h_without_template_waits_for_next_message(jobrt: Runtime, fake: FakeWeChat) -> None:
    stale = _now(jobrt) - timedelta(hours=60)
    fake.set_user(OPENID, last_interaction=time.time() - 60 * 3600)
    pid, did = _queue(jobrt, last=stale)
    work(jobrt.redis)
    assert fake.received() == []
    assert _row(jobrt, did).status == DeliveryStatus.deferred
    # the person writes: the engine records it and releases what waited
    fake.interact(OPENID)
    with jobrt.sessions() as s, s.begin():
        person = s.get(Person, pid)
        person.last_interaction_at = _now(jobrt)
        released = release_deferred(s, person_id=pid, now=_now(jobrt))
    assert released == [did]
    apply(jobrt.redis, Effects(deliveries=released))
    work(jobrt.redis)
    assert [m.kind for m in fake.received(OPENID)] == ["text"]
    assert _row(jobrt, did).status == DeliveryStatus.sent


def test_a_buffered_interaction_opens_the_window(jobrt: Runtime, fake: FakeWeChat) -> None:
    """The row says 60 hours ago, but the person wrote a minute ago (a read-only turn, buffered
    in Redis until the flush, models/interactions.py): the message goes now, not deferred."""
    from models import interactions

    fake.set_user(OPENID, last_interaction=time.time() - 60)
    _pid, did = _queue(jobrt, last=_now(jobrt) - timedelta(hours=60))
    interactions.record(jobrt.redis, OPENID, _now(jobrt) - timedelta(minutes=1))
    work(jobrt.redis)
    assert [m.kind for m in fake.received(OPENID)] == ["text"]
    assert _row(jobrt, did).status == DeliveryStatus.sent


def test_a_message_that_arrives_while_deferring_releases_the_row(jobrt: Runtime, fake: FakeWeChat,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The person writes just after the sender looked at their interaction time and before
    its deferral committed (their turn saw no deferred row yet): the sender's second look,
    after the commit, sees the time, and the message goes now instead of waiting."""
    from jobs import outbound
    from models import interactions

    fake.set_user(OPENID, last_interaction=time.time() - 60)
    _pid, did = _queue(jobrt, last=_now(jobrt) - timedelta(hours=60))
    real = interactions.latest
    calls: list[int] = []

    def racing(client, openid, stored):  # type: ignore[no-untyped-def]
        calls.append(1)
        before = real(client, openid, stored)
        if len(calls) == 1:  # the turn lands right after the first look
            interactions.record(client, OPENID, _now(jobrt))
        return before

    monkeypatch.setattr(outbound.interactions, "latest", racing)
    work(jobrt.redis)
    assert len(calls) >= 2
    assert [m.kind for m in fake.received(OPENID)] == ["text"]
    assert _row(jobrt, did).status == DeliveryStatus.sent


def test_outside_48h_with_template_goes_as_template(jobrt: Runtime, fake: FakeWeChat) -> None:
    jobrt.settings = jobrt.settings.model_copy(update={"template_shift_reminder": "TPL-REMIND"})
    fake.add_template("TPL-REMIND")
    fake.set_user(OPENID, last_interaction=time.time() - 60 * 3600)
    _, did = _queue(jobrt, last=_now(jobrt) - timedelta(hours=60), purpose="remind_before7200",
                    text="【2小时后开始】爱心冰柜补货 · 东丰村 · 09:00。到达后回复「签到」。")
    work(jobrt.redis)
    (msg,) = fake.received(OPENID)
    assert msg.kind == "template" and msg.template_id == "TPL-REMIND"
    assert "爱心冰柜补货" in msg.text
    row = _row(jobrt, did)
    assert (row.status, row.channel) == (DeliveryStatus.sent, "template")


def test_deferred_rows_older_than_a_week_are_not_sent(jobrt: Runtime, fake: FakeWeChat) -> None:
    pid, did = _queue(jobrt, last=None)
    work(jobrt.redis)
    assert _row(jobrt, did).status == DeliveryStatus.deferred
    with jobrt.sessions() as s, s.begin():
        assert release_deferred(s, person_id=pid, now=_now(jobrt) + timedelta(days=8)) == []
    row = _row(jobrt, did)
    assert row.status == DeliveryStatus.cancelled and row.payload.get("expired") is True


# --- the error policy, one code at a time -------------------------------------------------------


def test_minus_one_retries_with_backoff_then_sends(jobrt: Runtime, fake: FakeWeChat) -> None:
    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    fake.inject("errcode", -1)
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode, row.attempts) == (DeliveryStatus.pending, -1, 1)
    plan = scheduled(jobrt.redis)
    assert plan == {f"delivery-{did}-a1": plan[f"delivery-{did}-a1"]}
    assert plan[f"delivery-{did}-a1"] == _now(jobrt) + timedelta(seconds=jobrt.settings.outbound_backoff_s[0])
    run_due(jobrt.redis, jobrt.extras["clock"].advance(seconds=10))
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode, row.attempts) == (DeliveryStatus.sent, 0, 2)
    assert len(fake.received(OPENID)) == 1


def test_minus_one_gives_up_after_max_attempts(jobrt: Runtime, fake: FakeWeChat) -> None:
    jobrt.settings = jobrt.settings.model_copy(update={"outbound_max_attempts": 2})
    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    fake.inject("errcode", -1, times=5)
    work(jobrt.redis)
    run_due(jobrt.redis, jobrt.extras["clock"].advance(seconds=60))
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode, row.attempts) == (DeliveryStatus.failed, -1, 2)
    assert fake.received() == [] and scheduled(jobrt.redis) == {}


@pytest.mark.parametrize("fault", [("http", 500), ("http", 503), ("delay", 1.5)])
def test_http_errors_and_timeouts_retry(jobrt: Runtime, fake: FakeWeChat, fault: tuple[str, float]) -> None:
    jobrt.settings = jobrt.settings.model_copy(update={"wechat_timeout_s": 0.5})
    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    fake.inject(fault[0], fault[1], paths=("/cgi-bin/message/custom/send",))
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode, row.attempts) == (DeliveryStatus.pending, None, 1)
    assert row.payload["error"] in ("HTTP 500", "HTTP 503", "ReadTimeout")
    run_due(jobrt.redis, jobrt.extras["clock"].advance(seconds=10))
    work(jobrt.redis)
    assert _row(jobrt, did).status == DeliveryStatus.sent
    row = _row(jobrt, did)
    assert (row.attempts, row.errcode) == (2, 0)
    # An HTTP error means not delivered; the fake also drops a delayed request whose client
    # gave up (aiohttp cancels its handler), so one message either way. Real WeChat may still
    # deliver a timed-out call: the policy retries timeouts and accepts that rare duplicate.
    fake.wait_idle()
    assert len(fake.received(OPENID)) == 1


def test_40001_refreshes_the_token_once_and_sends(jobrt: Runtime, fake: FakeWeChat) -> None:
    fake.state.token_grace_s = 0  # a new token kills the old one at once
    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    api = WeChatAPI(jobrt.settings, jobrt.redis)
    old = api.client.access_token  # our workers' shared token, now in Redis
    other = WeChatAPI(jobrt.settings.model_copy(update={"wechat_app_id": fake.state.appid}), jobrt.redis)
    other.client.fetch_access_token()  # someone else fetched a token: ours is invalid (40001)
    assert jobrt.redis.get(f"wechatpy:{fake.state.appid}_access_token") is not None
    jobrt.redis.set(f"wechatpy:{fake.state.appid}_access_token", f'"{old}"')  # we still hold the old one
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.attempts) == (DeliveryStatus.sent, 1)
    assert fake.state.token_fetches == 3  # ours, the other's, and exactly one refresh
    assert len(fake.received(OPENID)) == 1


def test_42001_expired_token_refreshes_once(jobrt: Runtime, fake: FakeWeChat) -> None:
    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    WeChatAPI(jobrt.settings, jobrt.redis).client.access_token  # noqa: B018  (fetch one)
    fake.expire_token()
    work(jobrt.redis)
    assert _row(jobrt, did).status == DeliveryStatus.sent
    assert fake.state.token_fetches == 2


@pytest.mark.parametrize("code", [40001, 42001])
def test_token_error_twice_fails_after_one_refresh(jobrt: Runtime, fake: FakeWeChat, code: int) -> None:
    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    fake.inject("errcode", code, times=2, paths=("/cgi-bin/message/custom/send",))
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode, row.attempts) == (DeliveryStatus.failed, code, 1)
    assert fake.state.token_fetches == 2  # the first token and one refresh, no loop
    assert fake.received() == []


def test_45009_stops_sending_until_local_midnight(jobrt: Runtime, fake: FakeWeChat) -> None:
    last = _fresh(fake, jobrt)
    _, first = _queue(jobrt, last=last)
    fake.inject("errcode", 45009)
    work(jobrt.redis)
    row = _row(jobrt, first)
    assert (row.status, row.errcode, row.attempts) == (DeliveryStatus.pending, 45009, 1)
    reopen = next_local_midnight(_now(jobrt), "Asia/Shanghai")
    assert reopen.astimezone().utcoffset() is not None and reopen.astimezone(
        __import__("zoneinfo").ZoneInfo("Asia/Shanghai")).hour == 0
    assert float(jobrt.redis.get(PAUSE_KEY)) == reopen.timestamp()
    # another message queued meanwhile is not even tried
    calls = sum(fake.state.calls.values())
    _, second = _queue(jobrt, last=last, openid="oXyz-volunteer-0002")
    fake.interact("oXyz-volunteer-0002")
    work(jobrt.redis)
    assert sum(fake.state.calls.values()) == calls
    assert _row(jobrt, second).status == DeliveryStatus.pending
    assert set(scheduled(jobrt.redis).values()) == {reopen}
    # the quota reopens: both go, once
    jobrt.redis.delete(PAUSE_KEY)
    run_due(jobrt.redis, jobrt.extras["clock"].set(reopen))
    work(jobrt.redis)
    assert {_row(jobrt, first).status, _row(jobrt, second).status} == {DeliveryStatus.sent}
    assert fake.counts() == {OPENID: 1, "oXyz-volunteer-0002": 1}


def test_43004_marks_the_person_unsubscribed(jobrt: Runtime, fake: FakeWeChat) -> None:
    last = _now(jobrt) - timedelta(minutes=5)
    fake.set_user(OPENID, last_interaction=time.time(), following=False)
    pid, did = _queue(jobrt, last=last)
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode) == (DeliveryStatus.failed, 43004)
    with jobrt.sessions() as s:
        assert s.get(Person, pid).subscribed is False
    # the next message to them is not even tried
    calls = sum(fake.state.calls.values())
    with jobrt.sessions() as s, s.begin():
        d2 = queue_message(s, person_id=pid, purpose="notice", target=2, text="x")
    apply(jobrt.redis, Effects(deliveries=[d2.id]))
    work(jobrt.redis)
    assert sum(fake.state.calls.values()) == calls
    assert (_row(jobrt, d2.id).status, _row(jobrt, d2.id).errcode) == (DeliveryStatus.failed, 43004)


def test_45015_outside_window_per_wechat_fails_the_message(jobrt: Runtime, fake: FakeWeChat) -> None:
    # our record says they wrote recently; WeChat knows better
    fake.set_user(OPENID, last_interaction=time.time() - 50 * 3600)
    _, did = _queue(jobrt, last=_now(jobrt) - timedelta(hours=1))
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode, row.attempts) == (DeliveryStatus.failed, 45015, 1)
    assert scheduled(jobrt.redis) == {}


def test_45047_over_the_window_count_fails_the_message(jobrt: Runtime, fake: FakeWeChat) -> None:
    fake.state.window_limit = 1
    last = _fresh(fake, jobrt)
    pid, first = _queue(jobrt, last=last)
    with jobrt.sessions() as s, s.begin():
        second = queue_message(s, person_id=pid, purpose="notice", target=2, text="第二条").id
    apply(jobrt.redis, Effects(deliveries=[second]))
    work(jobrt.redis)
    assert _row(jobrt, first).status == DeliveryStatus.sent
    row = _row(jobrt, second)
    assert (row.status, row.errcode) == (DeliveryStatus.failed, 45047)
    assert len(fake.received(OPENID)) == 1


def test_43101_fails_the_message(jobrt: Runtime, fake: FakeWeChat) -> None:
    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    fake.inject("errcode", 43101)
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode, row.attempts) == (DeliveryStatus.failed, 43101, 1)
    assert scheduled(jobrt.redis) == {} and fake.received() == []


def test_40003_unknown_openid_fails_the_message(jobrt: Runtime, fake: FakeWeChat) -> None:
    # the fake has never seen this openid
    _, did = _queue(jobrt, last=_now(jobrt) - timedelta(minutes=1), openid="o-not-a-follower")
    work(jobrt.redis)
    row = _row(jobrt, did)
    assert (row.status, row.errcode) == (DeliveryStatus.failed, 40003)


def test_api_errors_carry_errcode(jobrt: Runtime, fake: FakeWeChat) -> None:
    api = WeChatAPI(jobrt.settings, jobrt.redis)
    with pytest.raises(WeChatAPIError) as info:
        api.send_text("o-nobody", "x")
    assert info.value.errcode == 40003
    bad = WeChatAPI(jobrt.settings.model_copy(update={"wechat_app_secret": SecretStr("wrong")}), jobrt.redis)
    jobrt.redis.flushdb()
    with pytest.raises(WeChatAPIError) as info:
        bad.send_text(OPENID, "x")
    assert info.value.errcode == 40125


def test_menu_push_command(jobrt: Runtime, fake: FakeWeChat, monkeypatch: pytest.MonkeyPatch) -> None:
    from click.testing import CliRunner

    from redgrid.cli import cli

    env = {
        "DATABASE_URL": jobrt.settings.effective_database_url,
        "REDIS_URL": jobrt.settings.redis_url,
        "WECHAT_API_BASE": fake.base_url,
        "WECHAT_APP_ID": fake.state.appid,
        "WECHAT_APP_SECRET": fake.state.secret,
    }
    result = CliRunner().invoke(cli, ["menu", "push"], env=env)
    assert result.exit_code == 0, result.output
    (menu,) = fake.state.menus
    assert 1 <= len(menu["button"]) <= 3
    assert all(b["name"] for b in menu["button"])


def test_rows_say_sending_while_claimed(jobrt: Runtime, fake: FakeWeChat) -> None:
    """A claimed row cannot be claimed again: a second worker's send finds it taken."""
    from jobs.outbound import deliver

    _, did = _queue(jobrt, last=_fresh(fake, jobrt))
    with jobrt.sessions() as s, s.begin():
        s.get(Delivery, did).status = DeliveryStatus.sending
    assert deliver(jobrt, did).result == "skip"
    assert fake.received() == []
    rows = list(_all(jobrt))
    assert [r.status for r in rows] == [DeliveryStatus.sending]


def _all(rt: Runtime) -> list[Delivery]:
    with rt.sessions() as s:
        return list(s.exec(select(Delivery).order_by(Delivery.id)).all())


@given(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2035, 12, 31), timezones=st.just(UTC)))
def test_next_local_midnight_is_the_coming_midnight_in_dongyang(now: datetime) -> None:
    from zoneinfo import ZoneInfo

    reopen = next_local_midnight(now, "Asia/Shanghai")
    local = reopen.astimezone(ZoneInfo("Asia/Shanghai"))
    assert (local.hour, local.minute, local.second) == (0, 0, 0)
    assert timedelta(0) < reopen - now <= timedelta(days=1)
    assert reopen.utcoffset() == timedelta(0)


@given(
    hours_since=st.one_of(st.none(), st.floats(min_value=0, max_value=400)),
    subscribed=st.booleans(),
    template=st.sampled_from([None, "TPL"]),
)
def test_route_properties(hours_since: float | None, subscribed: bool, template: str | None) -> None:
    now = datetime(2026, 12, 6, 1, 0, tzinfo=UTC)
    last = None if hours_since is None else now - timedelta(hours=hours_since)
    way = route(now=now, openid="o1", subscribed=subscribed, last_interaction_at=last, template_id=template)
    if not subscribed:
        assert way == "unreachable"
    elif last is not None and hours_since < 47.9:  # type: ignore[operator]
        assert way == "custom"  # a customer-service message only inside the window...
    elif last is None or hours_since >= 48:  # type: ignore[operator]
        assert way == ("template" if template else "defer")  # ...outside it never
