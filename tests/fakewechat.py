"""A fake WeChat API server on loopback, for tests and benches.

It speaks the real HTTP API and error codes of the parts RedGrid uses:

- ``GET /cgi-bin/token``: checks appid/secret (40013 / 40125), issues 7200 s tokens; a newly
  issued token makes the previous one invalid after ``token_grace_s`` (40001), and a token
  past its life answers 42001.
- ``POST /cgi-bin/message/custom/send``: 40003 for an unknown openid, 43004 for a user who
  does not follow, 45015 outside 48 h of the user's last message, 45047 past
  ``window_limit`` messages in one window.
- ``POST /cgi-bin/message/template/send``: 40003 / 43004 / 40037 (unknown template).
- ``POST /cgi-bin/menu/create``.
- Fault injection: the next N API calls answer an errcode (-1, 45009, ...), HTTP 500, or are
  delayed (a delayed call whose client gives up first is dropped: aiohttp cancels its handler).

Every accepted message is recorded, so tests can assert what each person received. The
server runs in a background thread (``FakeWeChat().start()``) or as a process
(``python -m tests.fakewechat --port 8081``) with a JSON control API under ``/_fake/``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

WINDOW_S = 48 * 3600


@dataclass
class User:
    last_interaction: float | None = None  # unix time of the user's last message
    following: bool = True
    window_count: int = 0  # messages sent since the last interaction


@dataclass
class Fault:
    kind: str  # "errcode" | "http" | "delay"
    value: float
    paths: tuple[str, ...] = ()  # empty: any API path (never the token endpoint unless named)


@dataclass
class Message:
    openid: str
    kind: str  # "text" | "template"
    text: str
    template_id: str | None
    data: dict[str, Any]
    at: float


@dataclass
class FakeState:
    appid: str
    secret: str
    token_ttl_s: int = 7200
    token_grace_s: float = 300.0  # how long the old token still works after a new one
    window_limit: int = 20
    templates: set[str] = field(default_factory=set)
    users: dict[str, User] = field(default_factory=dict)
    tokens: dict[str, tuple[float, float]] = field(default_factory=dict)  # token -> (expires, invalid_at)
    current_token: str | None = None
    faults: deque[Fault] = field(default_factory=deque)
    messages: list[Message] = field(default_factory=list)
    menus: list[dict[str, Any]] = field(default_factory=list)
    calls: Counter[str] = field(default_factory=Counter)
    token_fetches: int = 0
    in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class FakeWeChat:
    """The fake server; ``start()`` runs it in a daemon thread and returns its base URL."""

    def __init__(self, *, appid: str = "wx1234567890abcdef", secret: str = "test-secret",
                 host: str = "127.0.0.1", port: int = 0) -> None:
        self.state = FakeState(appid=appid, secret=secret)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None

    # --- control (thread-safe) --------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def set_user(self, openid: str, *, last_interaction: float | None = None, following: bool = True) -> None:
        with self.state.lock:
            self.state.users[openid] = User(last_interaction, following)

    def interact(self, openid: str, at: float | None = None) -> None:
        """The user sent a message: a new 48-hour window opens."""
        with self.state.lock:
            u = self.state.users.setdefault(openid, User())
            u.last_interaction = time.time() if at is None else at
            u.window_count = 0

    def add_template(self, template_id: str) -> None:
        with self.state.lock:
            self.state.templates.add(template_id)

    def inject(self, kind: str, value: float, *, times: int = 1, paths: tuple[str, ...] = ()) -> None:
        """The next ``times`` calls (to ``paths``, or any API path) answer errcode ``value``
        (kind "errcode"), HTTP status ``value`` ("http"), or wait ``value`` seconds ("delay")."""
        with self.state.lock:
            for _ in range(times):
                self.state.faults.append(Fault(kind, value, paths))

    def expire_token(self) -> None:
        """Make the current token past its life (the next call with it answers 42001)."""
        with self.state.lock:
            if self.state.current_token:
                _exp, inv = self.state.tokens[self.state.current_token]
                self.state.tokens[self.state.current_token] = (time.time() - 1, inv)

    def wait_idle(self, timeout: float = 10.0) -> None:
        """Until no request is being handled (a delayed one then has been recorded or refused)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.state.lock:
                if self.state.in_flight == 0:
                    return
            time.sleep(0.01)
        raise TimeoutError("fake WeChat still holds a delayed request")

    def received(self, openid: str | None = None) -> list[Message]:
        with self.state.lock:
            return [m for m in self.state.messages if openid is None or m.openid == openid]

    def counts(self) -> Counter[str]:
        """How many messages each openid received."""
        with self.state.lock:
            return Counter(m.openid for m in self.state.messages)

    def reset(self) -> None:
        with self.state.lock:
            self.state.users.clear()
            self.state.tokens.clear()
            self.state.current_token = None
            self.state.faults.clear()
            self.state.messages.clear()
            self.state.menus.clear()
            self.state.calls.clear()
            self.state.templates.clear()
            self.state.token_fetches = 0

    # --- HTTP ---------------------------------------------------------------------------------

    def _take_fault(self, path: str) -> Fault | None:
        with self.state.lock:
            for i, f in enumerate(self.state.faults):
                if (f.paths and path in f.paths) or (not f.paths and path != "/cgi-bin/token"):
                    del self.state.faults[i]
                    return f
        return None

    async def _faulted(self, request: web.Request) -> web.Response | None:
        fault = self._take_fault(request.path)
        if fault is None:
            return None
        if fault.kind == "delay":
            await asyncio.sleep(fault.value)
            return None
        if fault.kind == "http":
            return web.Response(status=int(fault.value), text="fake upstream error")
        return web.json_response({"errcode": int(fault.value), "errmsg": "injected"})

    def _check_token(self, request: web.Request) -> dict[str, Any] | None:
        token = request.query.get("access_token", "")
        now = time.time()
        with self.state.lock:
            rec = self.state.tokens.get(token)
        if rec is None:
            return {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
        expires, invalid_at = rec
        if now >= invalid_at:
            return {"errcode": 40001, "errmsg": "invalid credential, access_token is invalid or not latest"}
        if now >= expires:
            return {"errcode": 42001, "errmsg": "access_token expired"}
        return None

    async def token(self, request: web.Request) -> web.Response:
        self.state.calls[request.path] += 1
        if (resp := await self._faulted(request)) is not None:
            return resp
        q = request.query
        if q.get("grant_type") != "client_credential":
            return web.json_response({"errcode": 40002, "errmsg": "invalid grant_type"})
        if q.get("appid") != self.state.appid:
            return web.json_response({"errcode": 40013, "errmsg": "invalid appid"})
        if q.get("secret") != self.state.secret:
            return web.json_response({"errcode": 40125, "errmsg": "invalid appsecret"})
        now = time.time()
        new = secrets.token_hex(16)
        with self.state.lock:
            old = self.state.current_token
            if old is not None:
                exp, inv = self.state.tokens[old]
                self.state.tokens[old] = (exp, min(inv, now + self.state.token_grace_s))
            self.state.tokens[new] = (now + self.state.token_ttl_s, float("inf"))
            self.state.current_token = new
            self.state.token_fetches += 1
        return web.json_response({"access_token": new, "expires_in": self.state.token_ttl_s})

    async def _api(self, request: web.Request) -> tuple[dict[str, Any] | None, web.Response | None]:
        self.state.calls[request.path] += 1
        if (resp := await self._faulted(request)) is not None:
            return None, resp
        if (err := self._check_token(request)) is not None:
            return None, web.json_response(err)
        try:
            body = json.loads(await request.read())
        except ValueError:
            return None, web.json_response({"errcode": 47001, "errmsg": "data format error"})
        return body, None

    async def custom_send(self, request: web.Request) -> web.Response:
        body, resp = await self._api(request)
        if resp is not None:
            return resp
        assert body is not None
        openid = body.get("touser", "")
        now = time.time()
        with self.state.lock:
            user = self.state.users.get(openid)
            if user is None:
                return web.json_response({"errcode": 40003, "errmsg": "invalid openid"})
            if not user.following:
                return web.json_response({"errcode": 43004, "errmsg": "require subscribe"})
            if user.last_interaction is None or now - user.last_interaction > WINDOW_S:
                return web.json_response({"errcode": 45015, "errmsg": "response out of time limit"})
            if user.window_count >= self.state.window_limit:
                return web.json_response({"errcode": 45047, "errmsg": "out of response count limit"})
            user.window_count += 1
            text = (body.get("text") or {}).get("content", "")
            self.state.messages.append(Message(openid, "text", text, None, {}, now))
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    async def template_send(self, request: web.Request) -> web.Response:
        body, resp = await self._api(request)
        if resp is not None:
            return resp
        assert body is not None
        openid = body.get("touser", "")
        template_id = body.get("template_id", "")
        with self.state.lock:
            user = self.state.users.get(openid)
            if user is None:
                return web.json_response({"errcode": 40003, "errmsg": "invalid openid"})
            if not user.following:
                return web.json_response({"errcode": 43004, "errmsg": "require subscribe"})
            if template_id not in self.state.templates:
                return web.json_response({"errcode": 40037, "errmsg": "invalid template_id"})
            data = body.get("data") or {}
            text = "\n".join(str(v.get("value", "")) for v in data.values() if isinstance(v, dict))
            self.state.messages.append(Message(openid, "template", text, template_id, data, time.time()))
            msgid = len(self.state.messages)
        return web.json_response({"errcode": 0, "errmsg": "ok", "msgid": msgid})

    async def menu_create(self, request: web.Request) -> web.Response:
        body, resp = await self._api(request)
        if resp is not None:
            return resp
        assert body is not None
        if not isinstance(body.get("button"), list) or not 1 <= len(body["button"]) <= 3:
            return web.json_response({"errcode": 40016, "errmsg": "invalid button size"})
        with self.state.lock:
            self.state.menus.append(body)
        return web.json_response({"errcode": 0, "errmsg": "ok"})

    # control API, for a server running in another process
    async def ctl_user(self, request: web.Request) -> web.Response:
        b = await request.json()
        self.set_user(b["openid"], last_interaction=b.get("last_interaction"), following=b.get("following", True))
        return web.json_response({"ok": True})

    async def ctl_users(self, request: web.Request) -> web.Response:
        for b in await request.json():
            self.set_user(b["openid"], last_interaction=b.get("last_interaction"),
                          following=b.get("following", True))
        return web.json_response({"ok": True})

    async def ctl_fault(self, request: web.Request) -> web.Response:
        b = await request.json()
        self.inject(b["kind"], b["value"], times=b.get("times", 1), paths=tuple(b.get("paths", ())))
        return web.json_response({"ok": True})

    async def ctl_counts(self, request: web.Request) -> web.Response:
        return web.json_response(dict(self.counts()))

    async def ctl_reset(self, request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"ok": True})

    @web.middleware
    async def _count(self, request: web.Request, handler: Any) -> web.StreamResponse:
        with self.state.lock:
            self.state.in_flight += 1
        try:
            return await handler(request)  # type: ignore[no-any-return]
        finally:
            with self.state.lock:
                self.state.in_flight -= 1

    def app(self) -> web.Application:
        app = web.Application(client_max_size=1024 * 1024, middlewares=[self._count])
        app.router.add_get("/cgi-bin/token", self.token)
        app.router.add_post("/cgi-bin/message/custom/send", self.custom_send)
        app.router.add_post("/cgi-bin/message/template/send", self.template_send)
        app.router.add_post("/cgi-bin/menu/create", self.menu_create)
        app.router.add_post("/_fake/user", self.ctl_user)
        app.router.add_post("/_fake/users", self.ctl_users)
        app.router.add_post("/_fake/fault", self.ctl_fault)
        app.router.add_get("/_fake/counts", self.ctl_counts)
        app.router.add_post("/_fake/reset", self.ctl_reset)
        return app

    # --- lifecycle ------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=512)
        await site.start()
        sockets = site._server.sockets  # type: ignore[union-attr]
        self.port = sockets[0].getsockname()[1]

    def start(self) -> FakeWeChat:
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the starting thread
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._runner.cleanup())  # type: ignore[union-attr]
            loop.close()

        self._thread = threading.Thread(target=run, name="fakewechat", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise errors[0]
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            self._loop = None

    def __enter__(self) -> FakeWeChat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="fake WeChat API server (loopback only)")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--appid", default="wx1234567890abcdef")
    parser.add_argument("--secret", default="test-secret")
    args = parser.parse_args()
    fake = FakeWeChat(appid=args.appid, secret=args.secret, port=args.port)
    web.run_app(fake.app(), host="127.0.0.1", port=args.port, access_log=None)


if __name__ == "__main__":
    main()


# --- helpers for tests of jobs/ (fixtures are imported by the test modules) ------------------

try:
    import pytest
except ImportError:  # running as a plain server process
    pytest = None  # type: ignore[assignment]


class Clock:
    """The jobs' clock in tests (``rt.extras["clock"]``): starts at the real now, moves on demand."""

    def __init__(self) -> None:
        from models.db import utcnow

        self.now = utcnow().replace(microsecond=0)

    def __call__(self) -> Any:
        return self.now

    def advance(self, **delta: float) -> Any:
        from datetime import timedelta

        self.now += timedelta(**delta)
        return self.now

    def set(self, when: Any) -> Any:
        self.now = when
        return self.now


def run_due(connection: Any, until: Any) -> list[str]:
    """Move every scheduled job due by ``until`` (aware) to its queue: time passing, for RQ."""
    from rq.job import Job

    from jobs import queues

    moved: list[str] = []
    for name in queues.ALL:
        q = queues.queue(name, connection)
        reg = q.scheduled_job_registry
        for job_id in reg.get_jobs_to_schedule(int(until.timestamp())):
            job = Job.fetch(job_id, connection=connection)
            reg.remove(job)
            q.enqueue_job(job)
            moved.append(job_id)
    return moved


def work(connection: Any) -> None:
    """Run every queued job in this process with a real RQ worker (burst: until empty)."""
    from rq import SimpleWorker

    from jobs import queues

    class _Worker(SimpleWorker):
        def subscribe(self) -> None:  # no command channel: rq's 60 s pubsub poll delays exit
            pass

        def unsubscribe(self) -> None:
            pass

    w = _Worker([queues.queue(q, connection) for q in queues.ALL], connection=connection)
    w.work(burst=True, with_scheduler=False, logging_level="WARNING")


def scheduled(connection: Any) -> dict[str, Any]:
    """job id -> scheduled time (aware UTC) over all queues."""
    from jobs import queues

    out: dict[str, Any] = {}
    for name in queues.ALL:
        reg = queues.queue(name, connection).scheduled_job_registry
        for job_id in reg.get_job_ids():
            out[job_id] = reg.get_scheduled_time(job_id)
    return out


if pytest is not None:

    @pytest.fixture(scope="session")
    def fake_server() -> Any:
        server = FakeWeChat(appid="wx1234567890abcdef", secret="test-secret").start()
        yield server
        server.stop()

    @pytest.fixture
    def fake(fake_server: FakeWeChat) -> Any:
        fake_server.reset()
        fake_server.state.token_grace_s = 300.0
        fake_server.state.window_limit = 20
        yield fake_server
        fake_server.reset()

    @pytest.fixture
    def jobrt(settings: Any, sessions: Any, engine: Any, redis_client: Any, fake: FakeWeChat) -> Any:
        """A job runtime on the test database and Redis, WeChat at the fake, a movable clock."""
        from jobs.runtime import Runtime, use_runtime

        s = settings.model_copy(update={
            "wechat_api_base": fake.base_url,
            "broadcast_rate_per_s": 10_000.0,
            "wechat_timeout_s": 2.0,
        })
        rt = Runtime(settings=s, engine=engine, sessions=sessions, redis=redis_client)
        rt.extras["clock"] = Clock()
        use_runtime(rt)
        yield rt
        use_runtime(None)


def make_grid(session: Any, *, name: str = "东丰村第3网格", code: str | None = None, parent: Any = None,
              level: str = "grid") -> Any:
    from models.tables import GridUnit, Level

    unit = GridUnit(code=code or f"G{secrets.token_hex(4)}", name=name, level=Level(level),
                    parent_id=parent.id if parent is not None else None, lat=29.29, lng=120.23, h3="88309a4c1bfffff")
    session.add(unit)
    session.flush()
    unit.path = f"{parent.path if parent is not None else '/'}{unit.id}/"
    session.add(unit)
    session.flush()
    return unit


def make_person(session: Any, *, openid: str | None, last: Any = None, grid: Any = None, volunteer: bool = True,
                coordinator_scope: Any = None, name: str = "王丽", status: str = "active") -> Any:
    from models.tables import Person, PersonStatus

    p = Person(openid=openid, name=name, is_volunteer=volunteer, home_grid_id=grid.id if grid is not None else None,
               is_coordinator=coordinator_scope is not None,
               coordinator_scope_id=coordinator_scope.id if coordinator_scope is not None else None,
               status=PersonStatus(status), last_interaction_at=last)
    session.add(p)
    session.flush()
    return p


def make_shift(session: Any, *, grid: Any, starts_at: Any, hours: float = 1.5, title: str = "爱心冰柜补货",
               place: str = "东丰村", slots: int = 2) -> Any:
    from datetime import timedelta

    from models.tables import Task, TaskKind, TaskMode

    t = Task(kind=TaskKind.fridge_restock, mode=TaskMode.signup, title=title, place=place, lat=29.29, lng=120.23,
             h3="88309a4c1bfffff", grid_id=grid.id, starts_at=starts_at, ends_at=starts_at + timedelta(hours=hours),
             slots=slots)
    session.add(t)
    session.flush()
    return t
