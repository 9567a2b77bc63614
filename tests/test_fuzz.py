"""Hostile input: generated and mutated bodies through the protocol layer and the real webhook
(real engine, SQLite, real Redis), and random texts through every step of every dialog.

What must hold for every input: the protocol layer answers or raises BadMessage/BadSignature
and nothing else; the webhook answers 200 (a reply or "success"), 400, 403 or 413, never a
500, within a bounded time, with no ERROR in the log (the engine's catch-all apology counts
as a failure here: hostile text must be handled, not survived); a dialog step answers with a
reply that fits WeChat's 2,048 bytes and leaves a readable dialog state (or none).

The budget: ``REDGRID_FUZZ_EXAMPLES`` (default 10,000) examples in total, split 50% protocol,
20% webhook, 30% dialogs. Each test prints its count and outcome.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from aiohttp import web
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from sqlalchemy.engine import Engine

from bot import dialogs, wechat
from bot.app import create_app
from bot.engine import Conversation
from bot.inbound import Inbound
from bot.simulator import Simulator
from bot.state import Dialog, DialogStore
from dispatcher import aed as aed_rank
from models.db import make_engine, session_factory, utcnow
from models.exceptions import BadMessage, BadSignature
from models.migrate import upgrade
from models.settings import Settings, load_settings
from tests.world import GOV, build_world

TOTAL = int(os.environ.get("REDGRID_FUZZ_EXAMPLES", "10000"))
N_PROTOCOL = TOTAL * 50 // 100
N_WEBHOOK = TOTAL * 20 // 100
N_DIALOG = TOTAL - N_PROTOCOL - N_WEBHOOK

TOKEN = "fuzz-token-0001"
APP_ID = "wx1234567890abcdef"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"
FUZZ = hsettings(deadline=None, database=None, derandomize=False, print_blob=True,
                 suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                        HealthCheck.data_too_large])


def report(capsys: pytest.CaptureFixture[str], line: str) -> None:
    with capsys.disabled():
        print(f"\n[fuzz] {line}")


# --- inputs --------------------------------------------------------------------------------------

TAGS = ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content", "MsgId", "Event", "EventKey",
        "Location_X", "Location_Y", "Scale", "Label", "Recognition", "Latitude", "Longitude", "Encrypt",
        "PicUrl", "MediaId", "Format", "xml", "a"]  # fmt: skip
MSG_TYPES = ["text", "event", "location", "voice", "image", "video", "shortvideo", "link", "file", "", "TEXT"]
EVENTS = ["subscribe", "unsubscribe", "CLICK", "VIEW", "SCAN", "LOCATION", "", "weird"]
# texts that look like what the parsers wait for, so mutations land near the edges
NEAR = ["帮助", "注册", "上报", "广播", "班次", "更多", "我的", "报名 1", "取消 9999999999", "接受 T1", "退出", "确认",
        "修改", "是", "不限", "全市", "江北街道", "东丰村", "13812345678", "１３８１２３４５６７８", "2027-06-30",
        "2027/13/45", "明天16:00", "0", "1 2 3", "９", "-1", "1e9", "99999999999999999999", "AED", "急救", "sos"]
lat = st.floats(min_value=-90, max_value=90, allow_nan=False)
lng = st.floats(min_value=-180, max_value=180, allow_nan=False)
value = st.one_of(
    st.text(max_size=60),
    st.sampled_from(MSG_TYPES + EVENTS + NEAR),
    st.integers(min_value=-(10**20), max_value=10**20).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.binary(max_size=40).map(lambda b: b.decode("latin-1")),
)
texts = st.one_of(
    st.text(max_size=80),
    st.sampled_from(NEAR),
    st.tuples(st.sampled_from(NEAR), st.text(max_size=12)).map("".join),
    st.text(alphabet="0123456789０１２３４５６７８９ -:/年月日号点T", max_size=20),
    st.text(min_size=500, max_size=3000),
)


@st.composite
def fields(draw: Any) -> dict[str, str]:
    """A field dict near WeChat's: the required ones usually present, values anything."""
    out: dict[str, str] = {}
    for name in ("ToUserName", "FromUserName", "CreateTime", "MsgType"):
        if draw(st.integers(0, 9)):
            out[name] = draw(value)
    if draw(st.booleans()):
        out["FromUserName"] = draw(st.sampled_from(["fuzz-user-1", "fuzz-user-2", "demo-volunteer"]))
    if draw(st.booleans()):
        out["CreateTime"] = str(int(time.time()))
    if draw(st.booleans()):
        out["MsgType"] = draw(st.sampled_from(MSG_TYPES))
    for name in draw(st.lists(st.sampled_from(TAGS), max_size=6)):
        out[name] = draw(value)
    if out.get("MsgType") == "text":
        out["Content"] = draw(texts)
    if out.get("MsgType") == "event":
        out["Event"] = draw(st.sampled_from(EVENTS))
    if out.get("MsgType") == "location" and draw(st.booleans()):
        out["Location_X"], out["Location_Y"] = repr(draw(lat)), repr(draw(lng))
    return out


def mutate(data: bytes, rnd: random.Random) -> bytes:
    """Byte-level mutations a fuzzer would make: cut, splice, flip, duplicate, inject markup."""
    b = bytearray(data)
    for _ in range(rnd.randint(1, 4)):
        op = rnd.randrange(6)
        i = rnd.randrange(len(b) + 1)
        if op == 0 and b:
            del b[i : i + rnd.randint(1, 16)]
        elif op == 1:
            b[i:i] = rnd.randbytes(rnd.randint(1, 8))
        elif op == 2 and b:
            b[min(i, len(b) - 1)] ^= 1 << rnd.randrange(8)
        elif op == 3 and b:
            j = rnd.randrange(len(b))
            b[i:i] = b[j : j + rnd.randint(1, 64)]
        elif op == 4:
            b[i:i] = rnd.choice([b"<!DOCTYPE x [<!ENTITY a 'b'>]>", b"&a;", b"<![CDATA[", b"]]>", b"<xml>",
                                 b"</xml>", b"<?xml version='1.0' encoding='gbk'?>", b"\x00", b"\xff\xfe", b"&#0;",
                                 b"<x:y xmlns:x='urn:z'>", b"<!-- -->"])
        else:
            b = b[: rnd.randint(0, len(b))]
    return bytes(b)


@st.composite
def bodies(draw: Any) -> tuple[str, bytes]:
    """(mode, body): random bytes, a generated document, or a mutated valid one."""
    mode = draw(st.sampled_from(["plain", "plain", "safe"]))
    kind = draw(st.sampled_from(["bytes", "doc", "mutated", "mutated", "message", "message"]))
    if kind == "bytes":
        return mode, draw(st.binary(max_size=512))
    if kind == "message":  # well-formed, so the hostile part reaches the engine
        sim = Simulator("http://unused", token=TOKEN, app_id=APP_ID,
                        openid=draw(st.sampled_from(["fuzz-user-1", "demo-volunteer", "demo-gridworker",
                                                     "demo-coordinator", "o" + "x" * 27])))
        msg = draw(st.one_of(
            texts.map(sim.text),
            st.tuples(st.floats(-85, 85), st.floats(-179, 179), st.text(max_size=30)).map(
                lambda t: sim.location(*t)),
            st.tuples(st.sampled_from(EVENTS), st.text(max_size=20)).map(lambda t: sim.event(*t)),
            texts.map(sim.voice),
        ))
        return mode, wechat.build_xml(msg).encode("utf-8")
    doc = wechat.build_xml(draw(fields())).encode("utf-8")
    if kind == "mutated":
        doc = mutate(doc, random.Random(draw(st.integers(0, 2**32))))
    return mode, doc


def sign(mode: str, body: bytes, *, token: str = TOKEN) -> tuple[dict[str, str], bytes]:
    """The query (and, in safe mode, the encrypted outer body) WeChat would send for ``body``."""
    ts, nonce = str(int(time.time())), str(random.randrange(10**9))
    query = {"timestamp": ts, "nonce": nonce, "signature": wechat.signature(token, ts, nonce)}
    if mode == "plain":
        return query, body
    encrypt = wechat.encrypt_payload(body.decode("utf-8", "replace"), encoding_aes_key=AES_KEY, app_id=APP_ID)
    query.update(encrypt_type="aes", msg_signature=wechat.signature(token, ts, nonce, encrypt))
    return query, wechat.build_xml({"ToUserName": "gh_fuzz", "Encrypt": encrypt}).encode()


# --- 1. the protocol layer (pure) --------------------------------------------------------------


def test_protocol_layer_refuses_cleanly(capsys: pytest.CaptureFixture[str]) -> None:
    settings = load_settings(wechat_token=TOKEN, wechat_app_id=APP_ID, wechat_aes_key=AES_KEY)
    outcomes: Counter[str] = Counter()

    @hsettings(FUZZ, max_examples=N_PROTOCOL)
    @given(bodies())
    def run(case: tuple[str, bytes]) -> None:
        mode, body = case
        query, wire = sign(mode, body)
        try:
            env = wechat.open_envelope(query=query, body=wire, settings=settings, now=time.time())
            inbound = wechat.to_inbound(env.fields)
            wechat.dedupe_key(env.fields)
            assert isinstance(inbound, Inbound)
            outcomes["parsed"] += 1
        except BadMessage:
            outcomes["BadMessage"] += 1
        except BadSignature:
            outcomes["BadSignature"] += 1

    run()
    n = sum(outcomes.values())
    report(capsys, f"protocol: {n} bodies, {dict(outcomes)}, nothing else raised")
    assert n >= N_PROTOCOL * 0.9 and outcomes["parsed"] > 0 and outcomes["BadMessage"] > 0


# --- 2. the real webhook -----------------------------------------------------------------------


class ThreadServer:
    """The real app on 127.0.0.1 in a background loop, so hypothesis can drive it synchronously."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.loop = asyncio.new_event_loop()
        self.runner = web.AppRunner(app, access_log=None)
        self.port = 0
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def __enter__(self) -> ThreadServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)
        return self

    async def _start(self) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def sqlite_world(tmp_path: Path) -> Iterator[tuple[Engine, Any]]:
    """A SQLite database of its own with the small test world (fuzzing needs one back end)."""
    engine = make_engine(load_settings(database_url=f"sqlite:///{tmp_path / 'fuzz.db'}"))
    upgrade(engine)
    sessions = session_factory(engine)
    build_world(sessions, utcnow())
    yield engine, sessions
    engine.dispose()


@pytest.fixture
def fuzz_settings(sqlite_world: tuple[Engine, Any], redis_client: redis.Redis, redis_url: str,
                  tmp_path: Path) -> Settings:
    return load_settings(
        database_url=str(sqlite_world[0].url), redis_url=redis_url, var_dir=tmp_path / "var",
        wechat_token=TOKEN, wechat_app_id=APP_ID, wechat_aes_key=AES_KEY,
        wechat_api_base="http://127.0.0.1:9", ratelimit_messages=0,
    )


def test_webhook_never_500s(fuzz_settings: Settings, capsys: pytest.CaptureFixture[str]) -> None:
    statuses: Counter[int] = Counter()
    errors = Errors()
    logging.getLogger().addHandler(errors)
    try:
        with ThreadServer(create_app(fuzz_settings)) as server, requests.Session() as http:
            url = f"http://127.0.0.1:{server.port}/wechat"

            @hsettings(FUZZ, max_examples=N_WEBHOOK)
            @given(bodies())
            def run(case: tuple[str, bytes]) -> None:
                mode, body = case
                query, wire = sign(mode, body)
                resp = http.post(url, params=query, data=wire, timeout=10)  # a hang fails here
                statuses[resp.status_code] += 1
                assert resp.status_code in (200, 400, 403, 413), resp.status_code
                if resp.status_code == 200 and resp.text != wechat.SUCCESS:
                    sim = Simulator(url, token=TOKEN, app_id=APP_ID, openid="x", aes_key=AES_KEY)
                    reply = wechat.open_reply(resp.content, token=TOKEN, encoding_aes_key=AES_KEY, app_id=APP_ID)
                    assert reply["MsgType"] == "text" and len(reply["Content"].encode()) <= 2048
                    assert sim.aes_key
                assert not errors.records, errors.records[0].getMessage()

            run()
    finally:
        logging.getLogger().removeHandler(errors)
    n = sum(statuses.values())
    report(capsys, f"webhook: {n} requests, statuses {dict(sorted(statuses.items()))}, no 500, no ERROR logged")
    assert n >= N_WEBHOOK * 0.9 and statuses[200] > 0 and statuses[400] > 0


# --- 3. every dialog step ----------------------------------------------------------------------

PATHS: dict[str, list[str | tuple[float, float]]] = {
    "fuzz-registrant": ["注册", "赵敏", "13900001234", "东丰村", "2", "1 2", "2027-06-30"],
    "demo-gridworker": ["上报", "3", "冰柜空了", "是", "1", "2"],
    "demo-coordinator": ["广播", "江北街道", "不限", "周日宣传，需要10位志愿者。"],
}
EXTRA = {"demo-gridworker": ["上报", "4"]}  # the faulty-AED branch has its own steps


def _inbound(user: str, what: str | tuple[float, float]) -> Inbound:
    if isinstance(what, tuple):
        return Inbound(user=user, kind="location", lat=what[0], lng=what[1])
    return Inbound(user=user, kind="text", text=what)


def test_every_dialog_step_survives_any_text(sqlite_world: tuple[Engine, Any], fuzz_settings: Settings,
                                             redis_client: redis.Redis, capsys: pytest.CaptureFixture[str]) -> None:
    _engine, sessions = sqlite_world
    conv = Conversation(settings=fuzz_settings, sessions=sessions, redis_client=redis_client)
    store = DialogStore(redis_client, ttl_s=600)
    snapshots: list[tuple[str, Dialog]] = []
    for user, path in [*PATHS.items(), *EXTRA.items()]:
        for answer in path:
            conv.handle(_inbound(user, answer))
            d = store.load(user)
            assert d is not None, f"{user} left the dialog at {answer!r}"
            if (d.name, d.step) not in {(s.name, s.step) for _u, s in snapshots}:
                snapshots.append((user, Dialog(d.name, d.step, json.loads(json.dumps(d.data)))))
    steps = {(d.name, d.step) for _u, d in snapshots}
    assert {n for n, _s in steps} == set(dialogs.STEPS) and len(steps) >= 12, steps
    seen: Counter[str] = Counter()

    @hsettings(FUZZ, max_examples=N_DIALOG)
    @given(st.integers(0, len(snapshots) - 1),
           st.one_of(texts, st.tuples(lat, lng), st.just((GOV[0], GOV[1]))))
    def run(i: int, what: str | tuple[float, float]) -> None:
        user, snap = snapshots[i]
        store.save(user, snap)
        reply = conv.handle(_inbound(user, what))
        assert reply is None or (isinstance(reply, str) and 0 < len(reply.encode()) <= 2048)
        raw = redis_client.get(f"rg:dialog:{user}")
        if raw is not None:
            after = Dialog(**json.loads(raw))
            assert after.name in {*dialogs.STEPS, "sos", "checkin_location"}  # SOS/check-in wait for a location
        seen[f"{snap.name}.{snap.step}"] += 1

    run()
    n = sum(seen.values())
    report(capsys, f"dialogs: {n} texts/locations over {len(seen)} steps {dict(sorted(seen.items()))}")
    assert n >= N_DIALOG * 0.9 and len(seen) == len(snapshots)


# --- the AED shortcut keeps the ranking --------------------------------------------------------


@hsettings(max_examples=300, deadline=None, database=None)
@given(st.lists(st.tuples(st.floats(29.0, 29.5), st.floats(120.0, 120.6),
                          st.sampled_from(["24h", "08:00-17:00", "20:00-06:00", "09:00-12:00,14:00-18:00"])),
                max_size=40),
       st.floats(29.0, 29.5), st.floats(120.0, 120.6), st.integers(0, 23))
def test_aed_prefilter_gives_the_same_three(points: list[tuple[float, float, str]], qlat: float, qlng: float,
                                            hour: int) -> None:
    from datetime import time as dtime

    aeds = [aed_rank.AEDPoint(i, f"AED{i}", a, b, h, True) for i, (a, b, h) in enumerate(points)]
    at = dtime(hour, 30)
    full = aed_rank.rank_all(aeds, qlat, qlng, at, k=3)
    fast = aed_rank.nearest(aeds, qlat, qlng, at, k=3)
    assert [h.aed.id for h in fast] == [h.aed.id for h in full]
