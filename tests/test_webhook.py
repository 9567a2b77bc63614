"""The WeChat webhook over a real aiohttp server on loopback, with real Redis and a stub
handler that records its calls; and `redgrid chat` talking to such a server."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import redis
from aiohttp.test_utils import TestServer

from bot.app import METRICS, SETTINGS, create_app
from bot.inbound import Inbound
from bot.simulator import Simulator, parse_chat_line, run_chat
from bot.webhook import APOLOGY, INLINE, InlineGate
from bot.wechat import parse_xml, signature
from models.settings import Settings, load_settings

TOKEN = "webhook-test-token"
APP_ID = "wx1234567890abcdef"
AES_KEY = base64.b64encode(b"redgrid-webhook-test-aes-key-32b").decode().rstrip("=")
ROOT = Path(__file__).resolve().parent.parent


class StubHandler:
    """Answers "第N次：<what it got>" so a second run of the same message would show."""

    def __init__(self, *, fail: bool = False, gate: threading.Event | None = None) -> None:
        self.calls: list[Inbound] = []
        self.late: list[tuple[str, str]] = []
        self.late_done = threading.Event()
        self.started = threading.Event()
        self.fail = fail
        self.gate = gate
        self._lock = threading.Lock()

    def handle(self, inbound: Inbound) -> str | None:
        with self._lock:
            self.calls.append(inbound)
            n = len(self.calls)
        self.started.set()
        if self.gate is not None:
            assert self.gate.wait(30), "test never opened the gate"
        if self.fail:
            raise RuntimeError("engine exploded")
        if inbound.kind == "event" and inbound.event == "unsubscribe":
            return None
        return f"第{n}次：{inbound.text or inbound.event_key or inbound.event or inbound.kind}"

    def deliver_late(self, user: str, text: str) -> None:
        self.late.append((user, text))
        self.late_done.set()


@pytest.fixture
def base_settings(redis_client: redis.Redis, redis_url: str, tmp_path: Path) -> Settings:
    # No database is touched by the webhook with a stub handler: a throw-away SQLite file
    # keeps these tests off the two-back-end matrix; Redis is the real one (db flushed).
    return load_settings(
        database_url=f"sqlite:///{tmp_path / 'webhook.db'}",
        redis_url=redis_url,
        var_dir=tmp_path / "var",
        wechat_token=TOKEN,
        wechat_app_id=APP_ID,
    )


Serve = Callable[..., Awaitable[tuple[TestServer, Simulator]]]


@pytest.fixture
async def serve(base_settings: Settings) -> AsyncIterator[Serve]:
    """Start a real server on 127.0.0.1 for ``handler``; returns it and a matching simulator."""
    servers: list[TestServer] = []

    async def start(handler: StubHandler, *, aes: bool = False, mode: str | None = None,
                    openid: str = "o-volunteer-1", **overrides: object) -> tuple[TestServer, Simulator]:
        upd = dict(overrides)
        if aes:
            upd["wechat_aes_key"] = load_settings(wechat_aes_key=AES_KEY).wechat_aes_key
        settings = base_settings.model_copy(update=upd)
        server = TestServer(create_app(settings, handler_factory=lambda app: handler), host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        sim = Simulator(str(server.make_url("/wechat")), token=TOKEN, app_id=APP_ID, openid=openid,
                        aes_key=AES_KEY if aes or mode else None, mode=mode)  # type: ignore[arg-type]
        return server, sim

    yield start
    for server in servers:
        await server.close()


async def post_raw(url: str, query: dict[str, str], body: bytes | AsyncIterator[bytes]) -> tuple[int, bytes]:
    async with aiohttp.ClientSession() as session, session.post(url, params=query, data=body) as resp:
        return resp.status, await resp.read()


def metric(server: TestServer, kind: str, outcome: str) -> float:
    value = server.app[METRICS].registry.get_sample_value(
        "redgrid_wechat_messages_total", {"kind": kind, "outcome": outcome})
    return value or 0.0


# --- GET verification ------------------------------------------------------------------------


async def test_get_verification(serve: Serve) -> None:
    server, sim = await serve(StubHandler())
    url = str(server.make_url("/wechat"))
    query, _ = sim.request(sim.text("x"))
    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={**query, "echostr": "8431937185296207"}) as resp:
            assert (resp.status, await resp.text()) == (200, "8431937185296207")
        async with session.get(url, params={**query, "signature": "0" * 40, "echostr": "1"}) as resp:
            assert resp.status == 403 and "1" not in await resp.text()
        stale = str(int(query["timestamp"]) - 3600)
        forged = {**query, "timestamp": stale, "signature": signature(TOKEN, stale, query["nonce"]), "echostr": "1"}
        async with session.get(url, params=forged) as resp:
            assert resp.status == 403
        async with session.get(url, params=query) as resp:  # no echostr
            assert resp.status == 400


# --- the three modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "compatible", "safe"])
async def test_modes(serve: Serve, redis_client: redis.Redis, mode: str) -> None:
    handler = StubHandler()
    server, sim = await serve(handler, aes=mode != "plain", mode=mode)
    fields = sim.text("帮助", msg_id=1001)
    query, body = sim.request(fields)
    status, raw = await post_raw(sim.url, query, body)
    assert status == 200
    outer = parse_xml(raw)
    if mode == "plain":
        assert outer["Content"] == "第1次：帮助" and outer["ToUserName"] == "o-volunteer-1"
        assert "Encrypt" not in outer
    else:  # encrypted because the request was: no plain text on the wire
        assert set(outer) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
        assert "帮助".encode() not in raw
    assert sim.read_reply(status, raw) == "第1次：帮助"
    assert [c.text for c in handler.calls] == ["帮助"]
    assert json.loads(redis_client.get("dedupe:msg:1001")) == {"s": "done", "r": "第1次：帮助"}
    assert metric(server, "text", "replied") == 1


# --- dedupe ------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["plain", "safe"])
async def test_message_retried_three_times(serve: Serve, redis_client: redis.Redis, mode: str) -> None:
    handler = StubHandler()
    server, sim = await serve(handler, aes=mode == "safe")
    message = sim.text("班次", msg_id=424242)
    replies = [await sim.send(message) for _ in range(3)]  # each retry freshly signed, as WeChat does
    assert replies == ["第1次：班次"] * 3
    assert len(handler.calls) == 1
    assert 0 < redis_client.ttl("dedupe:msg:424242") <= server.app[SETTINGS].dedupe_ttl_s
    assert metric(server, "text", "replied") == 1 and metric(server, "text", "duplicate") == 2
    # a new MsgId is a new message
    assert await sim.send(sim.text("班次")) == "第2次：班次"


async def test_event_retried_three_times(serve: Serve, redis_client: redis.Redis) -> None:
    handler = StubHandler()
    _, sim = await serve(handler)
    click = sim.event("CLICK", "RG_SHIFTS", create_time=1_900_000_000)
    replies = [await sim.send(click) for _ in range(3)]
    assert replies == ["第1次：RG_SHIFTS"] * 3
    assert len(handler.calls) == 1
    assert redis_client.exists(f"dedupe:ev:{sim.openid}:1900000000:click")
    # same second, other event; and the same event a second later: both new
    assert await sim.send(sim.event("subscribe", create_time=1_900_000_000)) == "第2次：subscribe"
    assert await sim.send(sim.event("CLICK", "RG_SHIFTS", create_time=1_900_000_001)) == "第3次：RG_SHIFTS"
    assert len(handler.calls) == 3


async def test_retry_during_processing_gets_the_same_reply(serve: Serve) -> None:
    gate = threading.Event()
    handler = StubHandler(gate=gate)
    _, sim = await serve(handler)
    message = sim.text("报名 1", msg_id=777)
    first = asyncio.create_task(sim.send(message))
    assert await asyncio.to_thread(handler.started.wait, 10)
    second = asyncio.create_task(sim.send(message))
    await asyncio.sleep(0.2)  # let the retry reach the server and find the key pending
    gate.set()
    assert await first == await second == "第1次：报名 1"
    assert len(handler.calls) == 1


# --- refusals ----------------------------------------------------------------------------------

BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<xml><ToUserName>gh</ToUserName><FromUserName>o-volunteer-1</FromUserName><CreateTime>{ts}</CreateTime>
<MsgType>text</MsgType><Content>&lol3;</Content><MsgId>5</MsgId></xml>"""


def _malformed(sim: Simulator) -> tuple[dict[str, str], bytes]:
    query, body = sim.request(sim.text("x"))
    return query, body[:-7]


def _laughs(sim: Simulator) -> tuple[dict[str, str], bytes]:
    query, _ = sim.request(sim.text("x"))
    return query, BILLION_LAUGHS.format(ts=query["timestamp"]).encode()


def _oversized(sim: Simulator) -> tuple[dict[str, str], bytes]:
    return sim.request(sim.text("长" * 30_000))  # 90 kB of text, over 64 KiB


def _bad_signature(sim: Simulator) -> tuple[dict[str, str], bytes]:
    query, body = sim.request(sim.text("x"))
    return {**query, "signature": signature("wrong-token", query["timestamp"], query["nonce"])}, body


def _stale(sim: Simulator) -> tuple[dict[str, str], bytes]:
    ts = str(int(sim.clock()) - 3600)
    return sim.request(sim.text("x"), timestamp=ts)  # properly signed, but an hour old


def _no_signature(sim: Simulator) -> tuple[dict[str, str], bytes]:
    query, body = sim.request(sim.text("x"))
    return {k: v for k, v in query.items() if k != "signature"}, body


def _wrong_appid(sim: Simulator) -> tuple[dict[str, str], bytes]:
    other = Simulator(sim.url, token=TOKEN, app_id="wxAnotherAccount00", openid=sim.openid, aes_key=AES_KEY)
    return other.request(other.text("x"))


def _unsigned_msg_signature(sim: Simulator) -> tuple[dict[str, str], bytes]:
    query, body = sim.request(sim.text("x"))
    return {**query, "msg_signature": query["signature"]}, body


@pytest.mark.parametrize(("make", "aes", "status"), [
    (_malformed, False, 400),
    (_laughs, False, 400),
    (_oversized, False, 413),
    (_bad_signature, False, 403),
    (_no_signature, False, 403),
    (_stale, False, 403),
    (_wrong_appid, True, 403),
    (_unsigned_msg_signature, True, 403),
    (_stale, True, 403),
])
async def test_refusals(serve: Serve, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture,
                        make: Callable[[Simulator], tuple[dict[str, str], bytes]], aes: bool, status: int) -> None:
    handler = StubHandler()
    server, sim = await serve(handler, aes=aes)
    query, body = make(sim)
    with caplog.at_level(logging.INFO, logger="bot"):
        got, _ = await post_raw(sim.url, query, body)
    assert got == status
    assert handler.calls == []
    assert redis_client.dbsize() == 0  # no dedupe key, nothing stored
    refusals = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refusals) == 1 and f"refused {status}" in refusals[0].getMessage()
    assert "\n" not in refusals[0].getMessage()
    assert TOKEN not in caplog.text and AES_KEY not in caplog.text
    assert metric(server, "invalid", f"refused_{status}") == 1


async def test_chunked_oversized_body_refused(serve: Serve, redis_client: redis.Redis) -> None:
    handler = StubHandler()
    _, sim = await serve(handler)
    query, _ = sim.request(sim.text("x"))

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: the limit must hold anyway
        for _ in range(80):
            yield b"<a>" + b"x" * 1021

    status, _ = await post_raw(sim.url, query, chunks())  # type: ignore[arg-type]
    assert status == 413
    assert handler.calls == [] and redis_client.dbsize() == 0


# --- engine failures and the 5-second budget -----------------------------------------------------


async def test_handler_error_becomes_an_apology(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    handler = StubHandler(fail=True)
    server, sim = await serve(handler)
    message = sim.text("签到", msg_id=31337)
    with caplog.at_level(logging.ERROR, logger="bot"):
        assert await sim.send(message) == APOLOGY
    assert any(r.exc_info and "engine exploded" in str(r.exc_info[1]) for r in caplog.records)
    assert await sim.send(message) == APOLOGY  # WeChat's retry: same answer, no second run
    assert len(handler.calls) == 1
    assert metric(server, "text", "error") == 1


async def test_slow_handler_answers_late(serve: Serve, redis_client: redis.Redis) -> None:
    gate = threading.Event()
    handler = StubHandler(gate=gate)
    server, sim = await serve(handler, reply_budget_s=0.2)
    message = sim.text("我的", msg_id=5150)
    assert await sim.send(message) is None  # "success": the answer will come later
    assert handler.late == []
    gate.set()
    assert await asyncio.to_thread(handler.late_done.wait, 10)
    assert handler.late == [("o-volunteer-1", "第1次：我的")]
    # a retry after the budget also gets "success", not a second copy of the answer
    assert await sim.send(message) is None
    assert len(handler.calls) == 1
    assert json.loads(redis_client.get("dedupe:msg:5150")) == {"s": "done", "r": None}
    assert metric(server, "text", "late") == 1


async def test_redis_down_still_answers(serve: Serve) -> None:
    handler = StubHandler()
    _, sim = await serve(handler, redis_url="redis://127.0.0.1:1/0")
    assert await sim.send(sim.text("帮助")) == "第1次：帮助"


# --- what reaches the handler -------------------------------------------------------------------


async def test_location_arrives_in_wgs84(serve: Serve) -> None:
    handler = StubHandler()
    _, sim = await serve(handler)
    await sim.send(sim.location(29.2785, 120.2282, "东阳市人民政府"))
    await sim.send(sim.location_event(29.1500, 120.3000))
    got, event = handler.calls
    assert (got.kind, got.label) == ("location", "东阳市人民政府")
    # the wire carried GCJ-02 (about 500 m away) rounded to 6 decimals; the handler sees WGS-84
    assert (got.lat, got.lng) == pytest.approx((29.2785, 120.2282), abs=2e-6)
    assert (event.kind, event.event) == ("event", "location")
    assert (event.lat, event.lng) == pytest.approx((29.1500, 120.3000), abs=2e-6)


async def test_voice_image_and_unsubscribe(serve: Serve) -> None:
    handler = StubHandler()
    _, sim = await serve(handler)
    assert await sim.send(sim.voice("班次")) == "第1次：班次"
    assert await sim.send(sim.image()) == "第2次：image"
    assert await sim.send(sim.event("unsubscribe")) is None
    voice, image, unsub = handler.calls
    assert (voice.kind, voice.text) == ("text", "班次")
    assert (image.kind, image.text) == ("image", "")
    assert (unsub.kind, unsub.event) == ("event", "unsubscribe")
    assert all(c.user == "o-volunteer-1" and c.channel == "wechat" for c in handler.calls)


async def test_long_reply_is_capped(serve: Serve) -> None:
    class Chatty(StubHandler):
        def handle(self, inbound: Inbound) -> str | None:
            super().handle(inbound)
            return "很长的回复" * 300

    _, sim = await serve(Chatty())
    reply = await sim.send(sim.text("帮助"))
    assert reply is not None and len(reply.encode()) <= 2048 and reply.startswith("很长的回复")


# --- `redgrid chat` against a live server -------------------------------------------------------


@pytest.mark.parametrize("aes", [False, True])
async def test_redgrid_chat_talks_to_a_live_server(serve: Serve, aes: bool) -> None:
    handler = StubHandler()
    server, _ = await serve(handler, aes=aes)
    env = {**os.environ, "WECHAT_TOKEN": TOKEN, "WECHAT_APP_ID": APP_ID, "LOG_LEVEL": "WARNING"}
    env.pop("WECHAT_AES_KEY", None)
    if aes:
        env["WECHAT_AES_KEY"] = AES_KEY
    script = "帮助\n/loc 29.2785 120.2282 东阳市人民政府\n/click RG_AED\n/voice 我的\n/image\n/bogus\n/quit\n不会发送\n"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redgrid.cli", "chat", "--as", "grid-worker",
        "--url", str(server.make_url("/wechat")),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(script.encode()), timeout=60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()
    assert [(c.kind, c.event or c.text) for c in handler.calls] == [
        ("event", "subscribe"), ("text", "帮助"), ("location", ""), ("event", "click"), ("text", "我的"),
        ("image", ""),
    ]
    assert {c.user for c in handler.calls} == {"demo-gridworker"}
    assert handler.calls[2].lat == pytest.approx(29.2785, abs=2e-6)
    assert handler.calls[3].event_key == "RG_AED"
    for n, shown in enumerate(["subscribe", "帮助", "location", "RG_AED", "我的", "image"], start=1):
        assert f"◀ 第{n}次：{shown}" in text
    assert "▶ 帮助" in text and "模拟器命令" in text  # echo (stdin not a tty) and local help
    assert "不会发送" not in text


async def test_redgrid_chat_reports_a_refusal(serve: Serve) -> None:
    server, _ = await serve(StubHandler())
    env = {**os.environ, "WECHAT_TOKEN": "not-the-token", "WECHAT_APP_ID": APP_ID}
    env.pop("WECHAT_AES_KEY", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "redgrid.cli", "chat", "--url", str(server.make_url("/wechat")),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=ROOT, env=env,
    )
    _, err = await asyncio.wait_for(proc.communicate(b"hi\n"), timeout=60)
    assert proc.returncode == 1
    assert "HTTP 403" in err.decode()


def test_chat_stops_when_the_server_cannot_be_reached() -> None:
    sim = Simulator("http://127.0.0.1:1/wechat", token=TOKEN, app_id=APP_ID, openid="demo-volunteer")
    out: list[str] = []
    errors: list[str] = []
    status = run_chat(sim, ["帮助", "班次"], out.append, err=errors.append)
    assert status == 1
    assert out == [] and len(errors) == 1 and "cannot reach" in errors[0]


def test_chat_line_commands() -> None:
    sim = Simulator("http://127.0.0.1:1/wechat", token=TOKEN, app_id=APP_ID, openid="demo-volunteer")
    loc = parse_chat_line(sim, "/loc 29.2785 120.2282 东阳 市政府")
    assert isinstance(loc, dict) and loc["MsgType"] == "location" and loc["Label"] == "东阳 市政府"
    assert loc["Location_X"] != 29.2785  # sent as GCJ-02
    click = parse_chat_line(sim, "/click RG_SOS")
    assert isinstance(click, dict) and (click["Event"], click["EventKey"]) == ("CLICK", "RG_SOS")
    assert "用法" in str(parse_chat_line(sim, "/loc north south"))
    assert "模拟器命令" in str(parse_chat_line(sim, "/nonsense"))
    assert parse_chat_line(sim, "/quit") is None
    text = parse_chat_line(sim, "报名 1")
    assert isinstance(text, dict) and text["Content"] == "报名 1"


# --- read-only turns on the event loop (InlineGate) ------------------------------------------


class ReadingHandler(StubHandler):
    """Says "查" texts only read; records which thread ran what."""

    def __init__(self, *, slow_s: float = 0.0, explode: bool = False) -> None:
        super().__init__()
        self.where: list[tuple[str, str, bool]] = []  # (text, thread, writer)
        self.slow_s = slow_s
        self.explode = explode

    def try_read_only(self, inbound: Inbound) -> tuple[bool, str | None]:
        self.where.append((inbound.text, threading.current_thread().name, False))
        if self.explode:
            raise RuntimeError("database went away")
        if not inbound.text.startswith("查"):
            return False, None
        time.sleep(self.slow_s)
        return True, f"读：{inbound.text}"

    def handle(self, inbound: Inbound, *, writer: bool = False) -> str | None:  # type: ignore[override]
        self.where.append((inbound.text, threading.current_thread().name, writer))
        return super().handle(inbound)


async def test_read_only_turns_run_inline_writers_in_the_pool(serve: Serve) -> None:
    handler = ReadingHandler()
    _, sim = await serve(handler)
    assert await sim.send(sim.text("查班次")) == "读：查班次"
    assert await sim.send(sim.text("报名 1")) == "第1次：报名 1"
    loop_thread = threading.current_thread().name  # the test server shares this loop
    assert handler.where[0] == ("查班次", loop_thread, False)
    assert handler.where[1] == ("报名 1", loop_thread, False)  # asked first, on the loop...
    text, thread, writer = handler.where[2]
    assert text == "报名 1" and thread.startswith("engine") and writer  # ...then a writer in the pool


async def test_a_slow_inline_turn_sends_the_next_ones_to_the_pool(serve: Serve) -> None:
    handler = ReadingHandler(slow_s=0.3)
    server, sim = await serve(handler)
    assert await sim.send(sim.text("查1")) == "读：查1"  # slow: the gate closes
    gate = server.app[INLINE]
    assert gate.trips == 1 and not gate.open()
    handler.slow_s = 0.0
    assert await sim.send(sim.text("查2")) == "第1次：查2"  # not tried inline: the pool's handle
    assert [w for w in handler.where if w[0] == "查2"] == [("查2", handler.where[-1][1], False)]
    assert handler.where[-1][1].startswith("engine")
    gate._closed_until = 0.0  # the cooldown is over
    assert await sim.send(sim.text("查3")) == "读：查3"


async def test_a_failing_inline_turn_is_retried_whole_in_the_pool(serve: Serve) -> None:
    handler = ReadingHandler(explode=True)
    server, sim = await serve(handler)
    assert await sim.send(sim.text("查1")) == "第1次：查1"
    assert handler.where[-1][1].startswith("engine") and handler.where[-1][2] is False
    assert server.app[INLINE].trips == 1


def test_inline_gate_reopens_after_its_cooldown() -> None:
    t = [0.0]
    gate = InlineGate(enabled=True, cooldown_s=10, clock=lambda: t[0])
    assert gate.open()
    gate.trip()
    t[0] = 9.9
    assert not gate.open()
    t[0] = 10.0
    assert gate.open()
    assert not InlineGate(enabled=False).open()


async def test_a_burst_keeps_dedupe_on(serve: Serve, caplog: pytest.LogCaptureFixture) -> None:
    """300 messages at once: each claim waits its turn for one of the edge's Redis
    connections; none is answered without its dedupe claim."""
    handler = StubHandler()
    server, _ = await serve(handler)
    url = str(server.make_url("/wechat"))
    sims = [Simulator(url, token=TOKEN, app_id=APP_ID, openid=f"o-burst-{i}") for i in range(300)]
    with caplog.at_level(logging.WARNING, logger="bot.webhook"):
        replies = await asyncio.gather(*(s.send(s.text("帮助")) for s in sims))
    assert all(r and r.endswith("帮助") for r in replies)
    assert len(handler.calls) == 300
    assert not [r for r in caplog.records if "Redis unavailable" in r.getMessage()]
    assert metric(server, "text", "replied") == 300


async def test_a_reply_batch_redis_refused_is_tried_again(redis_client: redis.Redis, redis_url: str) -> None:
    """Replies kept for WeChat's retries: a batch that failed goes again a moment later."""
    import redis.asyncio as aredis

    from bot.webhook import ReplyStore

    client = aredis.Redis.from_url(redis_url)
    failures = [1]
    real_pipeline = client.pipeline

    def flaky_pipeline(**kw):  # type: ignore[no-untyped-def]
        pipe = real_pipeline(**kw)
        if failures:
            failures.pop()

            async def boom() -> None:
                raise redis.ConnectionError("connection reset")

            pipe.execute = boom  # type: ignore[method-assign]
        return pipe

    client.pipeline = flaky_pipeline  # type: ignore[method-assign]
    try:
        redis_client.set("dedupe-k", json.dumps({"s": "pending"}), ex=60)
        store = ReplyStore(client)
        store.put("dedupe-k", json.dumps({"s": "done", "r": "好的"}))
        await store.drain(5)
        assert json.loads(redis_client.get("dedupe-k")) == {"s": "done", "r": "好的"}  # type: ignore[arg-type]
        assert not failures
    finally:
        await client.aclose()
