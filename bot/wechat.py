"""The WeChat Official Account callback protocol, as pure functions (no I/O, clock passed in).

Both directions live here so the server (bot/webhook.py) and the chat simulator
(bot/simulator.py) speak exactly the same protocol:

- signatures: sha1 over the sorted token, timestamp, nonce (and, in safe mode, the Encrypt
  field); compared in constant time;
- replay window: a request whose timestamp is far from now is refused even when signed;
- XML: untrusted, so size-bounded, parsed with defusedxml, and any DOCTYPE/ENTITY refused
  (billion laughs, XXE);
- modes: plain (no AES key), compatible (plain fields and an Encrypt field side by side) and
  safe (Encrypt only). ``encrypt_type=aes`` in the query marks an encrypted request; then
  ``msg_signature`` (not ``signature``) is what authenticates it, the payload is decrypted
  through wechatpy and its trailing app id must be ours, and the reply is encrypted too;
- parsing into the channel-agnostic ``Inbound`` (GCJ-02 positions converted to WGS-84);
- the passive text reply, never over 2,048 bytes of content.

Every refusal is a ``BadSignature`` (answer 403) or a ``BadMessage`` (answer 400); nothing
else escapes these functions for any input.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import logging
import math
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from xml.etree.ElementTree import Element

import defusedxml.ElementTree as SafeET
from wechatpy.crypto import PrpCrypto
from wechatpy.exceptions import InvalidAppIdException

from bot.inbound import Inbound, Kind
from dispatcher.geo import gcj02_to_wgs84
from models.exceptions import BadMessage, BadSignature, ConfigError
from models.settings import Settings

log = logging.getLogger(__name__)

SUCCESS = "success"  # the body that tells WeChat "received, nothing to say now"
MAX_REPLY_BYTES = 2048  # WeChat's limit on a passive text reply's content
DEFAULT_MAX_BYTES = 64 * 1024

# XML 1.0 cannot carry these characters at all, not even in CDATA; a reply that contained
# one would be rejected by WeChat as a whole.
_XML_INVALID = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_DECL = re.compile(rb"<!\s*(doctype|entity)", re.IGNORECASE)


@dataclass(frozen=True)
class Envelope:
    """A verified (and, in safe mode, decrypted) request: its fields and how to answer."""

    fields: dict[str, str]
    encrypted: bool  # the reply must be encrypted too
    timestamp: str
    nonce: str


# --- signatures and the replay window ------------------------------------------------------


def signature(token: str, timestamp: str, nonce: str, encrypt: str | None = None) -> str:
    """WeChat's callback signature: sha1 of the byte-wise sorted, concatenated parts."""
    parts = [p.encode("utf-8", "surrogatepass") for p in (token, timestamp, nonce)]
    if encrypt is not None:
        parts.append(encrypt.encode("utf-8", "surrogatepass"))
    return hashlib.sha1(b"".join(sorted(parts))).hexdigest()


def check_signature(token: str, given: str, timestamp: str, nonce: str, encrypt: str | None = None) -> None:
    expected = signature(token, timestamp, nonce, encrypt)
    # bytes, because compare_digest refuses non-ASCII str and the query is attacker-chosen
    if not given or not hmac.compare_digest(expected.encode(), given.encode("utf-8", "surrogatepass")):
        raise BadSignature("signature mismatch" if given else "signature missing")


def check_timestamp(timestamp: str, *, now: float, window_s: int) -> int:
    """The request's unix time; refused when malformed or more than ``window_s`` from now."""
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= 12):
        raise BadSignature("timestamp missing or malformed")
    ts = int(timestamp)
    if abs(ts - now) > window_s:
        raise BadSignature(f"timestamp outside the replay window ({int(ts - now):+d} s)")
    return ts


# --- AES (safe and compatible modes) -------------------------------------------------------


def aes_key_bytes(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key behind a 43-character EncodingAESKey."""
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError("invalid setting WECHAT_AES_KEY: not base64") from None
    if len(key) != 32:
        raise ConfigError("invalid setting WECHAT_AES_KEY: must decode to 32 bytes")
    return key


def encrypt_payload(xml: str, *, encoding_aes_key: str, app_id: str) -> str:
    """Base64 AES-256-CBC of random(16) + len(4, big-endian) + xml + app id (wechatpy)."""
    return PrpCrypto(aes_key_bytes(encoding_aes_key)).encrypt(xml, app_id).decode("ascii")


def decrypt_payload(encrypt: str, *, encoding_aes_key: str, app_id: str) -> str:
    """The XML inside an Encrypt field; BadSignature when it was sealed for another app."""
    key = aes_key_bytes(encoding_aes_key)
    try:
        raw = base64.b64decode(encrypt.encode("ascii"), validate=True)
        if not raw or len(raw) % 16:
            raise ValueError("ciphertext is not whole AES blocks")
        return str(PrpCrypto(key).decrypt(encrypt, app_id))
    except InvalidAppIdException:
        raise BadSignature("encrypted for another app id") from None
    except Exception as exc:  # garbage ciphertext fails in many ways inside wechatpy
        raise BadMessage(f"cannot decrypt ({type(exc).__name__})") from None


# --- XML -------------------------------------------------------------------------------------


def parse_xml(body: bytes | str, *, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, str]:
    """The ``<xml>`` element's children as {tag: text}; nested ones as "Parent.Child"."""
    if isinstance(body, str):
        try:
            body = body.encode("utf-8")
        except UnicodeEncodeError:
            raise BadMessage("not encodable as UTF-8") from None
    if len(body) > max_bytes:
        raise BadMessage(f"body over {max_bytes} bytes")
    if not body.strip():
        raise BadMessage("empty body")
    # defusedxml below is the real guard; this names the refusal plainly in the log
    if _DECL.search(body):
        raise BadMessage("DTD or entity declaration refused")
    try:
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except Exception as exc:  # ParseError, DTDForbidden, EntitiesForbidden, odd encodings...
        raise BadMessage(f"malformed XML ({type(exc).__name__})") from None
    if root.tag != "xml":
        raise BadMessage("root element is not <xml>")
    fields: dict[str, str] = {}
    _collect(root, "", fields, depth=0)
    return fields


def _collect(node: Element, prefix: str, out: dict[str, str], depth: int) -> None:
    for child in node:
        if not isinstance(child.tag, str):
            continue  # comments and processing instructions
        name = prefix + child.tag
        if len(child) and depth < 2:
            _collect(child, name + ".", out, depth + 1)
        else:
            out.setdefault(name, child.text or "")


def cdata(text: str) -> str:
    """A CDATA section holding ``text`` exactly (``]]>`` split across two sections)."""
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def xml_safe(text: str) -> str:
    """``text`` without the characters XML 1.0 cannot represent."""
    return _XML_INVALID.sub("", text)


def build_xml(fields: Mapping[str, str | int | float]) -> str:
    """A flat ``<xml>`` document: numbers bare, strings in CDATA (as WeChat writes them)."""
    parts = ["<xml>"]
    for tag, value in fields.items():
        if isinstance(value, bool):
            value = int(value)
        body = repr(value) if isinstance(value, float) else str(value)
        if not isinstance(value, int | float):
            body = cdata(xml_safe(body))
        parts.append(f"<{tag}>{body}</{tag}>")
    parts.append("</xml>")
    return "".join(parts)


# --- the server side: open a request, seal a reply -----------------------------------------


def open_envelope(*, query: Mapping[str, str], body: bytes, settings: Settings, now: float) -> Envelope:
    """Verify, decrypt and parse one POST; raises BadSignature (403) or BadMessage (400)."""
    token = settings.wechat_token.get_secret_value()
    timestamp = query.get("timestamp", "")
    nonce = query.get("nonce", "")
    encrypted = query.get("encrypt_type", "raw").lower() == "aes"
    aes = settings.wechat_aes_key.get_secret_value() if settings.wechat_aes_key else None

    if encrypted and aes:
        outer = parse_xml(body, max_bytes=settings.max_body_bytes)
        encrypt = outer.get("Encrypt", "").strip()
        if not encrypt:
            raise BadMessage("encrypt_type=aes but no Encrypt field")
        check_signature(token, query.get("msg_signature", ""), timestamp, nonce, encrypt)
        check_timestamp(timestamp, now=now, window_s=settings.replay_window_s)
        inner = decrypt_payload(encrypt, encoding_aes_key=aes, app_id=settings.wechat_app_id)
        fields = parse_xml(inner, max_bytes=settings.max_body_bytes)
        _require_message(fields)
        return Envelope(fields=fields, encrypted=True, timestamp=timestamp, nonce=nonce)

    # Plain mode; also a compatible-mode request while no key is configured (its plain fields
    # are used and the reply goes plain, which WeChat accepts in compatible mode), and a plain
    # request while a key is configured (the account is switched over after the key is set).
    check_signature(token, query.get("signature", ""), timestamp, nonce)
    check_timestamp(timestamp, now=now, window_s=settings.replay_window_s)
    fields = parse_xml(body, max_bytes=settings.max_body_bytes)
    if "MsgType" not in fields and "Encrypt" in fields:
        raise BadMessage("encrypted message but WECHAT_AES_KEY is not set")
    _require_message(fields)
    return Envelope(fields=fields, encrypted=False, timestamp=timestamp, nonce=nonce)


def _require_message(fields: Mapping[str, str]) -> None:
    for name in ("ToUserName", "FromUserName", "MsgType", "CreateTime"):
        if not fields.get(name, "").strip():
            raise BadMessage(f"missing {name}")


def verify_echo(*, query: Mapping[str, str], settings: Settings, now: float) -> str:
    """GET verification: the ``echostr`` to echo, when the signature holds."""
    timestamp = query.get("timestamp", "")
    check_signature(settings.wechat_token.get_secret_value(), query.get("signature", ""),
                    timestamp, query.get("nonce", ""))
    check_timestamp(timestamp, now=now, window_s=settings.replay_window_s)
    echo = query.get("echostr", "")
    if not echo:
        raise BadMessage("echostr missing")
    return echo


def truncate_utf8(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that fits ``max_bytes`` of UTF-8 (whole characters)."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= max_bytes:
        return text
    return raw[:max_bytes].decode("utf-8", "ignore")


def render_text_reply(*, to_user: str, from_user: str, content: str, create_time: int) -> str:
    """A passive text reply; content is cut to 2,048 bytes as a last guard (logged)."""
    # XML parsers turn "\r\n" and "\r" into "\n" anyway; doing it here keeps the byte count true
    content = xml_safe(content).replace("\r\n", "\n").replace("\r", "\n")
    cut = truncate_utf8(content, MAX_REPLY_BYTES)
    if cut != content:
        # the engine pages long answers; reaching this means a reply escaped that rule
        log.warning("reply to %s truncated from %d to %d bytes", _mask(to_user),
                    len(content.encode("utf-8", "replace")), len(cut.encode("utf-8")))
    return build_xml({
        "ToUserName": to_user,
        "FromUserName": from_user,
        "CreateTime": create_time,
        "MsgType": "text",
        "Content": cut,
    })


def seal_reply(xml: str, *, envelope: Envelope, settings: Settings, now: float,
               nonce: str | None = None) -> str:
    """The reply as sent: itself in plain mode, an encrypted, signed wrapper otherwise."""
    if not envelope.encrypted or settings.wechat_aes_key is None:
        return xml
    return wrap_encrypted(
        xml,
        token=settings.wechat_token.get_secret_value(),
        encoding_aes_key=settings.wechat_aes_key.get_secret_value(),
        app_id=settings.wechat_app_id,
        timestamp=str(int(now)),
        nonce=nonce or _nonce(),
    )


def wrap_encrypted(xml: str, *, token: str, encoding_aes_key: str, app_id: str,
                   timestamp: str, nonce: str) -> str:
    """The encrypted reply wrapper: Encrypt, MsgSignature, TimeStamp, Nonce."""
    encrypt = encrypt_payload(xml, encoding_aes_key=encoding_aes_key, app_id=app_id)
    return (
        "<xml>"
        f"<Encrypt>{cdata(encrypt)}</Encrypt>"
        f"<MsgSignature>{cdata(signature(token, timestamp, nonce, encrypt))}</MsgSignature>"
        f"<TimeStamp>{timestamp}</TimeStamp>"
        f"<Nonce>{cdata(nonce)}</Nonce>"
        "</xml>"
    )


def _nonce() -> str:
    return str(secrets.randbelow(10**10))


def _mask(openid: str) -> str:
    return openid[:6] + "…" if len(openid) > 8 else openid


# --- the client side (what WeChat does; used by the simulator and tests) -------------------


def open_reply(body: bytes | str, *, token: str, encoding_aes_key: str | None, app_id: str) -> dict[str, str]:
    """A reply's fields; an encrypted one is signature-checked and decrypted first."""
    fields = parse_xml(body)
    if "Encrypt" not in fields:
        return fields
    if not encoding_aes_key:
        raise BadMessage("encrypted reply but no AES key")
    check_signature(token, fields.get("MsgSignature", ""), fields.get("TimeStamp", ""),
                    fields.get("Nonce", ""), fields["Encrypt"])
    inner = decrypt_payload(fields["Encrypt"], encoding_aes_key=encoding_aes_key, app_id=app_id)
    return parse_xml(inner)


# --- XML fields → Inbound --------------------------------------------------------------------

_KIND_OF: dict[str, Kind] = {
    "text": "text",
    "image": "image",
    "voice": "voice",
    "video": "video",
    "shortvideo": "video",
    "link": "link",
    "location": "location",
    "event": "event",
}


def to_inbound(fields: Mapping[str, str]) -> Inbound:
    """The channel-agnostic message; positions converted from GCJ-02 to WGS-84."""
    _require_message(fields)
    user = fields["FromUserName"].strip()
    at = _create_time(fields["CreateTime"])
    msg_type = fields["MsgType"].strip().lower()
    kind: Kind = _KIND_OF.get(msg_type, "unknown")
    msg_id = fields.get("MsgId", "").strip()
    common = {"user": user, "msg_id": msg_id, "at": at}

    if kind == "text":
        return Inbound(kind="text", text=fields.get("Content", ""), **common)  # type: ignore[arg-type]
    if kind == "voice":
        heard = fields.get("Recognition", "").strip()
        # speech WeChat already recognised is just text to the engine
        return Inbound(kind="text" if heard else "voice", text=heard, **common)  # type: ignore[arg-type]
    if kind == "location":
        lat, lng = _position(fields, "Location_X", "Location_Y")
        return Inbound(kind="location", lat=lat, lng=lng, label=fields.get("Label", "").strip(),
                       **common)  # type: ignore[arg-type]
    if kind == "event":
        event = fields.get("Event", "").strip().lower()
        if not event:
            raise BadMessage("event without Event")
        key = fields.get("EventKey", "").strip()
        if event == "subscribe" and key.startswith("qrscene_"):
            key = key.removeprefix("qrscene_")  # subscribed by scanning a parametric QR code
        if event == "location":
            lat, lng = _position(fields, "Latitude", "Longitude")
            return Inbound(kind="event", event=event, event_key=key, lat=lat, lng=lng,
                           **common)  # type: ignore[arg-type]
        return Inbound(kind="event", event=event, event_key=key, **common)  # type: ignore[arg-type]
    return Inbound(kind=kind, **common)  # type: ignore[arg-type]


def dedupe_key(fields: Mapping[str, str]) -> str:
    """The Redis key that makes WeChat's retries of one message count once.

    Events carry no MsgId (wechatpy reports id 0), so they are told apart by sender,
    creation time and event name.
    """
    user = fields.get("FromUserName", "").strip()
    created = fields.get("CreateTime", "").strip()
    msg_type = fields.get("MsgType", "").strip().lower()
    if msg_type == "event":
        return f"dedupe:ev:{user}:{created}:{fields.get('Event', '').strip().lower()}"
    msg_id = fields.get("MsgId", "").strip()
    if msg_id:
        return f"dedupe:msg:{msg_id}"
    return f"dedupe:msg:{user}:{created}:{msg_type}"


def _create_time(value: str) -> datetime:
    value = value.strip()
    if not (value.isascii() and value.isdigit() and len(value) <= 11):
        raise BadMessage("CreateTime is not a unix time")
    return datetime.fromtimestamp(int(value), tz=UTC)


def _position(fields: Mapping[str, str], lat_name: str, lng_name: str) -> tuple[float, float]:
    try:
        glat = float(fields.get(lat_name, "").strip())
        glng = float(fields.get(lng_name, "").strip())
    except ValueError:
        raise BadMessage(f"{lat_name}/{lng_name} are not numbers") from None
    if not (math.isfinite(glat) and math.isfinite(glng) and -90 <= glat <= 90 and -180 <= glng <= 180):
        raise BadMessage(f"{lat_name}/{lng_name} out of range")
    return gcj02_to_wgs84(glat, glng)
