"""Structured logs: one JSON object per line, one line per request, and no secret or full
phone number anywhere, checked by capturing every log line of a full conversation."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import redis
from aiohttp.test_utils import TestServer
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bot.app import create_app
from bot.logs import JsonFormatter, TextFormatter, mask_openid, redact, settings_secrets, setup_logging
from bot.simulator import Simulator
from jobs.wechat_api import WeChatAPI
from models.db import utcnow
from models.settings import Settings, load_settings
from tests.fakewechat import FakeWeChat
from tests.world import build_world

AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
PHONE = "13900001234"


@pytest.fixture
def captured() -> Iterator[io.StringIO]:
    """Every record of every logger, as the web process would write it (JSON), at DEBUG."""
    root = logging.getLogger()
    before_handlers, before_level = list(root.handlers), root.level
    stream = io.StringIO()
    setup_logging("DEBUG", fmt="json", stream=stream, force=True)
    yield stream
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in before_handlers:
        root.addHandler(h)
    root.setLevel(before_level)


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("t", logging.INFO, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


# --- the scrubber ------------------------------------------------------------------------------


@hsettings(max_examples=300, deadline=None, database=None)
@given(before=st.text(max_size=30), after=st.text(max_size=30),
       phone=st.from_regex(r"\A1[3-9][0-9]{9}\Z", fullmatch=True))
def test_a_phone_anywhere_is_masked(before: str, after: str, phone: str) -> None:
    # digits glued on either side make it another number, not a phone
    before = before.rstrip("0123456789")
    after = after.lstrip("0123456789")
    out = redact(f"{before}{phone}{after}")
    assert phone not in out
    assert f"{phone[:3]}****{phone[-4:]}" in out


def test_credentials_in_urls_json_and_configured_values_are_scrubbed() -> None:
    secrets = ["the-app-secret-123", "token-abcdef"]
    line = redact(
        'GET /cgi-bin/token?grant_type=client_credential&appid=wx1&secret=s3cr3t "access_token": "AT-xyz" '
        "url=/send?access_token=AT-abc&x=1 raw the-app-secret-123 and token-abcdef",
        secrets,
    )
    for leaked in ("s3cr3t", "AT-xyz", "AT-abc", "the-app-secret-123", "token-abcdef"):
        assert leaked not in line
    assert "appid=wx1" in line and "x=1" in line  # what is not secret stays readable


def test_json_lines_carry_extras_and_text_lines_are_scrubbed_too() -> None:
    fmt = JsonFormatter(secrets=["supersecretvalue"])
    out = json.loads(fmt.format(_record("hello %s", "supersecretvalue 13812345678", route="/wechat", status=200,
                                        latency_ms=1.5)))
    assert out["msg"] == "hello *** 138****5678"
    assert (out["route"], out["status"], out["latency_ms"], out["level"]) == ("/wechat", 200, 1.5, "INFO")
    text = TextFormatter(secrets=["supersecretvalue"]).format(_record("x %s", "supersecretvalue 13812345678"))
    assert "supersecretvalue" not in text and "138****5678" in text and "\n" not in text


def test_masked_openids_tell_people_apart_without_the_whole_id() -> None:
    a, b = "oLVPpjqs9BhvzwPj5A-vTYAX3GLc", "oLVPpjqs9BhvzwPj5A-vTYAX3GLd"
    assert mask_openid(a) != mask_openid(b)
    assert a not in mask_openid(a) and len(mask_openid(a)) < 12


def test_setup_leaves_foreign_handlers_alone_unless_forced() -> None:
    root = logging.getLogger()
    if not root.handlers:
        pytest.skip("no foreign handler installed (pytest's logging plugin is off)")
    before = list(root.handlers)
    assert setup_logging("INFO", stream=io.StringIO()) is None
    assert root.handlers == before


# --- a full conversation ---------------------------------------------------------------------


@pytest.fixture
def safe_settings(settings: Settings) -> Settings:
    return settings.model_copy(update={"wechat_aes_key": load_settings(wechat_aes_key=AES_KEY).wechat_aes_key})


async def test_a_full_conversation_logs_no_secret(safe_settings: Settings, sessions, redis_client: redis.Redis,  # type: ignore[no-untyped-def]
                                                  captured: io.StringIO) -> None:
    build_world(sessions, utcnow())
    srv = TestServer(create_app(safe_settings), host="127.0.0.1")
    await srv.start_server()
    try:
        u = Simulator.from_settings(safe_settings, str(srv.make_url("/wechat")), "new-follower-logging-1")
        assert u.mode == "safe"
        answers = ["注册", "赵敏", PHONE, "东丰村", "2", "1 2", "2027-06-30"]
        for text in answers:
            assert await u.send(u.text(text)) is not None
        confirm = await u.send(u.text("确认"))
        assert confirm is not None and "注册成功" in confirm
        # a forged request: refused and logged
        query, body = u.request(u.text("x"))
        query["msg_signature"] = "0" * 40
        import aiohttp

        async with aiohttp.ClientSession() as s, s.post(u.url, params=query, data=body) as resp:
            assert resp.status == 403
    finally:
        await srv.close()

    # a customer-service message through the fake WeChat API: fetches an access token first
    with FakeWeChat(appid=safe_settings.wechat_app_id,
                    secret=safe_settings.wechat_app_secret.get_secret_value()) as fake:
        fake.interact("new-follower-logging-1")
        api = WeChatAPI(safe_settings.model_copy(update={"wechat_api_base": fake.base_url}), redis_client)
        api.send_text("new-follower-logging-1", f"您的手机号 {PHONE} 已登记")
        access_token = fake.state.current_token
        assert access_token and fake.state.token_fetches == 1
        assert len(fake.received("new-follower-logging-1")) == 1

    logging.getLogger("check").info("scrubber active: %s /send?access_token=%s", PHONE, access_token)
    out = captured.getvalue()
    lines = [json.loads(line) for line in out.splitlines() if line.strip()]  # every line is JSON
    assert len(lines) >= 10

    requests = [r for r in lines if r.get("route") == "/wechat"]
    assert len(requests) == len(answers) + 2  # one line per request, the refusal included
    assert all(isinstance(r["latency_ms"], float) and r["method"] == "POST" for r in requests)
    assert [r["status"] for r in requests].count(403) == 1
    assert {r["openid"] for r in requests if r["status"] == 200} == {mask_openid("new-follower-logging-1")}

    assert lines[-1]["msg"] == "scrubber active: 139****1234 /send?access_token=***"
    # the openid in a request URL (aiohttp's access log, when on) is masked like the rest
    access = [r["msg"] for r in lines if r["logger"] == "aiohttp.access"]
    assert all("openid=new-…ng-1" in m and "new-follower-logging-1" not in m for m in access)
    for secret in (PHONE, safe_settings.wechat_token.get_secret_value(), AES_KEY,
                   safe_settings.wechat_app_secret.get_secret_value(), access_token):
        assert secret not in out, f"{secret[:3]}… leaked into the logs"
    assert set(settings_secrets(safe_settings)) >= {AES_KEY, "test-secret", "test-token"}
