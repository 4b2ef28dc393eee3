"""Console channel: human-readable alert lines on a text stream (stdout by default)."""

from __future__ import annotations

import sys
from typing import TextIO

from alerts.render import payload_of, render_console
from monitor.model import Alert, DeliveryError

__all__ = ["ConsoleChannel"]


class ConsoleChannel:
    """Writes `render_console` lines, then a blank line, and flushes."""

    type = "console"

    def __init__(self, name: str, stream: TextIO | None = None):
        self.name = name
        self._stream = stream

    def __repr__(self) -> str:
        return f"ConsoleChannel(name={self.name!r})"

    async def send(self, alert: Alert) -> None:
        """Write one alert.

        :raises DeliveryError: not retryable, when the stream is closed or broken.
        """
        # Resolved at send time so a test's capsys/redirected stdout is honoured.
        stream = self._stream if self._stream is not None else sys.stdout
        try:
            stream.write(render_console(payload_of(alert)) + "\n\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            raise DeliveryError(f"{self.name}: cannot write: {type(exc).__name__}", retryable=False) from exc
