"""Clocks: the only module allowed to read wall time.

Decision code takes `now` as an argument; loops and retries take a `Clock` so tests can freeze or
accelerate time (the demo replays months in seconds).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

from monitor.model import Clock

__all__ = ["Clock", "SystemClock", "FrozenClock", "AcceleratedClock", "Stopwatch", "iso", "parse_iso"]


class SystemClock:
    """The real clock."""

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


@dataclass
class FrozenClock:
    """A clock that only moves when told to; `sleep` advances it and records the delay asked for."""

    now: float = 1_767_225_600.0  # 2026-01-01T00:00:00Z
    sleeps: list[float] = field(default_factory=list)

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)

    def advance(self, seconds: float) -> None:
        self.now += seconds


class AcceleratedClock:
    """Simulated time (the demo's replay of months in seconds) that runs `speed` times faster than the wall clock, from `start`."""

    def __init__(self, start: float, speed: float):
        self.start = start
        self.speed = speed
        self._t0 = time.monotonic()

    def time(self) -> float:
        return self.start + (time.monotonic() - self._t0) * self.speed

    async def sleep(self, seconds: float) -> None:
        # Sleeps are in simulated seconds (retry backoffs), so they are short in wall time.
        await asyncio.sleep(max(0.0, seconds) / self.speed)

    def set_speed(self, speed: float) -> None:
        """Run at `speed` from now on, continuing from the time it reads now (1.0: real time)."""
        self.start, self._t0, self.speed = self.time(), time.monotonic(), speed

    def wall_until(self, at: float) -> float:
        """Wall seconds until the clock reads `at` (0 when it already has)."""
        return max(0.0, (at - self.time()) / self.speed)


class Stopwatch:
    """Wall seconds elapsed since it was made (for figures printed to the user)."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()

    def seconds(self) -> float:
        return time.monotonic() - self._t0


def iso(ts: float | int | None) -> str | None:
    """Unix seconds → ISO 8601 UTC (`2026-03-04T12:00:00Z`); None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_iso(text: str) -> int:
    """ISO date or datetime (UTC assumed when no offset) → Unix seconds.

    :raises ValueError: when `text` is not an ISO date.
    """
    t = text.strip()
    if t.endswith("Z"):
        t = t[:-1] + "+00:00"
    dt = datetime.fromisoformat(t)
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp())
