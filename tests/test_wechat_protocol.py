"""The WeChat callback protocol (bot/wechat.py): signatures, replay window, AES (checked
against an independent implementation), safe XML, parsing into Inbound, replies, the menu."""

from __future__ import annotations

import base64
import contextlib
import os
import struct
from datetime import UTC, datetime
from functools import cache
from xml.sax.saxutils import escape as xml_escape

import pytest
from Crypto.Cipher import AES
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from bot import wechat
from bot.menu import CLICK_KEYS, menu_definition, menu_keys, menu_problems
from dispatcher.geo import gcj02_to_wgs84, wgs84_to_gcj02
from models.exceptions import BadMessage, BadSignature, ConfigError
from models.settings import Settings, load_settings

TOKEN = "test-token"
APP_ID = "wx1234567890abcdef"
NOW = 1_714_037_059.0


def new_aes_key() -> str:
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


@cache
def aes_key() -> str:
    return new_aes_key()


def make_settings(*, aes: bool) -> Settings:
    return load_settings(
        wechat_token=TOKEN, wechat_app_id=APP_ID, wechat_aes_key=aes_key() if aes else None,
        database_url="sqlite:///:memory:", redis_url="redis://127.0.0.1:6379/2",
    )


# --- an independent implementation of WeChat's AES scheme (pycryptodome, not wechatpy) ----
# AES-256-CBC, key = base64(EncodingAESKey + "="), IV = key[:16], PKCS#7 padded to 32-byte
# blocks, plaintext = 16 random bytes + 4-byte big-endian length + xml + appid.


def ind_encrypt(xml: str, key43: str, appid: str) -> str:
    key = base64.b64decode(key43 + "=")
    raw = xml.encode()
    plain = os.urandom(16) + struct.pack(">I", len(raw)) + raw + appid.encode()
    pad = 32 - len(plain) % 32
    plain += bytes([pad]) * pad
    return base64.b64encode(AES.new(key, AES.MODE_CBC, key[:16]).encrypt(plain)).decode()


def ind_decrypt(encrypt: str, key43: str) -> tuple[str, str]:
    key = base64.b64decode(key43 + "=")
    plain = AES.new(key, AES.MODE_CBC, key[:16]).decrypt(base64.b64decode(encrypt))
    pad = plain[-1]
    assert 1 <= pad <= 32 and plain[-pad:] == bytes([pad]) * pad
    assert len(plain) % 32 == 0
    body = plain[16:-pad]
    (n,) = struct.unpack(">I", body[:4])
    return body[4 : 4 + n].decode(), body[4 + n :].decode()


# --- signatures and the replay window ------------------------------------------------------


def test_official_signature_vector() -> None:
    assert wechat.signature("AAAAA", "1714037059", "486452656") == "899cf89e464efb63f54ddac96b0a0a235f53aa78"
    wechat.check_signature("AAAAA", "899cf89e464efb63f54ddac96b0a0a235f53aa78", "1714037059", "486452656")


@pytest.mark.parametrize("given_sig", ["", "0" * 40, "899cf89e464efb63f54ddac96b0a0a235f53aa79", "签名", "\udcff"])
def test_signature_refused(given_sig: str) -> None:
    with pytest.raises(BadSignature):
        wechat.check_signature("AAAAA", given_sig, "1714037059", "486452656")


def test_msg_signature_covers_encrypt() -> None:
    plain = wechat.signature(TOKEN, "1", "2")
    with_encrypt = wechat.signature(TOKEN, "1", "2", "ENC")
    assert plain != with_encrypt
    wechat.check_signature(TOKEN, with_encrypt, "1", "2", "ENC")
    with pytest.raises(BadSignature):
        wechat.check_signature(TOKEN, plain, "1", "2", "ENC")


@pytest.mark.parametrize(("offset", "ok"), [(0, True), (300, True), (-300, True), (301, False), (-301, False),
                                            (-86400, False)])
def test_replay_window(offset: int, ok: bool) -> None:
    ts = str(int(NOW) + offset)
    if ok:
        assert wechat.check_timestamp(ts, now=NOW, window_s=300) == int(ts)
    else:
        with pytest.raises(BadSignature, match="replay window"):
            wechat.check_timestamp(ts, now=NOW, window_s=300)


@pytest.mark.parametrize("ts", ["", "abc", "-1714037059", "1.5", "１７１４０３７０５９", "9" * 40])
def test_malformed_timestamp(ts: str) -> None:
    with pytest.raises(BadSignature):
        wechat.check_timestamp(ts, now=NOW, window_s=300)


# --- AES against the independent implementation --------------------------------------------


def test_ours_encrypts_what_the_independent_one_decrypts() -> None:
    key = new_aes_key()
    xml = "<xml><Content><![CDATA[你好，志愿者]]></Content></xml>"
    enc = wechat.encrypt_payload(xml, encoding_aes_key=key, app_id=APP_ID)
    assert ind_decrypt(enc, key) == (xml, APP_ID)


def test_independent_encrypts_what_ours_decrypts() -> None:
    key = new_aes_key()
    xml = "<xml><MsgType><![CDATA[text]]></MsgType><Content><![CDATA[报名 1]]></Content></xml>"
    enc = ind_encrypt(xml, key, APP_ID)
    assert wechat.decrypt_payload(enc, encoding_aes_key=key, app_id=APP_ID) == xml
    with pytest.raises(BadSignature, match="app id"):
        wechat.decrypt_payload(enc, encoding_aes_key=key, app_id="wxSomeoneElse00000")


@pytest.mark.parametrize("garbage", ["", "not base64!", base64.b64encode(b"x" * 15).decode(),
                                     base64.b64encode(b"\0" * 32).decode()])
def test_garbage_ciphertext_is_a_bad_message(garbage: str) -> None:
    with pytest.raises((BadMessage, BadSignature)):
        wechat.decrypt_payload(garbage, encoding_aes_key=new_aes_key(), app_id=APP_ID)


def test_bad_aes_key_is_a_config_error() -> None:
    with pytest.raises(ConfigError):
        wechat.aes_key_bytes("!" * 43)
    with pytest.raises(ConfigError, match="WECHAT_AES_KEY"):
        load_settings(wechat_aes_key="*" * 43)


def safe_request(inner_xml: str, *, appid: str = APP_ID, ts: str = str(int(NOW)), nonce: str = "486452656",
                 compatible: bool = False) -> tuple[dict[str, str], bytes]:
    enc = ind_encrypt(inner_xml, aes_key(), appid)
    query = {
        "signature": wechat.signature(TOKEN, ts, nonce),
        "msg_signature": wechat.signature(TOKEN, ts, nonce, enc),
        "timestamp": ts, "nonce": nonce, "encrypt_type": "aes", "openid": "o-user",
    }
    outer = inner_xml.replace("</xml>", "") if compatible else "<xml><ToUserName><![CDATA[gh_a]]></ToUserName>"
    return query, f"{outer}<Encrypt><![CDATA[{enc}]]></Encrypt></xml>".encode()


TEXT_XML = ("<xml><ToUserName><![CDATA[gh_a]]></ToUserName><FromUserName><![CDATA[o-user]]></FromUserName>"
            "<CreateTime>1714037059</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            "<Content><![CDATA[帮助]]></Content><MsgId>1234567890123456</MsgId></xml>")


@pytest.mark.parametrize("compatible", [False, True])
def test_safe_mode_round_trip(compatible: bool) -> None:
    s = make_settings(aes=True)
    query, body = safe_request(TEXT_XML, compatible=compatible)
    env = wechat.open_envelope(query=query, body=body, settings=s, now=NOW)
    assert env.encrypted
    assert env.fields["Content"] == "帮助" and env.fields["FromUserName"] == "o-user"

    reply = wechat.render_text_reply(to_user="o-user", from_user="gh_a", content="您好", create_time=int(NOW))
    sealed = wechat.seal_reply(reply, envelope=env, settings=s, now=NOW, nonce="777")
    outer = wechat.parse_xml(sealed)
    assert set(outer) == {"Encrypt", "MsgSignature", "TimeStamp", "Nonce"}
    assert outer["MsgSignature"] == wechat.signature(TOKEN, outer["TimeStamp"], "777", outer["Encrypt"])
    inner, appid = ind_decrypt(outer["Encrypt"], aes_key())
    assert appid == APP_ID
    assert wechat.parse_xml(inner)["Content"] == "您好"
    # and our client-side reader agrees
    assert wechat.open_reply(sealed, token=TOKEN, encoding_aes_key=aes_key(), app_id=APP_ID)["Content"] == "您好"


def test_safe_mode_checks_msg_signature_not_signature() -> None:
    s = make_settings(aes=True)
    query, body = safe_request(TEXT_XML)
    forged = dict(query, msg_signature=query["signature"])  # valid plain signature only
    with pytest.raises(BadSignature):
        wechat.open_envelope(query=forged, body=body, settings=s, now=NOW)
    # the plain `signature` may even be wrong: msg_signature is what counts
    env = wechat.open_envelope(query=dict(query, signature="x"), body=body, settings=s, now=NOW)
    assert env.fields["MsgType"] == "text"


def test_safe_mode_refuses_other_app_and_stale() -> None:
    s = make_settings(aes=True)
    query, body = safe_request(TEXT_XML, appid="wxSomeoneElse00000")
    with pytest.raises(BadSignature, match="app id"):
        wechat.open_envelope(query=query, body=body, settings=s, now=NOW)
    query, body = safe_request(TEXT_XML, ts=str(int(NOW) - 3600))
    with pytest.raises(BadSignature, match="replay"):
        wechat.open_envelope(query=query, body=body, settings=s, now=NOW)


def test_encrypted_request_without_key() -> None:
    s = make_settings(aes=False)
    query, body = safe_request(TEXT_XML)
    with pytest.raises(BadMessage, match="WECHAT_AES_KEY"):
        wechat.open_envelope(query=query, body=body, settings=s, now=NOW)
    # a compatible-mode body still carries the plain fields: answered plain
    query, body = safe_request(TEXT_XML, compatible=True)
    env = wechat.open_envelope(query=query, body=body, settings=s, now=NOW)
    assert not env.encrypted and env.fields["Content"] == "帮助"


# --- GCJ-02 <-> WGS-84 -----------------------------------------------------------------------

# Published vectors (wgsLat, wgsLng, gcjLat, gcjLng) from googollee/eviltransform's test suite,
# https://github.com/googollee/eviltransform/blob/master/python/test.py
EVILTRANSFORM = [
    (31.1774276, 121.5272106, 31.17530398364597, 121.531541859215),  # Shanghai
    (22.543847, 113.912316, 22.540796131694766, 113.9171764808363),  # Shenzhen
    (39.911954, 116.377817, 39.91334545536069, 116.38404722455657),  # Beijing
]


@pytest.mark.parametrize(("wlat", "wlng", "glat", "glng"), EVILTRANSFORM)
def test_gcj02_published_vectors(wlat: float, wlng: float, glat: float, glng: float) -> None:
    assert wgs84_to_gcj02(wlat, wlng) == pytest.approx((glat, glng), abs=1e-9)
    assert gcj02_to_wgs84(glat, glng) == pytest.approx((wlat, wlng), abs=1e-8)


@given(st.floats(18.0, 53.0), st.floats(74.0, 134.0))
def test_gcj02_round_trip(lat: float, lng: float) -> None:
    glat, glng = wgs84_to_gcj02(lat, lng)
    assert abs(glat - lat) + abs(glng - lng) > 1e-4  # inside China the offset is real
    back = gcj02_to_wgs84(glat, glng)
    assert back == pytest.approx((lat, lng), abs=1e-6)


def test_location_message_is_converted_to_wgs84() -> None:
    wlat, wlng, glat, glng = EVILTRANSFORM[0]
    fields = wechat.parse_xml(
        "<xml><ToUserName>gh</ToUserName><FromUserName>o1</FromUserName><CreateTime>1714037059</CreateTime>"
        f"<MsgType>location</MsgType><Location_X>{glat}</Location_X><Location_Y>{glng}</Location_Y>"
        "<Scale>15</Scale><Label><![CDATA[上海市浦东新区]]></Label><MsgId>42</MsgId></xml>"
    )
    msg = wechat.to_inbound(fields)
    assert (msg.kind, msg.label, msg.msg_id) == ("location", "上海市浦东新区", "42")
    assert (msg.lat, msg.lng) == pytest.approx((wlat, wlng), abs=1e-8)


# --- safe XML --------------------------------------------------------------------------------

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<xml><ToUserName>gh</ToUserName><FromUserName>o</FromUserName><CreateTime>1</CreateTime>
<MsgType>text</MsgType><Content>&lol3;</Content></xml>"""

XXE = b"""<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>
<xml><MsgType>text</MsgType><Content>&e;</Content></xml>"""


@pytest.mark.parametrize("body", [BILLION_LAUGHS, XXE, BILLION_LAUGHS.decode().encode("utf-16"),
                                  b"<!doctype xml><xml/>", b"<xml><a>1</a>", b"", b"   ", b"<notxml/>",
                                  b"<xml>" + b"<a>x</a>" * 20000 + b"</xml>"])
def test_hostile_or_broken_xml_refused(body: bytes) -> None:
    with pytest.raises(BadMessage):
        wechat.parse_xml(body, max_bytes=64 * 1024)


@given(st.binary(max_size=600))
def test_parser_never_raises_on_bytes(body: bytes) -> None:
    with contextlib.suppress(BadMessage):
        wechat.to_inbound(wechat.parse_xml(body))


FIELD_NAMES = ["ToUserName", "FromUserName", "CreateTime", "MsgType", "Content", "MsgId", "Event", "EventKey",
               "Location_X", "Location_Y", "Latitude", "Longitude", "Label", "Recognition", "Encrypt"]
MSG_TYPES = ["text", "image", "voice", "video", "shortvideo", "link", "location", "event", "EVENT", "file", ""]


VALID = {"ToUserName": "gh_a", "FromUserName": "o-user", "CreateTime": "1714037059", "MsgId": "42",
         "Location_X": "29.27", "Location_Y": "120.22", "Latitude": "29.1", "Longitude": "120.3"}


def _value(draw: st.DrawFn, name: str) -> str:
    if name in VALID and draw(st.integers(0, 3)) > 0:
        return VALID[name]
    if name == "MsgType":
        return draw(st.sampled_from(MSG_TYPES))
    if name == "Event":
        return draw(st.sampled_from(["subscribe", "unsubscribe", "CLICK", "LOCATION", "SCAN", "VIEW", "", "x"]))
    if name in ("CreateTime", "MsgId", "Location_X", "Location_Y", "Latitude", "Longitude"):
        return draw(st.one_of(st.integers(-10**30, 10**30).map(str), st.floats().map(str),
                              st.floats(-200, 200).map(str), st.text(max_size=8)))
    return draw(st.text(max_size=20))


@st.composite
def xmlish(draw: st.DrawFn) -> str:
    """Documents close to real messages: the usual tags, mostly present, with hostile values."""
    names = [n for n in FIELD_NAMES[:4] if draw(st.integers(0, 9)) > 0]  # required ones, usually
    names += draw(st.lists(st.sampled_from(FIELD_NAMES), max_size=8))
    parts = []
    for name in names:
        value = _value(draw, name)
        if draw(st.booleans()):
            value = wechat.cdata(wechat.xml_safe(value))
        elif draw(st.integers(0, 9)) > 0:
            value = xml_escape(wechat.xml_safe(value))  # usually well-formed, sometimes not
        parts.append(f"<{name}>{value}</{name}>")
    head = draw(st.sampled_from(["<xml>"] * 12 + ["<xml >", "<Xml>", ""]))
    tail = draw(st.sampled_from(["</xml>"] * 12 + ["", "</xml>junk"]))
    return head + "".join(parts) + tail


@given(st.one_of(st.text(max_size=400), xmlish()))
@hsettings(max_examples=300)
def test_parser_never_raises_on_text(doc: str) -> None:
    try:
        msg = wechat.to_inbound(wechat.parse_xml(doc))
    except BadMessage:
        return
    assert msg.kind in ("text", "location", "event", "image", "voice", "video", "link", "unknown")
    assert msg.user.strip() and msg.at.tzinfo is not None


@given(xmlish(), st.sampled_from(["plain", "aes"]))
def test_open_envelope_only_refuses_with_our_errors(doc: str, mode: str) -> None:
    s = make_settings(aes=mode == "aes")
    ts, nonce = str(int(NOW)), "1"
    query = {"signature": wechat.signature(TOKEN, ts, nonce), "timestamp": ts, "nonce": nonce}
    body = doc
    if mode == "aes":
        enc = base64.b64encode(doc.encode()).decode()  # not a real ciphertext
        query.update(encrypt_type="aes", msg_signature=wechat.signature(TOKEN, ts, nonce, enc))
        body = f"<xml><Encrypt>{enc}</Encrypt></xml>"
    try:
        env = wechat.open_envelope(query=query, body=body.encode(), settings=s, now=NOW)
        wechat.to_inbound(env.fields)
    except (BadMessage, BadSignature):
        pass


@given(st.binary(min_size=0, max_size=200))
def test_decrypt_garbage_only_our_errors(raw: bytes) -> None:
    with contextlib.suppress(BadMessage, BadSignature):
        wechat.decrypt_payload(base64.b64encode(raw).decode(), encoding_aes_key=aes_key(), app_id=APP_ID)


# XML 1.0 text: the characters XML can carry, without "\r" (parsers normalise line ends)
xml_text = st.text(max_size=300).map(wechat.xml_safe).map(lambda s: s.replace("\r", ""))


@given(xml_text)
def test_text_content_survives_the_wire(content: str) -> None:
    doc = wechat.build_xml({"ToUserName": "gh", "FromUserName": "o-user", "CreateTime": 1714037059,
                            "MsgType": "text", "Content": content, "MsgId": 1})
    msg = wechat.to_inbound(wechat.parse_xml(doc))
    assert (msg.kind, msg.text) == ("text", content)


# --- Inbound kinds -------------------------------------------------------------------------


def fields(msg_type: str, **extra: str) -> dict[str, str]:
    return {"ToUserName": "gh", "FromUserName": "o-user", "CreateTime": "1714037059", "MsgType": msg_type,
            **extra}


@pytest.mark.parametrize(("msg", "kind", "text"), [
    (fields("text", Content="  报名 1 ", MsgId="9"), "text", "  报名 1 "),
    (fields("voice", Recognition="帮助。", MsgId="9"), "text", "帮助。"),
    (fields("voice", Recognition="", MsgId="9"), "voice", ""),
    (fields("image", PicUrl="http://x", MsgId="9"), "image", ""),
    (fields("video", MsgId="9"), "video", ""),
    (fields("shortvideo", MsgId="9"), "video", ""),
    (fields("link", Title="t", MsgId="9"), "link", ""),
    (fields("miniprogrampage", MsgId="9"), "unknown", ""),
])
def test_message_kinds(msg: dict[str, str], kind: str, text: str) -> None:
    inbound = wechat.to_inbound(msg)
    assert (inbound.kind, inbound.text, inbound.user) == (kind, text, "o-user")
    assert inbound.at == datetime(2024, 4, 25, 9, 24, 19, tzinfo=UTC)
    assert inbound.msg_id == "9"


@pytest.mark.parametrize(("event", "key", "want_event", "want_key"), [
    ("subscribe", "", "subscribe", ""),
    ("subscribe", "qrscene_123", "subscribe", "123"),
    ("unsubscribe", "", "unsubscribe", ""),
    ("CLICK", "RG_SHIFTS", "click", "RG_SHIFTS"),
    ("SCAN", "123", "scan", "123"),
    ("VIEW", "https://example.org/", "view", "https://example.org/"),
    ("TEMPLATESENDJOBFINISH", "", "templatesendjobfinish", ""),
])
def test_events(event: str, key: str, want_event: str, want_key: str) -> None:
    inbound = wechat.to_inbound(fields("event", Event=event, EventKey=key))
    assert (inbound.kind, inbound.event, inbound.event_key) == ("event", want_event, want_key)


def test_location_event_is_converted() -> None:
    wlat, wlng, glat, glng = EVILTRANSFORM[1]
    inbound = wechat.to_inbound(fields("event", Event="LOCATION", Latitude=str(glat), Longitude=str(glng),
                                       Precision="65.0"))
    assert (inbound.kind, inbound.event) == ("event", "location")
    assert (inbound.lat, inbound.lng) == pytest.approx((wlat, wlng), abs=1e-8)


@pytest.mark.parametrize("bad", [fields("location", Location_X="nan", Location_Y="120"),
                                 fields("location", Location_X="91", Location_Y="120"),
                                 fields("location", Location_X="", Location_Y="120"),
                                 fields("event", Event=""), fields("text", CreateTime="soon")])
def test_bad_fields_refused(bad: dict[str, str]) -> None:
    with pytest.raises(BadMessage):
        wechat.to_inbound(bad)


def test_dedupe_keys() -> None:
    assert wechat.dedupe_key(fields("text", MsgId="77")) == "dedupe:msg:77"
    assert wechat.dedupe_key(fields("event", Event="CLICK", EventKey="RG_AED")) == "dedupe:ev:o-user:1714037059:click"
    assert wechat.dedupe_key(fields("text")) == "dedupe:msg:o-user:1714037059:text"


# --- replies -------------------------------------------------------------------------------


@given(st.text(max_size=1500))
def test_reply_never_over_2048_bytes(content: str) -> None:
    xml = wechat.render_text_reply(to_user="o-user", from_user="gh", content=content, create_time=1)
    got = wechat.parse_xml(xml)
    assert got["MsgType"] == "text" and got["ToUserName"] == "o-user" and got["FromUserName"] == "gh"
    clean = wechat.xml_safe(content).replace("\r\n", "\n").replace("\r", "\n")
    assert len(got["Content"].encode()) <= wechat.MAX_REPLY_BYTES
    assert clean.startswith(got["Content"])
    if len(clean.encode()) <= wechat.MAX_REPLY_BYTES:
        assert got["Content"] == clean


def test_long_reply_cut_at_a_character_boundary(caplog: pytest.LogCaptureFixture) -> None:
    content = "志" * 700 + "]]>"  # 2,100 bytes
    xml = wechat.render_text_reply(to_user="o-user", from_user="gh", content=content, create_time=1)
    got = wechat.parse_xml(xml)["Content"]
    assert got == "志" * 682  # 2,046 bytes; a 683rd would be 2,049
    assert "truncated" in caplog.text


def test_cdata_terminator_in_reply() -> None:
    xml = wechat.render_text_reply(to_user="o", from_user="gh", content="a]]>b<c>&d", create_time=1)
    assert wechat.parse_xml(xml)["Content"] == "a]]>b<c>&d"


# --- the menu ------------------------------------------------------------------------------


def test_menu_is_acceptable_and_complete() -> None:
    menu = menu_definition()
    assert menu_problems(menu) == []
    keys = menu_keys(menu)
    assert sorted(keys) == sorted(CLICK_KEYS) and len(keys) == len(set(keys)) == 9
    assert all(len(b["name"]) <= 5 for top in menu["button"] for b in [top, *top["sub_button"]])


def test_menu_problems_found() -> None:
    too_many = {"button": [{"name": "一二三四五六", "sub_button": [{"type": "click", "name": "x", "key": ""}] * 6}] * 4}
    problems = menu_problems(too_many)
    assert any("top buttons" in p for p in problems)
    assert any("sub-buttons" in p for p in problems)
    assert any("bad key" in p for p in problems)
    assert any("over 16 bytes" in p for p in problems)
