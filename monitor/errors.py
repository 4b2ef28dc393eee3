"""The one exception tree of treasury-monitor.

    MonitorError
    ├── ConfigError            config.toml is wrong; carries every problem, each with its key path
    ├── SourceError            a chain or price source failed
    │   ├── TransientError     timeout, connection refused, 5xx: retry later
    │   ├── RateLimitedError   429; `retry_after` seconds when the server said so
    │   └── MalformedError     the answer does not have the documented shape: log, skip, retry later
    ├── DeliveryError          an alert could not be delivered; `retryable` says whether to try again
    └── StorageError           the database could not be opened or written

Third-party exceptions (aiohttp, asyncio timeouts, sqlite3, web3) are translated at the boundary with
`raise X(...) from exc`, so callers only ever catch these.
"""

from __future__ import annotations

__all__ = [
    "MonitorError",
    "ConfigError",
    "SourceError",
    "TransientError",
    "RateLimitedError",
    "MalformedError",
    "DeliveryError",
    "StorageError",
]


class MonitorError(Exception):
    """Base of every error treasury-monitor raises on purpose."""


class ConfigError(MonitorError):
    """The configuration is invalid; `problems` lists every finding as 'key.path: message'."""

    def __init__(self, problems: list[str] | str):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


class SourceError(MonitorError):
    """A chain or price source could not give a usable answer."""


class TransientError(SourceError):
    """A failure worth retrying: timeout, refused connection, 5xx."""


class RateLimitedError(TransientError):
    """HTTP 429; `retry_after` is the server's hint in seconds, if it gave one."""

    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class MalformedError(SourceError):
    """An answer that does not have the documented shape (garbage, truncated JSON, wrong types)."""


class DeliveryError(MonitorError):
    """An alert could not be delivered on a channel."""

    def __init__(self, message: str, *, retryable: bool, retry_after: float | None = None):
        super().__init__(message)
        self.retryable = retryable
        self.retry_after = retry_after


class StorageError(MonitorError):
    """The database could not be opened, migrated or written."""
