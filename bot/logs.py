"""Structured logs: one JSON object per line, with secrets and phone numbers scrubbed.

Stdlib ``logging`` with a small formatter, not structlog: every library RedGrid runs on
(aiohttp, rq, wechatpy, SQLAlchemy) already logs through stdlib loggers, and one formatter on
the root handler turns all of them into JSON and scrubs all of them in one place, with no new
dependency and no second logging API for the codebase to learn.

Scrubbing happens in the formatter, on the final text of every record (message, extra
fields, traceback), so a secret cannot reach the stream by any path a library chooses:

- the values of the configured secrets (WeChat token, AES key, app secret, console secret),
  registered once settings are loaded (``add_secrets``);
- anything that looks like a credential in a URL or JSON (``access_token=``, ``secret=``,
  ``"access_token": "..."``, ``signature=``), as wechatpy and urllib3 log URLs at DEBUG;
- mainland mobile numbers (1[3-9] + 9 digits), shown as 138****1234 like everywhere else.

The web app's middleware (``request_logger``) writes one line per HTTP request with method,
route, status, latency_ms and, for WeChat messages, a masked openid.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

__all__ = [
    "OPENID",
    "JsonFormatter",
    "TextFormatter",
    "add_secrets",
    "mask_openid",
    "redact",
    "request_logger",
    "setup_logging",
]

# The request's masked openid, set by the webhook once a message is parsed.
OPENID = web.RequestKey("redgrid_openid", str)

log = logging.getLogger("redgrid.http")

_PHONE = re.compile(r"(?<!\d)(1[3-9]\d)(\d{4})(\d{4})(?!\d)")
# key=value in query strings and form bodies, "key": "value" in JSON
_CRED_KV = re.compile(
    r"(?i)\b(access_token|refresh_token|secret|appsecret|app_secret|token|encodingaeskey|aes_key|"
    r"msg_signature|signature|password)=([^&\s\"',;]+)"
)
_CRED_JSON = re.compile(
    r"(?i)([\"'](?:access_token|refresh_token|secret|appsecret|app_secret|token|encodingaeskey|"
    r"aes_key|password)[\"']\s*:\s*[\"'])([^\"']+)"
)
# LogRecord's own attributes; anything else on a record came in through ``extra=``
_OPENID_KV = re.compile(r"(?i)\b(openid|fromusername)=([^&\s\"',;]+)")
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


def mask_openid(openid: str) -> str:
    """Enough of an openid to tell people apart in one log, not enough to message them."""
    openid = openid.strip()
    if len(openid) >= 12:
        return f"{openid[:4]}…{openid[-4:]}"
    return f"{openid[:2]}…" if openid else ""


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without the given secret values, credentials in URLs/JSON, or full phones."""
    for value in secrets:
        if value and value in text:
            text = text.replace(value, "***")
    text = _CRED_KV.sub(lambda m: f"{m.group(1)}=***", text)
    text = _CRED_JSON.sub(lambda m: f"{m.group(1)}***", text)
    text = _OPENID_KV.sub(lambda m: f"{m.group(1)}={mask_openid(m.group(2))}", text)
    return _PHONE.sub(lambda m: f"{m.group(1)}****{m.group(3)}", text)


class _Scrubbing(logging.Formatter):
    """Base: holds the secret values to scrub (longest first, so no prefix survives)."""

    def __init__(self, *args: Any, secrets: Iterable[str] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.secrets: list[str] = []
        self.add_secrets(secrets)

    def add_secrets(self, values: Iterable[str]) -> None:
        # very short values (e.g. a test token "x") would shred every line; real ones are long
        fresh = {v for v in values if v and len(v) >= 6}
        self.secrets = sorted(set(self.secrets) | fresh, key=len, reverse=True)

    def scrub(self, text: str) -> str:
        return redact(text, self.secrets)


class TextFormatter(_Scrubbing):
    """The human-readable line (``redgrid chat``, ``db upgrade``...), scrubbed the same way."""

    def __init__(self, *, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s", secrets=secrets)

    def format(self, record: logging.LogRecord) -> str:
        return self.scrub(super().format(record))


class JsonFormatter(_Scrubbing):
    """One JSON object per line: ts, level, logger, msg, the record's extras, exc."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "pid": record.process,  # several web processes write one stream
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and key not in out:
                out[key] = value if isinstance(value, int | float | bool | type(None)) else str(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return self.scrub(json.dumps(out, ensure_ascii=False, default=str))


def setup_logging(level: str | int = "INFO", *, fmt: str = "json", secrets: Iterable[str] = (),
                  stream: Any = None, force: bool = False) -> logging.Handler | None:
    """One scrubbing handler (JSON or text) on the root logger, writing to ``stream``.

    Like ``logging.basicConfig``: when the root logger already has handlers someone else
    installed (pytest's, an embedding program's) nothing is changed unless ``force``; a
    handler from an earlier call is replaced, so calling twice never doubles lines.
    """
    root = logging.getLogger()
    foreign = [h for h in root.handlers if not getattr(h, "_redgrid", False)]
    if foreign and not force:
        return None
    for old in list(root.handlers):
        if force or getattr(old, "_redgrid", False):
            root.removeHandler(old)
    handler = logging.StreamHandler(stream or sys.stderr)
    handler._redgrid = True  # type: ignore[attr-defined]
    formatter: _Scrubbing = JsonFormatter(secrets=secrets) if fmt == "json" else TextFormatter(secrets=secrets)
    handler.setFormatter(formatter)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
    return handler


def add_secrets(values: Iterable[str], logger: logging.Logger | None = None) -> int:
    """Register secret values with every scrubbing formatter on ``logger`` (root by default);
    returns how many formatters took them."""
    values = list(values)
    n = 0
    for handler in (logger or logging.getLogger()).handlers:
        if isinstance(handler.formatter, _Scrubbing):
            handler.formatter.add_secrets(values)
            n += 1
    return n


def settings_secrets(settings: Any) -> list[str]:
    """The secret values in a Settings object (every SecretStr field)."""
    from pydantic import SecretStr

    out = []
    for name in type(settings).model_fields:
        value = getattr(settings, name, None)
        if isinstance(value, SecretStr):
            out.append(value.get_secret_value())
    return out


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_logger(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One line per request: method, route (never the query: it carries signatures and the
    openid), status, latency_ms, and the masked openid when the webhook parsed one."""
    start = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        latency_ms = round((time.perf_counter() - start) * 1000, 2)
        resource = request.match_info.route.resource
        route = resource.canonical if resource is not None else "unmatched"
        extra: dict[str, Any] = {"method": request.method, "route": route, "status": status,
                                 "latency_ms": latency_ms}
        openid = request.get(OPENID)
        if openid:
            extra["openid"] = openid
        log.info("%s %s %d %.1fms", request.method, route, status, latency_ms, extra=extra)
        on_done = request.app.get(_ON_DONE)
        if on_done is not None:
            on_done(route, status, latency_ms / 1000)


# A callback the app sets to feed its metrics from the same measurement: (route, status, s).
RequestDone = Callable[[str, int, float], None]
ON_REQUEST_DONE: web.AppKey[RequestDone] = web.AppKey("request_done")
_ON_DONE = ON_REQUEST_DONE
