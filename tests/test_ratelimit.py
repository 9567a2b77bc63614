"""Per-openid rate limiting at the webhook: a noisy account gets a short notice, the engine is
not run for it, WeChat's retries still count once, and everyone else is served as usual."""

from __future__ import annotations

import asyncio
import json

import redis

from bot.simulator import Simulator
from bot.webhook import TOO_FAST
from tests import test_webhook as tw
from tests.test_webhook import APP_ID, TOKEN, Serve, StubHandler, metric

# the webhook tests' fixtures: a real loopback server around a recording stub handler
base_settings = tw.base_settings
serve = tw.serve


async def test_over_the_limit_gets_a_notice_and_no_engine(serve: Serve, redis_client: redis.Redis) -> None:
    handler = StubHandler()
    server, sim = await serve(handler, ratelimit_messages=5, ratelimit_window_s=60)
    replies = [await sim.send(sim.text(f"第{i}条")) for i in range(8)]
    assert replies[:5] == [f"第{i + 1}次：第{i}条" for i in range(5)]
    assert replies[5:] == [TOO_FAST] * 3
    assert len(handler.calls) == 5  # the engine never saw the last three
    assert metric(server, "text", "limited") == 3 and metric(server, "text", "replied") == 5


async def test_a_limited_message_is_still_deduped(serve: Serve, redis_client: redis.Redis) -> None:
    handler = StubHandler()
    server, sim = await serve(handler, ratelimit_messages=1, ratelimit_window_s=60)
    assert await sim.send(sim.text("帮助")) == "第1次：帮助"
    noisy = sim.text("帮助", msg_id=99001)
    # WeChat retries the refused message three times: the same notice, counted once
    assert [await sim.send(noisy) for _ in range(3)] == [TOO_FAST] * 3
    assert json.loads(redis_client.get("dedupe:msg:99001")) == {"s": "done", "r": TOO_FAST}
    assert metric(server, "text", "limited") == 1 and metric(server, "text", "duplicate") == 2
    assert len(handler.calls) == 1


async def test_one_noisy_account_does_not_take_the_others_turns(serve: Serve, redis_client: redis.Redis) -> None:
    handler = StubHandler()
    _, noisy = await serve(handler, openid="o-noisy-account", ratelimit_messages=10, ratelimit_window_s=60)
    quiet = Simulator(noisy.url, token=TOKEN, app_id=APP_ID, openid="o-quiet-account")
    flood = [noisy.send(noisy.text(f"刷屏{i}")) for i in range(60)]
    calm = [quiet.send(quiet.text(f"班次{i}")) for i in range(5)]
    results = await asyncio.gather(*flood, *calm)
    flood_replies, calm_replies = results[:60], results[60:]
    assert sum(r == TOO_FAST for r in flood_replies) == 50
    assert all(r is not None and r != TOO_FAST for r in calm_replies)
    by_user: dict[str, int] = {}
    for c in handler.calls:
        by_user[c.user] = by_user.get(c.user, 0) + 1
    assert by_user == {"o-noisy-account": 10, "o-quiet-account": 5}


async def test_the_bucket_refills(serve: Serve, redis_client: redis.Redis) -> None:
    handler = StubHandler()
    _, sim = await serve(handler, ratelimit_messages=2, ratelimit_window_s=0.4)
    assert [await sim.send(sim.text(f"{i}")) for i in range(3)][-1] == TOO_FAST
    await asyncio.sleep(0.5)  # a whole window of silence: the full burst is back
    assert [await sim.send(sim.text(f"again{i}")) for i in range(2)] == ["第3次：again0", "第4次：again1"]


async def test_follow_events_are_never_limited_and_silent_events_stay_silent(
    serve: Serve, redis_client: redis.Redis
) -> None:
    handler = StubHandler()
    _, sim = await serve(handler, ratelimit_messages=1, ratelimit_window_s=60)
    assert await sim.send(sim.text("帮助")) == "第1次：帮助"
    # over the limit now; following and unfollowing must still reach the engine
    assert await sim.send(sim.event("subscribe", create_time=1_900_000_000)) == "第2次：subscribe"
    assert await sim.send(sim.event("unsubscribe", create_time=1_900_000_001)) is None
    assert len(handler.calls) == 3
    # a menu click is a message: the notice; a periodic location report expects no answer
    assert await sim.send(sim.event("CLICK", "RG_SHIFTS", create_time=1_900_000_002)) == TOO_FAST
    assert await sim.send(sim.location_event(29.28, 120.23, create_time=1_900_000_003)) is None
    assert len(handler.calls) == 3


async def test_zero_turns_the_limit_off(serve: Serve, redis_client: redis.Redis) -> None:
    handler = StubHandler()
    _, sim = await serve(handler, ratelimit_messages=0)
    replies = await asyncio.gather(*(sim.send(sim.text(f"{i}")) for i in range(40)))
    assert TOO_FAST not in replies and len(handler.calls) == 40
    assert not redis_client.exists(f"rl:{sim.openid}")


async def test_without_redis_nobody_is_limited(serve: Serve) -> None:
    handler = StubHandler()
    _, sim = await serve(handler, redis_url="redis://127.0.0.1:1/0", ratelimit_messages=1)
    assert [await sim.send(sim.text(f"{i}")) for i in range(3)] == ["第1次：0", "第2次：1", "第3次：2"]
