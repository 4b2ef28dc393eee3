"""The durable outbox: deliveries to real receivers, retries, Retry-After, give-up, listing, retry."""

import asyncio

import aiohttp
import pytest
from fakes.receiver import Receiver

from alerts.channels import SlackChannel, WebhookChannel
from alerts.channels.webhook import verify_standard
from alerts.outbox import Dispatcher, RetryPolicy
from monitor.clock import FrozenClock
from monitor.run.alert_plan import StoreQueue, sample_alert
from storage import AsyncStore, Store
from storage import alerts as ob

SECRET = "whsec-test-0123456789"


def _queue_one(store, alert, txid, now):
    with store.batch():
        return ob.queue_alert(store, alert, chain="bitcoin", txid=txid, entity="TEST", now=now)


class Harness:
    def __init__(self, db_path, clock):
        self.store = Store(db_path)
        self.astore = AsyncStore(self.store)
        self.clock = clock

    async def queue(self, channels=("slack",), *, n=1):
        ids = []
        for i in range(n):
            a = sample_alert(int(self.clock.time()) + i, channels)
            ids.append(await self.astore.run(_queue_one, a, f"{i:064x}", int(self.clock.time())))
        return ids

    def dispatcher(self, channels, **policy):
        return Dispatcher(StoreQueue(self.astore), channels, self.clock, policy=RetryPolicy(**policy))

    async def drain(self, d, *, max_passes=50, step=None):
        """Run passes, jumping the frozen clock to the next due time between them."""
        for _ in range(max_passes):
            await d.dispatch_once()
            nxt = await self.astore.run(ob.next_due_at)
            if nxt is None:
                return
            if step is not None:
                await step()
            if nxt > self.clock.time():
                self.clock.now = nxt


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


@pytest.fixture
async def h(db_path):
    h = await asyncio.to_thread(Harness, db_path, FrozenClock())  # opens (migrates) the database: off the loop
    yield h
    await h.astore.close()


async def test_500_three_times_then_200_is_delivered_once(h, session):
    async with Receiver() as rx:
        rx.fail(3)
        [aid] = await h.queue()
        d = h.dispatcher({"slack": SlackChannel("slack", rx.url("/hook"), session)})
        await h.drain(d)
        reqs = [r for r in rx.requests if r.status == 200]
        assert len(reqs) == 1 and len(rx.requests) == 4
        attempts = await h.astore.run(ob.deliveries_of, aid)
        assert [x.status for x in attempts] == ["retry", "retry", "retry", "ok"]
        assert all("500" in x.error for x in attempts[:3])
        assert (await h.astore.run(ob.alert_rows))[0]["status"] == "delivered"


async def test_429_retry_after_is_honoured(h, session):
    async with Receiver() as rx:
        rx.rate_limit(retry_after="2")
        [aid] = await h.queue()
        d = h.dispatcher({"slack": SlackChannel("slack", rx.url("/hook"), session)}, base=0.001, cap=0.001)
        t0 = h.clock.time()
        await d.dispatch_once()
        [first] = await h.astore.run(ob.deliveries_of, aid)
        assert first.status == "retry" and first.next_at - t0 >= 2  # backoff would have been ~0 s
        await d.dispatch_once()  # not due yet: nothing is sent
        assert len(rx.requests) == 1
        await h.drain(d)
        assert [r.status for r in rx.requests] == [429, 200]


async def test_receiver_down_then_up_is_delivered_after_it_comes_up(h, session):
    rx = Receiver()
    url = rx.url("/hook")  # port reserved; nothing listens yet: connection refused
    [aid] = await h.queue()
    d = h.dispatcher({"slack": SlackChannel("slack", url, session)})
    passes = 0

    async def maybe_start():
        nonlocal passes
        passes += 1
        if passes == 4:
            await rx.start()

    try:
        await h.drain(d, step=maybe_start)
        attempts = await h.astore.run(ob.deliveries_of, aid)
        assert [a.status for a in attempts][-1] == "ok" and len(attempts) >= 4
        assert all(a.status == "retry" for a in attempts[:-1])
        assert len(rx.requests) == 1
    finally:
        await rx.stop()


async def test_timeouts_are_retried(h, session):
    async with Receiver() as rx:
        rx.delay(5.0)
        [aid] = await h.queue()
        d = h.dispatcher({"slack": SlackChannel("slack", rx.url("/hook"), session, timeout=0.2)})
        await h.drain(d)
        attempts = await h.astore.run(ob.deliveries_of, aid)
        assert [a.status for a in attempts] == ["retry", "ok"]


async def test_give_up_after_age_marks_failed_and_list_shows_it(h, session):
    async with Receiver() as rx:
        rx.fail(1000)
        [aid] = await h.queue()
        d = h.dispatcher({"slack": SlackChannel("slack", rx.url("/hook"), session)}, give_up_after=3600, base=60, cap=600)
        await h.drain(d, max_passes=200)
        rows = await h.astore.run(ob.alert_rows, status="failed")
        assert [r["id"] for r in rows] == [aid]
        assert "gave up" in rows[0]["channels"][0]["last_error"]
        assert h.clock.time() - rows[0]["created_at"] >= 3600
        # `alerts retry` requeues it, and once the receiver recovers it is delivered
        rx.clear()
        assert await h.astore.run(ob.retry_alert, aid, now=int(h.clock.time())) == 1
        await h.drain(d)
        assert (await h.astore.run(ob.alert_rows))[0]["status"] == "delivered"


async def test_permanent_error_fails_at_once_and_other_channels_still_deliver(h, session):
    async with Receiver() as slack, Receiver() as hook:
        slack.script(*[__import__("fakes.receiver", fromlist=["Reply"]).Reply(400, "invalid_payload")])
        [aid] = await h.queue(("slack", "hook"))
        d = h.dispatcher(
            {
                "slack": SlackChannel("slack", slack.url("/hook"), session),
                "hook": WebhookChannel("hook", hook.url("/in"), SECRET, session, clock=h.clock),
            }
        )
        await h.drain(d)
        [row] = await h.astore.run(ob.alert_rows)
        states = {c["channel"]: c["status"] for c in row["channels"]}
        assert states == {"slack": "failed", "hook": "delivered"} and row["status"] == "failed"
        [req] = hook.requests
        assert verify_standard(SECRET, req.headers, req.body, now=int(h.clock.time()))
        assert req.json["dedup_key"] == row["dedup_key"] and req.headers["webhook-id"] == req.json["message_id"]


async def test_unknown_channel_fails_with_a_clear_error(h, session):
    [aid] = await h.queue(("gone",))
    d = h.dispatcher({})
    await h.drain(d)
    [row] = await h.astore.run(ob.alert_rows)
    assert row["status"] == "failed" and "not configured" in row["channels"][0]["last_error"]


async def test_in_flight_pairs_are_recovered_once(h, session):
    async with Receiver() as rx:
        [aid] = await h.queue()
        # a previous process committed "sending" and died before recording the outcome
        await h.astore.run(ob.begin_attempt, aid, "slack", now=int(h.clock.time()))
        d = h.dispatcher({"slack": SlackChannel("slack", rx.url("/hook"), session)})
        assert await d.dispatch_once() == 0  # in flight: not due until recovered
        assert await d.recover() == 1
        await h.drain(d)
        attempts = await h.astore.run(ob.deliveries_of, aid)
        assert [a.status for a in attempts] == ["interrupted", "ok"]
        assert len(rx.requests) == 1


async def test_a_failing_channel_does_not_delay_the_others(h, session):
    async with Receiver() as slow, Receiver() as fast:
        slow.fail(1000)
        await h.queue(("slow", "fast"), n=5)
        d = h.dispatcher(
            {"slow": SlackChannel("slow", slow.url("/"), session), "fast": SlackChannel("fast", fast.url("/"), session)}
        )
        await d.dispatch_once()
        assert len(fast.requests) == 5
        assert len(slow.requests) == 1  # after the first failure the rest wait for the next pass


async def test_overlapping_passes_never_send_twice(h, session):
    async with Receiver() as rx:
        rx.delay(0.2, times=3)
        await h.queue(n=3)
        d = h.dispatcher({"slack": SlackChannel("slack", rx.url("/hook"), session)})
        await __import__("asyncio").gather(d.dispatch_once(), d.dispatch_once(), d.dispatch_once())
        assert len(rx.requests) == 3


async def test_two_dispatchers_on_one_database_send_each_alert_once(h, db_path, session):
    """Two processes' dispatchers (own connections to one file) race for the same due pairs: one claim wins."""
    other = await asyncio.to_thread(Harness, db_path, h.clock)
    try:
        async with Receiver() as rx:
            rx.delay(0.2, times=6)  # every send is slow: the other dispatcher runs meanwhile
            ids = await h.queue(n=3)
            channel = {"slack": SlackChannel("slack", rx.url("/hook"), session)}
            first, second = h.dispatcher(channel), other.dispatcher(channel)
            await asyncio.gather(first.dispatch_once(), second.dispatch_once())
            keys = [r.body for r in rx.requests]
            assert len(rx.requests) == 3 and len(set(keys)) == 3
            rows = await h.astore.run(ob.alert_rows)
            assert [r["status"] for r in rows] == ["delivered"] * 3
            for aid in ids:
                assert [a.status for a in await h.astore.run(ob.deliveries_of, aid)] == ["ok"]
    finally:
        await other.astore.close()


async def test_recovery_leaves_a_live_owners_sends_alone(h):
    """Only pairs whose owner is gone are requeued: a live dispatcher's send in progress is not resent."""
    [live, dead] = await h.queue(n=2)
    now = int(h.clock.time())
    assert await h.astore.run(ob.begin_attempt, live, "slack", now=now, owner="alive-1") == 1
    assert await h.astore.run(ob.begin_attempt, dead, "slack", now=now, owner="gone-2") == 1
    assert await h.astore.run(ob.begin_attempt, live, "slack", now=now, owner="late-3") is None  # already claimed
    assert await h.astore.run(ob.recover_in_flight, now=now, live_owners=("alive-1",)) == 1
    rows = {r["id"]: r["channels"][0] for r in await h.astore.run(ob.alert_rows)}
    assert rows[live]["status"] == "sending" and rows[dead]["status"] == "queued"
    assert [a.status for a in await h.astore.run(ob.deliveries_of, live)] == ["sending"]
    assert [a.status for a in await h.astore.run(ob.deliveries_of, dead)] == ["interrupted"]
