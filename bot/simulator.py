"""A WeChat-like client: builds real callback XML, signs (and encrypts) it as WeChat's
servers do, POSTs it to a webhook and reads back the reply.

Used by the tests and by ``redgrid chat``. Positions are taken in WGS-84 and sent in GCJ-02,
as a phone running WeChat would. Each message gets a fresh MsgId unless one is given (tests
resend the same one to play WeChat's retries).
"""

from __future__ import annotations

import secrets
import shlex
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable
from typing import Literal

from bot import wechat
from dispatcher.geo import wgs84_to_gcj02
from models.exceptions import BadMessage, WebhookRefused
from models.settings import Settings

Mode = Literal["plain", "compatible", "safe"]
Fields = dict[str, str | int | float]

NO_REPLY = "（无即时回复）"  # shown by `redgrid chat` when the server answered "success"


class Simulator:
    """One WeChat user talking to one Official Account's webhook."""

    def __init__(
        self,
        url: str,
        *,
        token: str,
        app_id: str,
        openid: str,
        aes_key: str | None = None,
        mode: Mode | None = None,
        account: str = "gh_redgrid0001",
        clock: Callable[[], float] = time.time,
        timeout_s: float = 10.0,
    ) -> None:
        self.url = url
        self.token = token
        self.app_id = app_id
        self.openid = openid
        self.aes_key = aes_key
        self.mode: Mode = mode or ("safe" if aes_key else "plain")
        if self.mode != "plain" and not aes_key:
            raise ValueError(f"{self.mode} mode needs the AES key")
        self.account = account
        self.clock = clock
        self.timeout_s = timeout_s

    @classmethod
    def from_settings(cls, settings: Settings, url: str, openid: str, **kwargs: object) -> Simulator:
        """A client that matches the server configured by ``settings``."""
        aes = settings.wechat_aes_key.get_secret_value() if settings.wechat_aes_key else None
        return cls(url, token=settings.wechat_token.get_secret_value(), app_id=settings.wechat_app_id,
                   openid=openid, aes_key=aes, **kwargs)  # type: ignore[arg-type]

    # --- messages (field dicts, in the order WeChat writes them) ---------------------------

    def _head(self, msg_type: str, create_time: int | None) -> Fields:
        return {
            "ToUserName": self.account,
            "FromUserName": self.openid,
            "CreateTime": int(self.clock()) if create_time is None else create_time,
            "MsgType": msg_type,
        }

    @staticmethod
    def _msg_id(msg_id: int | str | None) -> int | str:
        return secrets.randbits(62) if msg_id is None else msg_id

    def text(self, content: str, *, msg_id: int | str | None = None, create_time: int | None = None) -> Fields:
        return {**self._head("text", create_time), "Content": content, "MsgId": self._msg_id(msg_id)}

    def location(self, lat: float, lng: float, label: str = "", *, scale: int = 15,
                 msg_id: int | str | None = None, create_time: int | None = None) -> Fields:
        """A location message at WGS-84 ``lat``/``lng`` (sent as GCJ-02, 6 decimals like WeChat)."""
        glat, glng = wgs84_to_gcj02(lat, lng)
        return {
            **self._head("location", create_time),
            "Location_X": round(glat, 6),
            "Location_Y": round(glng, 6),
            "Scale": scale,
            "Label": label,
            "MsgId": self._msg_id(msg_id),
        }

    def image(self, *, msg_id: int | str | None = None, create_time: int | None = None) -> Fields:
        media = secrets.token_hex(16)
        return {
            **self._head("image", create_time),
            "PicUrl": f"http://mmbiz.qpic.cn/sim/{media}/0",
            "MediaId": media,
            "MsgId": self._msg_id(msg_id),
        }

    def voice(self, recognition: str, *, msg_id: int | str | None = None,
              create_time: int | None = None) -> Fields:
        return {
            **self._head("voice", create_time),
            "MediaId": secrets.token_hex(16),
            "Format": "amr",
            "Recognition": recognition,
            "MsgId": self._msg_id(msg_id),
        }

    def event(self, event: str, key: str = "", *, create_time: int | None = None) -> Fields:
        """``event`` as WeChat spells it: subscribe, unsubscribe, CLICK, SCAN, VIEW."""
        fields = {**self._head("event", create_time), "Event": event}
        if key or event in ("CLICK", "VIEW", "SCAN"):
            fields["EventKey"] = key
        return fields

    def location_event(self, lat: float, lng: float, *, precision: float = 65.0,
                       create_time: int | None = None) -> Fields:
        """The periodic LOCATION event (WGS-84 in, GCJ-02 on the wire)."""
        glat, glng = wgs84_to_gcj02(lat, lng)
        return {
            **self._head("event", create_time),
            "Event": "LOCATION",
            "Latitude": round(glat, 6),
            "Longitude": round(glng, 6),
            "Precision": precision,
        }

    # --- the wire ------------------------------------------------------------------------------

    def request(self, fields: Fields, *, timestamp: str | None = None,
                nonce: str | None = None) -> tuple[dict[str, str], bytes]:
        """The query string and body WeChat would send for ``fields``."""
        timestamp = timestamp or str(int(self.clock()))
        nonce = nonce or str(secrets.randbelow(10**9))
        query = {
            "signature": wechat.signature(self.token, timestamp, nonce),
            "timestamp": timestamp,
            "nonce": nonce,
            "openid": self.openid,
        }
        plain = wechat.build_xml(fields)
        if self.mode == "plain":
            return query, plain.encode("utf-8")
        assert self.aes_key is not None
        encrypt = wechat.encrypt_payload(plain, encoding_aes_key=self.aes_key, app_id=self.app_id)
        query["encrypt_type"] = "aes"
        query["msg_signature"] = wechat.signature(self.token, timestamp, nonce, encrypt)
        outer: Fields = {"ToUserName": self.account, "Encrypt": encrypt}
        if self.mode == "compatible":
            outer = {**fields, "Encrypt": encrypt}
        return query, wechat.build_xml(outer).encode("utf-8")

    def read_reply(self, status: int, body: bytes | str) -> str | None:
        """The reply's text; None for "success" or an empty body. Raises WebhookRefused."""
        text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
        if status != 200:
            raise WebhookRefused(status, text)
        if text.strip() in ("", wechat.SUCCESS):
            return None
        fields = wechat.open_reply(text, token=self.token, encoding_aes_key=self.aes_key, app_id=self.app_id)
        if fields.get("ToUserName") != self.openid or fields.get("FromUserName") != self.account:
            raise BadMessage("reply is addressed to someone else")
        if fields.get("MsgType") != "text":
            raise BadMessage(f"unexpected reply type {fields.get('MsgType')!r}")
        return fields.get("Content", "")

    async def send(self, fields: Fields, **kwargs: str) -> str | None:
        """POST with aiohttp (for tests running inside an event loop)."""
        import aiohttp

        query, body = self.request(fields, **kwargs)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with aiohttp.ClientSession(timeout=timeout) as session, session.post(
            self.url, params=query, data=body, headers={"Content-Type": "text/xml"}
        ) as resp:
            return self.read_reply(resp.status, await resp.read())

    def send_sync(self, fields: Fields, **kwargs: str) -> str | None:
        """POST with urllib (for the terminal, outside any event loop)."""
        query, body = self.request(fields, **kwargs)
        url = self.url + ("&" if "?" in self.url else "?") + urllib.parse.urlencode(query)
        req = urllib.request.Request(url, data=body, method="POST", headers={"Content-Type": "text/xml"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
                return self.read_reply(resp.status, resp.read())
        except urllib.error.HTTPError as exc:
            return self.read_reply(exc.code, exc.read())


# --- the terminal loop behind `redgrid chat` --------------------------------------------------

CHAT_HELP = (
    "模拟器命令：/loc 纬度 经度 [地名]（WGS-84 位置）、/click 菜单键、/sub 关注、/unsub 取消关注、"
    "/image 图片、/voice 文字（语音识别结果）、/help、/quit"
)


def parse_chat_line(sim: Simulator, line: str) -> Fields | str | None:
    """A terminal line → the message to send, a local note to print (str), or None: quit."""
    if not line.startswith("/"):
        return sim.text(line)
    try:
        words = shlex.split(line)
    except ValueError:
        words = line.split()
    cmd, args = words[0].lower(), words[1:]
    if cmd in ("/quit", "/exit", "/q"):
        return None
    if cmd == "/loc" and len(args) >= 2:
        try:
            lat, lng = float(args[0]), float(args[1])
        except ValueError:
            return "用法：/loc 纬度 经度 [地名]，例如 /loc 29.2785 120.2282 东阳市人民政府"
        return sim.location(lat, lng, " ".join(args[2:]))
    if cmd == "/click" and len(args) == 1:
        return sim.event("CLICK", args[0])
    if cmd == "/sub":
        return sim.event("subscribe")
    if cmd == "/unsub":
        return sim.event("unsubscribe")
    if cmd == "/image":
        return sim.image()
    if cmd == "/voice" and args:
        return sim.voice(" ".join(args))
    return CHAT_HELP


def run_chat(sim: Simulator, lines: Iterable[str], out: Callable[[str], None], *,
             err: Callable[[str], None], subscribe: bool = True, echo: bool = False) -> int:
    """Send each line, print each reply; the exit status is 1 when any send failed."""
    failed = False

    def exchange(fields: Fields) -> bool:
        """False when the server cannot be reached at all (no point going on)."""
        nonlocal failed
        try:
            reply = sim.send_sync(fields)
        except (WebhookRefused, BadMessage) as exc:
            failed = True
            err(f"redgrid chat: {exc}")
            return True
        except OSError as exc:
            failed = True
            reason = getattr(exc, "reason", exc)
            err(f"redgrid chat: cannot reach {sim.url} ({reason}); is `redgrid web` running?")
            return False
        out(_show(reply))
        return True

    if subscribe and not exchange(sim.event("subscribe")):
        return 1
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        if echo:
            out(f"▶ {line}")
        message = parse_chat_line(sim, line)
        if message is None:
            break
        if isinstance(message, str):
            out(message)
            continue
        if not exchange(message):
            return 1
    return 1 if failed else 0


def _show(reply: str | None) -> str:
    lines = (reply or NO_REPLY).splitlines() or [""]
    return "◀ " + "\n  ".join(lines)
