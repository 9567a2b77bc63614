"""The WeChat webhook: GET /wechat (server verification) and POST /wechat (messages).

The edge for the engine: everything WeChat sends is verified, decrypted, size-bounded,
parsed and deduped here; the engine sees only an ``Inbound``. Rules honoured:

- answer within 5 s: the handler runs in a thread with ``reply_budget_s`` (4.5 s); when it
  takes longer WeChat gets "success" now and the answer goes later through
  ``handler.deliver_late`` (a customer-service message);
- WeChat retries an unanswered POST three times: the first arrival claims a Redis key
  (SET NX EX) and stores its reply there, so every retry gets the same reply and the
  handler runs once; a retry that arrives mid-processing waits briefly for it;
- refusals are 4xx with one log line, never a 500 (WeChat would tell the user the account
  is out of service); an engine error becomes a short apology.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from typing import Any

import redis
from aiohttp import web

from bot import wechat
from bot.app import METRICS, REDIS, SETTINGS
from bot.handler import HANDLER, LATE_TASKS, Handler, HandlerFactory
from bot.inbound import Inbound
from models.exceptions import BadMessage, BadSignature

log = logging.getLogger(__name__)

APOLOGY = "抱歉，系统开小差了，请稍后再试。"
_POLL_S = 0.05  # how often a retry looks for the first arrival's reply
_LATE_DRAIN_S = 10.0  # on shutdown, how long late answers may still take
_REDIS_S = 1.0  # per dedupe call

__all__ = ["APOLOGY", "Handler", "HandlerFactory", "add_routes", "handler_ctx"]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/wechat", wechat_get)
    app.router.add_post("/wechat", wechat_post)


def handler_ctx(factory: HandlerFactory | None):  # type: ignore[no-untyped-def]
    """A cleanup_ctx that builds the handler (after the database and Redis contexts)."""

    async def ctx(app: web.Application):  # type: ignore[no-untyped-def]
        if factory is None:
            # imported here: the engine is optional for the adapter (tests pass a stub)
            from bot.engine import build_handler

            app[HANDLER] = build_handler(app)
        else:
            app[HANDLER] = factory(app)
        yield
        late: set[asyncio.Task[None]] = app[LATE_TASKS]
        pending = list(late)
        if pending:
            _done, still = await asyncio.wait(pending, timeout=_LATE_DRAIN_S)
            for task in still:
                log.warning("shutdown: a late answer was still running; dropped")
                task.cancel()
        close = getattr(app[HANDLER], "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result

    return ctx


# --- GET: server verification --------------------------------------------------------------


async def wechat_get(request: web.Request) -> web.StreamResponse:
    try:
        echo = wechat.verify_echo(query=request.query, settings=request.app[SETTINGS], now=time.time())
    except BadSignature as exc:
        return _refuse(request, 403, exc)
    except BadMessage as exc:
        return _refuse(request, 400, exc)
    except Exception:
        log.exception("wechat GET: unexpected error")
        return web.Response(status=400, text="bad request")
    return web.Response(text=echo)


# --- POST: messages ------------------------------------------------------------------------


async def wechat_post(request: web.Request) -> web.StreamResponse:
    try:
        return await _post(request)
    except Exception:
        # nothing parsed is known here, so no reply can be addressed: "success" at least
        # stops WeChat retrying a request that fails the same way each time
        log.exception("wechat POST: unexpected error before a reply could be made")
        return web.Response(text=wechat.SUCCESS)


async def _post(request: web.Request) -> web.StreamResponse:
    app = request.app
    settings = app[SETTINGS]
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        return _refuse(request, 413, BadMessage(f"body over {limit} bytes"))
    body = await _read_bounded(request, limit)  # chunked bodies (no Content-Length) too
    if body is None:
        return _refuse(request, 413, BadMessage(f"body over {limit} bytes"))

    now = time.time()
    try:
        envelope = wechat.open_envelope(query=request.query, body=body, settings=settings, now=now)
        inbound = wechat.to_inbound(envelope.fields)
    except BadSignature as exc:
        return _refuse(request, 403, exc)
    except BadMessage as exc:
        return _refuse(request, 400, exc)

    try:
        reply, outcome = await _answer(app, wechat.dedupe_key(envelope.fields), inbound)
    except Exception:
        log.exception("wechat: failed answering a %s", inbound.kind)
        reply, outcome = APOLOGY, "error"
    app[METRICS].messages.labels(kind=inbound.kind, outcome=outcome).inc()

    if not reply:
        return web.Response(text=wechat.SUCCESS)
    xml = wechat.render_text_reply(
        to_user=envelope.fields["FromUserName"],
        from_user=envelope.fields["ToUserName"],
        content=reply,
        create_time=int(now),
    )
    sealed = wechat.seal_reply(xml, envelope=envelope, settings=settings, now=now)
    return web.Response(text=sealed, content_type="application/xml")


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None as soon as it passes ``limit`` bytes (the rest is not read)."""
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(64 * 1024)
        if not chunk:
            return b"".join(parts)
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)


def _refuse(request: web.Request, status: int, exc: Exception) -> web.Response:
    # one line, with the reason only: no token, key, signature or body in the log
    log.warning("wechat %s refused %d: %s (from %s)", request.method, status, exc, request.remote)
    if METRICS in request.app:
        request.app[METRICS].messages.labels(kind="invalid", outcome=f"refused_{status}").inc()
    reason = {400: "bad request", 403: "forbidden", 413: "payload too large"}[status]
    return web.Response(status=status, text=reason)


# --- dedupe and the 5-second budget --------------------------------------------------------


async def _answer(app: web.Application, key: str, inbound: Inbound) -> tuple[str | None, str]:
    """The reply (None: "success") and an outcome label for the metrics."""
    settings = app[SETTINGS]
    client = app[REDIS]
    # SET NX answers True when we are first, None when the key exists
    claimed = await _redis(client.set, key, _pending(), nx=True, ex=settings.dedupe_ttl_s)
    if claimed is None:
        return await _wait_for_first(client, key, settings.reply_budget_s), "duplicate"
    # claimed is True, or _FAILED (Redis away: answer anyway; a retry may run twice)

    reply, outcome = await _run(app, inbound, settings.reply_budget_s)
    await _redis(client.set, key, json.dumps({"s": "done", "r": reply}), xx=True, keepttl=True)
    return reply, outcome


async def _run(app: web.Application, inbound: Inbound, budget: float) -> tuple[str | None, str]:
    handler = app[HANDLER]
    work = asyncio.ensure_future(asyncio.to_thread(handler.handle, inbound))
    try:
        reply = await asyncio.wait_for(asyncio.shield(work), timeout=budget)
    except TimeoutError:
        late = asyncio.create_task(_finish_late(handler, inbound, work))
        app[LATE_TASKS].add(late)
        late.add_done_callback(app[LATE_TASKS].discard)
        return None, "late"
    except Exception:
        log.exception("wechat: handler raised on a %s message", inbound.kind)
        return APOLOGY, "error"
    reply = _as_text(reply)
    return reply, "replied" if reply else "empty"


async def _finish_late(handler: Handler, inbound: Inbound, work: asyncio.Future[Any]) -> None:
    try:
        reply = _as_text(await work)
    except Exception:
        log.exception("wechat: handler raised (late) on a %s message", inbound.kind)
        reply = APOLOGY
    if not reply:
        return
    try:
        await asyncio.to_thread(handler.deliver_late, inbound.user, reply)
    except Exception:
        log.exception("wechat: deliver_late failed; the late answer is lost")


def _as_text(reply: object) -> str | None:
    if reply is None or reply == "":
        return None
    return reply if isinstance(reply, str) else str(reply)


async def _wait_for_first(client: redis.Redis, key: str, budget: float) -> str | None:
    """A retry's reply: the first arrival's, once it is stored; "success" past the budget."""
    deadline = time.monotonic() + budget
    while True:
        raw = await _redis(client.get, key)
        if raw is None or raw is _FAILED:
            return None  # expired, or Redis is away: nothing better to say
        try:
            state = json.loads(raw)
        except ValueError:
            return None
        if state.get("s") == "done":
            reply = state.get("r")
            return reply if isinstance(reply, str) and reply else None
        if time.monotonic() >= deadline:
            return None  # the first arrival will answer late, through deliver_late
        await asyncio.sleep(_POLL_S)


def _pending() -> str:
    return json.dumps({"s": "pending"})


_FAILED = object()


async def _redis(call: Any, *args: Any, **kwargs: Any) -> Any:
    """A blocking Redis call off the event loop; ``_FAILED`` (logged) when Redis fails."""
    try:
        # bounded well inside the 5 s budget even when Redis hangs
        return await asyncio.wait_for(asyncio.to_thread(call, *args, **kwargs), timeout=_REDIS_S)
    except (redis.RedisError, OSError, TimeoutError) as exc:
        log.warning("wechat dedupe: Redis unavailable (%s); continuing without it", type(exc).__name__)
        return _FAILED
