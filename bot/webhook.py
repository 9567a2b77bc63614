"""The WeChat webhook: GET /wechat (server verification) and POST /wechat (messages).

The edge for the engine: everything WeChat sends is verified, decrypted, size-bounded,
parsed and deduped here; the engine sees only an ``Inbound``. Rules honoured:

- answer within 5 s: the handler runs in a thread with ``reply_budget_s`` (4.5 s); when it
  takes longer WeChat gets "success" now and the answer goes later through
  ``handler.deliver_late`` (a customer-service message). A handler that can tell a turn that
  only reads (``try_read_only``) has it run on the event loop instead, while such turns stay
  fast (``InlineGate``): for them the thread hop cost more than the turn;
- WeChat retries an unanswered POST three times: the first arrival claims a Redis key
  (SET NX EX) and stores its reply there, so every retry gets the same reply and the
  handler runs once; a retry that arrives mid-processing waits briefly for it;
- refusals are 4xx with one log line, never a 500 (WeChat would tell the user the account
  is out of service); an engine error becomes a short apology;
- one noisy account cannot slow the others: past ``ratelimit_messages`` per
  ``ratelimit_window_s`` an openid gets a short notice and the engine does not run (the
  notice is stored as the reply, so WeChat's retries of it get the same and count once).

The edge's own Redis work (claim the dedupe key and take a rate-limit token: one round trip,
one Lua script; store the reply; a retry's polls) goes through an asyncio Redis client, so
the handler's thread pool is left to the engine.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
from collections.abc import Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

import redis
import redis.asyncio as aredis
from aiohttp import web

from bot import wechat
from bot.app import METRICS, SETTINGS
from bot.handler import HANDLER, LATE_TASKS, Handler, HandlerFactory
from bot.inbound import Inbound
from bot.logs import OPENID, mask_openid
from models.exceptions import BadMessage, BadSignature
from models.redisconn import redis_url

log = logging.getLogger(__name__)

APOLOGY = "抱歉，系统开小差了，请稍后再试。"
TOO_FAST = "您发送得太快了，请稍等片刻再试。"
_POLL_S = 0.05  # how often a retry looks for the first arrival's reply
_LATE_DRAIN_S = 10.0  # on shutdown, how long late answers may still take
_REDIS_S = 1.0  # per dedupe call
_EDGE_CONNECTIONS = 64  # per web process; a claim holds one for about a millisecond

# The webhook's asyncio Redis client and the engine's thread pool (see handler_ctx).
EDGE_REDIS = web.AppKey("edge_redis", aredis.Redis)
POOL = web.AppKey("handler_pool", ThreadPoolExecutor)
INLINE: web.AppKey[InlineGate] = web.AppKey("inline_gate")
CLAIM: web.AppKey[Any] = web.AppKey("claim_script")
REPLIES: web.AppKey[ReplyStore] = web.AppKey("reply_store")

# Events that change what we may send a person are never rate-limited or dropped.
_NEVER_LIMITED = frozenset({"subscribe", "unsubscribe"})

# KEYS[1] dedupe key, KEYS[2] the openid's rate key, KEYS[3..]: the sender's conversation
# state (the handler's ``state_keys``), read in the same round trip; ARGV: pending marker,
# dedupe ttl (s), limit (0: off), window (ms). Returns {verdict, state values...}; verdict
# -1: a duplicate; 1: first arrival, within the limit; 0: first arrival, over it. The limit
# is a token bucket kept as a "theoretical arrival time" (GCRA): ``limit`` messages at once,
# then one per window/limit; a refused message does not move it, so a person who slows down
# is served again at once. Redis TIME keeps every web process on one clock.
_CLAIM_LUA = """
local function verdict()
  if not redis.call('SET', KEYS[1], ARGV[1], 'NX', 'EX', tonumber(ARGV[2])) then return -1 end
  local limit = tonumber(ARGV[3])
  if limit <= 0 or KEYS[2] == '' then return 1 end
  local window = tonumber(ARGV[4])
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  local interval = window / limit
  local tat = tonumber(redis.call('GET', KEYS[2]) or '0')
  if tat < now then tat = now end
  local new = tat + interval
  if new - now > window then return 0 end
  redis.call('SET', KEYS[2], string.format('%d', new), 'PX', math.ceil(window))
  return 1
end
local out = {verdict()}
if out[1] == 1 then
  for i = 3, #KEYS do out[i - 1] = redis.call('GET', KEYS[i]) end  -- a missing key: false (nil)
end
return out
"""

__all__ = ["APOLOGY", "TOO_FAST", "Handler", "HandlerFactory", "add_routes", "handler_ctx"]


def add_routes(app: web.Application) -> None:
    app.router.add_get("/wechat", wechat_get)
    app.router.add_post("/wechat", wechat_post)


def handler_ctx(factory: HandlerFactory | None):  # type: ignore[no-untyped-def]
    """A cleanup_ctx that builds the handler (after the database and Redis contexts)."""

    async def ctx(app: web.Application):  # type: ignore[no-untyped-def]
        settings = app[SETTINGS]
        # Short timeouts: the edge answers without Redis rather than wait on it. A bounded
        # pool that makes a claim wait its turn for a connection (within the same timeout):
        # redis-py's default pool fails outright past 100 at once, which under a burst had
        # turned dedupe off for the messages over it.
        app[EDGE_REDIS] = aredis.Redis(connection_pool=aredis.BlockingConnectionPool.from_url(
            redis_url(settings), max_connections=_EDGE_CONNECTIONS, timeout=_REDIS_S,
            socket_timeout=_REDIS_S, socket_connect_timeout=_REDIS_S, health_check_interval=30,
        ))
        # The engine's own pool (not the loop's default one, which getaddrinfo and others
        # share): its size bounds how many messages touch the database at once.
        app[POOL] = ThreadPoolExecutor(max_workers=settings.web_threads, thread_name_prefix="engine")
        app[INLINE] = InlineGate(enabled=settings.web_inline_reads)
        app[CLAIM] = app[EDGE_REDIS].register_script(_CLAIM_LUA)  # EVALSHA: the body is sent once
        app[REPLIES] = ReplyStore(app[EDGE_REDIS])
        if factory is None:
            # imported here: the engine is optional for the adapter (tests pass a stub)
            from bot.engine import build_handler

            app[HANDLER] = build_handler(app)
        else:
            app[HANDLER] = factory(app)
        yield
        await app[REPLIES].drain(_LATE_DRAIN_S)
        late: set[asyncio.Task[Any]] = app[LATE_TASKS]
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
        app[POOL].shutdown(wait=False, cancel_futures=True)
        await app[EDGE_REDIS].aclose(close_connection_pool=True)

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
    deadline = time.monotonic() + settings.reply_budget_s  # WeChat's clock starts on arrival
    try:
        envelope = wechat.open_envelope(query=request.query, body=body, settings=settings, now=now)
        inbound = wechat.to_inbound(envelope.fields)
    except BadSignature as exc:
        return _refuse(request, 403, exc)
    except BadMessage as exc:
        return _refuse(request, 400, exc)

    request[OPENID] = mask_openid(inbound.user)
    try:
        reply, outcome = await _answer(app, wechat.dedupe_key(envelope.fields), inbound, deadline)
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


async def _answer(app: web.Application, key: str, inbound: Inbound, deadline: float) -> tuple[str | None, str]:
    """The reply (None: "success") and an outcome label for the metrics; ``deadline``
    (monotonic): when the reply budget, counted from the request's arrival, runs out."""
    settings = app[SETTINGS]
    client = app[EDGE_REDIS]
    limited = not (inbound.kind == "event" and inbound.event in _NEVER_LIMITED)
    rate_key = f"rl:{inbound.user}" if limited and settings.ratelimit_messages > 0 else ""
    handler = app[HANDLER]
    state_keys = getattr(handler, "state_keys", None)
    keys = [key, rate_key, *(state_keys(inbound.user) if state_keys is not None else ())]
    out = await _redis(app[CLAIM], keys=keys, args=[
        _pending(), settings.dedupe_ttl_s, settings.ratelimit_messages, int(settings.ratelimit_window_s * 1000),
    ])
    claimed, state = (out[0], list(out[1:])) if isinstance(out, list) and out else (out, None)
    if claimed == -1:
        return await _wait_for_first(client, key, deadline), "duplicate"
    if claimed == 0:
        # over the limit: no engine; an event that expects no answer is dropped quietly
        notice = TOO_FAST if inbound.kind != "event" or inbound.event == "click" else None
        log.info("rate limit: %s over %d per %gs", mask_openid(inbound.user),
                 settings.ratelimit_messages, settings.ratelimit_window_s)
        app[REPLIES].put(key, json.dumps({"s": "done", "r": notice}))
        return notice, "limited"
    # claimed is 1, or _FAILED (Redis away: answer anyway, unlimited; a retry may run twice)

    if claimed is _FAILED:
        # Redis is failing: a turn on the loop could block it on Redis's timeouts; the pool
        # takes every turn for a while
        app[INLINE].trip()
    state = state if state_keys is not None and claimed == 1 and len(state or ()) == len(keys) - 2 else None
    reply, outcome = await _run(app, inbound, max(0.0, deadline - time.monotonic()), state)
    # stored for WeChat's retries (which wait for it, polling) while the reply goes out: the
    # answer is not held back a turn of the loop for it
    app[REPLIES].put(key, json.dumps({"s": "done", "r": reply}))
    return reply, outcome


class ReplyStore:
    """Replies kept for WeChat's retries, written in batches: one pipelined round trip for all
    the replies finished while the last batch was on its way, instead of a Redis call (and a
    task) each. A retry that arrives first waits for its reply (``_wait_for_first`` polls)."""

    ATTEMPTS = 3  # a batch Redis refused is tried again, a moment later, this many times in all

    def __init__(self, client: aredis.Redis) -> None:
        self.client = client
        self._pending: list[tuple[str, str, int]] = []
        self._task: asyncio.Task[None] | None = None

    def put(self, key: str, value: str) -> None:
        self._pending.append((key, value, 1))
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._pending:  # what arrived during a write goes in the next one
            batch, self._pending = self._pending, []
            pipe = self.client.pipeline(transaction=False)
            for key, value, _n in batch:
                pipe.set(key, value, xx=True, keepttl=True)
            if await _redis(pipe.execute) is not _FAILED:
                continue
            again = [(k, v, n + 1) for k, v, n in batch if n < self.ATTEMPTS]
            if len(again) < len(batch):
                # their retries (if WeChat sends any) will wait out the budget and get "success"
                log.warning("%d replies for WeChat's retries could not be stored", len(batch) - len(again))
            self._pending = again + self._pending
            if again:
                await asyncio.sleep(0.2)

    async def drain(self, timeout: float) -> None:
        """On shutdown: what is still to be written, within ``timeout``."""
        if self._task is not None and not self._task.done():
            _done, still = await asyncio.wait([self._task], timeout=timeout)
            if still:
                self._task.cancel()
                log.warning("shutdown: replies for WeChat's retries not all stored (%d queued)", len(self._pending))


def _background(app: web.Application, work: Coroutine[Any, Any, Any]) -> None:
    """Run ``work`` after the reply; drained (bounded) when the app shuts down."""
    task = asyncio.create_task(work)
    app[LATE_TASKS].add(task)
    task.add_done_callback(app[LATE_TASKS].discard)


async def _run(app: web.Application, inbound: Inbound, budget: float,
               state: list[Any] | None = None) -> tuple[str | None, str]:
    """``state``: the sender's conversation state as read with the claim (for an inline turn)."""
    handler = app[HANDLER]
    call: Callable[[], str | None] = partial(handler.handle, inbound)
    fast = getattr(handler, "try_read_only", None)
    gate = app[INLINE]
    if fast is not None and gate.open():
        # Most messages only read: answered here on the loop, with no thread hop (which cost
        # more CPU than such a turn itself: bench/README.md, Webhook). A slow or failing one
        # closes the gate for a while: meanwhile every turn goes to the pool, under the budget.
        t0 = time.monotonic()
        try:
            done, reply = fast(inbound) if state is None else fast(inbound, state)
        except Exception:
            # tried again whole in the pool (which answers with an apology if it fails too)
            log.warning("inline turn failed; the pool takes over for %gs", gate.cooldown_s, exc_info=True)
            gate.trip()
        else:
            if time.monotonic() - t0 > gate.slow_s:
                log.warning("inline turn took over %gs; the pool takes over for %gs", gate.slow_s, gate.cooldown_s)
                gate.trip()
            if done:
                return _replied(reply)
            call = partial(handler.handle, inbound, writer=True)  # type: ignore[call-arg]
    work = asyncio.get_running_loop().run_in_executor(app[POOL], call)
    try:
        reply = await asyncio.wait_for(asyncio.shield(work), timeout=budget)
    except TimeoutError:
        _background(app, _finish_late(handler, inbound, work, app[POOL]))
        return None, "late"
    except Exception:
        log.exception("wechat: handler raised on a %s message", inbound.kind)
        return APOLOGY, "error"
    return _replied(reply)


def _replied(reply: object) -> tuple[str | None, str]:
    """A handler's answer as the reply and its outcome label."""
    text = _as_text(reply)
    return text, "replied" if text else "empty"


class InlineGate:
    """Whether read-only turns may run on the event loop now. Closed for ``cooldown_s`` after
    one was slow (the database or Redis struggling: a blocked loop would stall every request
    of this process) or failed; meanwhile turns run in the pool, which the reply budget guards."""

    def __init__(self, *, enabled: bool, slow_s: float = 0.25, cooldown_s: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.enabled = enabled
        self.slow_s = slow_s
        self.cooldown_s = cooldown_s
        self.clock = clock
        self._closed_until = 0.0
        self.trips = 0

    def open(self) -> bool:
        return self.enabled and self.clock() >= self._closed_until

    def trip(self) -> None:
        self.trips += 1
        self._closed_until = self.clock() + self.cooldown_s


async def _finish_late(handler: Handler, inbound: Inbound, work: asyncio.Future[Any],
                       pool: ThreadPoolExecutor) -> None:
    try:
        reply = _as_text(await work)
    except Exception:
        log.exception("wechat: handler raised (late) on a %s message", inbound.kind)
        reply = APOLOGY
    if not reply:
        return
    try:
        await asyncio.get_running_loop().run_in_executor(pool, handler.deliver_late, inbound.user, reply)
    except Exception:
        log.exception("wechat: deliver_late failed; the late answer is lost")


def _as_text(reply: object) -> str | None:
    if reply is None or reply == "":
        return None
    return reply if isinstance(reply, str) else str(reply)


async def _wait_for_first(client: aredis.Redis, key: str, deadline: float) -> str | None:
    """A retry's reply: the first arrival's, once it is stored; "success" past ``deadline``."""
    while True:
        raw = await _redis(client.get, key, timeout=max(0.01, min(_REDIS_S, deadline - time.monotonic())))
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


async def _redis(call: Any, *args: Any, timeout: float = _REDIS_S, **kwargs: Any) -> Any:
    """An asyncio Redis call; ``_FAILED`` (logged) when Redis fails."""
    try:
        # bounded well inside the 5 s budget even when Redis hangs (a timeout scope, not
        # wait_for: no task per call)
        async with asyncio.timeout(timeout):
            return await call(*args, **kwargs)
    except (redis.RedisError, OSError, TimeoutError) as exc:
        log.warning("wechat dedupe: Redis unavailable (%s); continuing without it", type(exc).__name__)
        return _FAILED
