"""`redgrid web --processes 2`: real gunicorn workers on one port, sharing Redis and the database.

A registration dialog whose steps land on different processes completes (its state lives in
Redis); a worker SIGKILLed is replaced while the other keeps answering; SIGTERM stops them all.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from sqlmodel import select

from bot.simulator import Simulator
from models.db import make_engine, session_factory
from models.migrate import upgrade
from models.settings import load_settings
from models.tables import Person, PersonStatus
from tests.procs import free_port, wait_port

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent


def _pid(port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
        return int(json.loads(resp.read())["pid"])


def _pids(port: int, n: int = 40) -> set[int]:
    return {_pid(port) for _ in range(n)}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def test_several_processes_serve_one_port(tmp_path: Path, redis_url: str, redis_client) -> None:  # type: ignore[no-untyped-def]
    db_url = f"sqlite:///{tmp_path / 'web.db'}"
    settings = load_settings(database_url=db_url, redis_url=redis_url, var_dir=tmp_path / "var",
                             wechat_token="test-token", wechat_app_id="wx1234567890abcdef")
    engine = make_engine(settings)
    upgrade(engine)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WECHAT_", "DATABASE_URL", "REDIS_URL"))}
    env.update(DATABASE_URL=db_url, REDIS_URL=redis_url, VAR_DIR=str(tmp_path / "var"),
               WECHAT_TOKEN="test-token", WECHAT_APP_ID="wx1234567890abcdef")
    log = (tmp_path / "web.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "redgrid.cli", "web", "--port", str(port), "--processes", "2"],
                            cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_port(port, proc)
        deadline = time.monotonic() + 30
        pids = _pids(port)
        while len(pids) < 2 and time.monotonic() < deadline:
            pids |= _pids(port)
        assert len(pids) == 2, f"one port, two worker processes: {pids}"

        # a dialog whose steps are served by whichever process: its state is in Redis
        sim = Simulator.from_settings(settings, f"http://127.0.0.1:{port}/wechat", "multi-proc-1")
        for text, expect in [("注册", "姓名"), ("赵敏", "手机号"), ("13900001234", "位置")]:
            reply = await sim.send(sim.text(text))
            assert reply is not None and expect in reply, reply

        # a worker killed outright is replaced; the service answers throughout
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 30
        seen: set[int] = set()
        while time.monotonic() < deadline:
            seen |= _pids(port, 10)
            if len(seen - {victim}) >= 2:
                break
            time.sleep(0.2)
        assert victim not in seen or not _alive(victim)
        assert len(seen - pids) >= 1, "a new worker took the dead one's place"

        with session_factory(engine)() as s:
            assert s.exec(select(Person).where(Person.openid == "multi-proc-1")).one().status == PersonStatus.pending
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
        log.close()
        engine.dispose()
    assert code == 0
    workers = seen | pids
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in workers), "SIGTERM stops every worker"


def test_a_worker_leaving_does_not_stop_the_embedded_redis(tmp_path: Path) -> None:
    """Without REDIS_URL the master starts the embedded Redis; a worker that exits (it was
    forked inside the master's frames) must not stop it for everyone."""
    import redis

    db_url = f"sqlite:///{tmp_path / 'web.db'}"
    settings = load_settings(database_url=db_url, var_dir=tmp_path / "var")
    upgrade_engine = make_engine(settings)
    upgrade(upgrade_engine)
    upgrade_engine.dispose()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "REDIS_URL", "REDGRID_EMBEDDED"))}
    env.update(DATABASE_URL=db_url, VAR_DIR=str(tmp_path / "var"))
    log = (tmp_path / "web.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "redgrid.cli", "web", "--port", str(port), "--processes", "2"],
                            cwd=ROOT, env=env, stdout=log, stderr=log)
    sock = settings.embedded_redis_socket
    try:
        wait_port(port, proc)
        pids = _pids(port)
        deadline = time.monotonic() + 30
        while len(pids) < 2 and time.monotonic() < deadline:
            pids |= _pids(port)
        os.kill(min(pids), signal.SIGTERM)  # a graceful exit, through the forked frames
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(_pids(port) - pids) == 0:
            time.sleep(0.2)
        assert redis.Redis(unix_socket_path=str(sock), socket_timeout=2).ping()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
        log.close()
    assert not sock.exists()  # the owner stopped it at the end
