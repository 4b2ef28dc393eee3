"""The outbox dispatcher: delivers queued alerts, records every attempt, retries, gives up, resumes.

The queue itself is durable storage (`storage.alerts`, reached through the `OutboxQueue` protocol so
this room imports no storage code). For each due (alert, channel) pair the dispatcher commits
"sending", calls the channel, and commits the outcome as a Delivery:

- delivered → done;
- a retryable DeliveryError → queued again after exponential backoff with full jitter, or after the
  receiver's `Retry-After` when it is longer (429);
- a permanent DeliveryError (bad request, bad credentials), an unknown channel, or an alert older than
  `give_up_after` → failed, visible in `alerts list` and the export, and retried only on request.

A pair is claimed before it is sent (`begin` returns None when another dispatcher claimed it first, and
this one skips it). On start `recover()` requeues pairs left "sending" by a process that is gone: the
channel may already have them, so the resend carries the same dedup key for the receiver to drop (at
most one resend per crash). Channels are
served concurrently, so one receiver being down never delays the others; within a channel, alerts go out
in the order they were queued.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from monitor.model import Alert, Clock, Delivery, DeliveryError

__all__ = ["RetryPolicy", "OutboxQueue", "PendingLike", "Dispatcher"]

log = logging.getLogger("alerts.outbox")


@dataclass(frozen=True)
class RetryPolicy:
    """Backoff between attempts and when to give up (seconds)."""

    base: float = 5.0
    cap: float = 900.0
    give_up_after: float = 86_400.0

    def delay(self, attempt: int, rng: random.Random, retry_after: float | None = None) -> float:
        """Full-jitter exponential delay before attempt `attempt + 1`, at least `retry_after`."""
        step = min(self.cap, self.base * (2 ** max(0, attempt - 1)))
        d = rng.uniform(0, step)
        return max(d, retry_after or 0.0)


class PendingLike(Protocol):
    alert: Alert
    channel: str
    attempts: int


class OutboxQueue(Protocol):
    """Durable queue operations (implemented over storage by the daemon)."""

    async def due(self, now: int, limit: int) -> list[PendingLike]: ...

    async def begin(self, alert_id: int, channel: str, now: int) -> int | None: ...

    async def finish(self, delivery: Delivery) -> None: ...

    async def recover(self, now: int) -> int: ...


class Dispatcher:
    """Delivers what the queue says is due, through the named channels."""

    def __init__(
        self,
        queue: OutboxQueue,
        channels: Mapping[str, object],
        clock: Clock,
        *,
        policy: RetryPolicy = RetryPolicy(),
        rng: random.Random | None = None,
        batch: int = 100,
    ):
        self.queue = queue
        self.channels = dict(channels)
        self.clock = clock
        self.policy = policy
        self.rng = rng or random.Random()
        self.batch = batch
        self.delivered = 0
        self.failed = 0
        self.attempts = 0
        self.latencies: list[float] = []  # queued → delivered, seconds (for metrics)
        self._failing: dict[str, str] = {}
        # One pass at a time: two overlapping passes would both see the same pairs due and send twice.
        self._pass = asyncio.Lock()

    async def recover(self) -> int:
        """Requeue pairs a previous process left in flight; returns how many."""
        n = await self.queue.recover(int(self.clock.time()))
        if n:
            log.warning("outbox: %d alert deliveries were in flight when the process stopped; resending them once", n)
        return n

    async def dispatch_once(self) -> int:
        """One pass over what is due now; returns the number of attempts made."""
        async with self._pass:
            return await self._dispatch()

    async def _dispatch(self) -> int:
        now = int(self.clock.time())
        pending = await self.queue.due(now, self.batch)
        by_channel: dict[str, list[PendingLike]] = {}
        for p in pending:
            by_channel.setdefault(p.channel, []).append(p)
        counts = await asyncio.gather(*(self._serve(ch, items) for ch, items in by_channel.items()))
        return sum(counts)

    async def _serve(self, channel_name: str, items: list[PendingLike]) -> int:
        n = 0
        for p in items:
            n += 1
            stop = await self._attempt(p)
            if stop:  # the receiver is failing: leave the rest of this channel for the next pass
                break
        return n

    async def _attempt(self, p: PendingLike) -> bool:
        alert, name = p.alert, p.channel
        assert alert.id is not None
        now = self.clock.time()
        attempt = await self.queue.begin(alert.id, name, int(now))
        if attempt is None:  # another dispatcher claimed this pair first: it sends it, not us
            return False
        self.attempts += 1
        channel = self.channels.get(name)
        if channel is None:
            await self._finish(alert, name, attempt, "failed", f"channel {name!r} is not configured")
            return False
        try:
            await channel.send(alert)  # type: ignore[attr-defined]
        except DeliveryError as exc:
            age = self.clock.time() - alert.created_at
            if not exc.retryable:
                await self._finish(alert, name, attempt, "failed", f"permanent: {exc}")
                return False
            if age >= self.policy.give_up_after:
                await self._finish(alert, name, attempt, "failed", f"gave up after {age / 3600:.1f} h: {exc}")
                return True
            delay = self.policy.delay(attempt, self.rng, exc.retry_after)
            await self._finish(alert, name, attempt, "retry", str(exc), next_at=int(self.clock.time() + delay + 0.999))
            if name not in self._failing:
                log.warning("channel=%s delivery failing, will retry: %s", name, exc)
            self._failing[name] = str(exc)
            return True
        await self._finish(alert, name, attempt, "ok", "")
        self.latencies.append(max(0.0, self.clock.time() - alert.created_at))
        if self._failing.pop(name, None) is not None:
            log.warning("channel=%s delivering again", name)
        return False

    async def _finish(
        self, alert: Alert, channel: str, attempt: int, status: str, error: str, next_at: int | None = None
    ) -> None:
        assert alert.id is not None
        if status == "ok":
            self.delivered += 1
        elif status == "failed":
            self.failed += 1
            log.error("channel=%s alert=%s dedup_key=%s delivery failed for good: %s", channel, alert.id, alert.dedup_key, error)
        await self.queue.finish(Delivery(alert.id, channel, attempt, int(self.clock.time()), status, error, next_at))

    async def flush(self, timeout: float) -> bool:
        """Deliver everything due, for at most `timeout` seconds (one pass at least); True when nothing is
        left due."""
        deadline = self.clock.time() + timeout
        while True:
            if await self.dispatch_once() == 0:
                return True
            if self.clock.time() >= deadline:
                return False
            await self.clock.sleep(0)
