"""Per-channel rate limit: a minimum interval between sends, measured and waited on an injected Clock.

`RateLimitedChannel(channel, min_interval, clock)` wraps any Channel; `channels.build_channel` applies
it when a channel's settings carry `min_interval` (Slack's own default is one message per second per
webhook, `DEFAULT_MIN_INTERVAL`). Sends through one wrapper are serialised, so concurrent dispatcher
tasks cannot burst past the limit. The wait uses `clock.sleep`, so tests with a FrozenClock see the
delays without waiting for them.
"""

from __future__ import annotations

import asyncio

from monitor.model import Alert, Clock

__all__ = ["MinInterval", "RateLimitedChannel", "DEFAULT_MIN_INTERVAL"]

#: Seconds between sends per channel type when the settings do not say (Slack: 1 msg/s per webhook).
DEFAULT_MIN_INTERVAL = {"slack": 1.0, "apprise": 1.0}  # apprise: Telegram allows ~1 msg/s per chat


class MinInterval:
    """Lets one caller through at a time, at least `interval` seconds after the previous one started."""

    def __init__(self, interval: float, clock: Clock):
        if interval < 0:
            raise ValueError("interval must be >= 0")
        self.interval = interval
        self._clock = clock
        self._next_at: float | None = None
        self._lock = asyncio.Lock()

    async def wait(self) -> float:
        """Wait for the next slot; returns the seconds slept (0.0 when none was needed)."""
        async with self._lock:
            now = self._clock.time()
            slept = 0.0
            if self._next_at is not None and now < self._next_at:
                slept = self._next_at - now
                await self._clock.sleep(slept)
                now = self._clock.time()
            self._next_at = now + self.interval
            return slept


class RateLimitedChannel:
    """A Channel that waits for its MinInterval slot before delegating `send`."""

    def __init__(self, channel, min_interval: float, clock: Clock):
        self.channel = channel
        self.name = channel.name
        self.type = getattr(channel, "type", "")
        self.limiter = MinInterval(min_interval, clock)

    def __repr__(self) -> str:
        return f"RateLimitedChannel({self.channel!r}, min_interval={self.limiter.interval:g})"

    async def send(self, alert: Alert) -> None:
        """Wait for the slot, then send.

        :raises DeliveryError: whatever the wrapped channel raises.
        """
        await self.limiter.wait()
        await self.channel.send(alert)
