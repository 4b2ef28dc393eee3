"""The shared HTTP client of the watchers: timeouts, bounded jittered retries, Retry-After, rate limit, failover.

One `aiohttp.ClientSession` per process is created by the caller and shared by every `HttpClient`
(one client per configured source). Remote answers are classified into the model's exception tree:

- 2xx: success. The body is decoded (JSON, text or bytes); a body that does not decode (garbage,
  truncated JSON, NaN, invalid UTF-8) is a `MalformedError`, retried like a transient failure because
  the next answer may be fine. So is a shape error raised by the caller's `parse` validator.
- 429: `RateLimitedError(retry_after)`. The body (an HTML or JSON notice) is never parsed as data.
  `Retry-After` (seconds or an HTTP date, capped at `max_retry_after`) blocks that base URL until then
  for every caller of this client; without it the wait is exponential with *equal* jitter (at least
  half the step), so a throttled server always gets a pause.
- 5xx, timeouts, refused/reset connections, truncated payloads: `TransientError`, retried with
  exponential backoff and *full* jitter: `uniform(0, min(backoff_cap, backoff_base * 2**attempt))`.
- other 4xx: permanent `SourceError` carrying the status and a short body excerpt; never retried.

Attempts: each base URL gets `1 + retries` attempts. When they are exhausted by retryable failures the
client fails over to the next base URL (each URL once per call); the last error is raised when all fail.

Failover rule: the client *sticks* to the base URL that last answered. After `failback_after` seconds
(default 5 minutes) on a URL other than the first, the next call starts with the first URL again; if it
is still down, that call fails over again (costing one round of attempts every `failback_after`).

Rate limit: at most `rate_limit` requests per second per base URL, as a minimum interval between
request starts. Slots are reserved before sleeping, so concurrent callers queue up instead of bursting.
`rate_limit=None` disables it. All waiting goes through `clock.sleep` and all time through
`clock.time()`, so tests with `FrozenClock` record the delays instead of waiting.

Logging records state changes only: the first failure after a success, a failover, a failback, and
the recovery.

Every source shares two helpers from here: `RetryPolicy` + `retry` (the one bounded, jittered retry loop,
sleeping through an injected async `sleep` so tests record the delays) and `FailureLog` (the one "log
the first failure, log the recovery" bookkeeping, per key). Header values may be secrets (API keys, bearer tokens): they are never logged and are
scrubbed from every error message this module builds.

Redirects are followed (up to 5) only within a base URL's origin (scheme, host and port). A redirect to
another origin is a permanent `SourceError` (kind `redirect`), logged once per target: following it would
send the configured headers to that host and take its answer as this source's data.
"""

from __future__ import annotations

import email.utils
import json
import logging
import math
import random
from collections.abc import Awaitable, Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, TypeVar

import aiohttp
from yarl import URL

from monitor.model import Clock, MalformedError, RateLimitedError, SourceError, TransientError

__all__ = [
    "FailureLog",
    "RetryPolicy",
    "retry",
    "is_retryable",
    "HttpClient",
    "HttpStats",
    "RequestTally",
    "parse_retry_after",
    "http_status",
    "DEFAULT_FAILBACK_AFTER",
    "DEFAULT_MAX_BODY",
]

#: Seconds on a fallback base URL before the first base URL is tried again.
DEFAULT_FAILBACK_AFTER = 300.0
#: Largest body read from a source; a bigger answer is malformed (a block page is ~100 kB).
DEFAULT_MAX_BODY = 32 * 1024 * 1024
_EXCERPT_BYTES = 300
#: Redirects followed within a base URL's origin; one to another origin is refused.
_MAX_REDIRECTS = 5
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_EXCERPT_CHARS = 120

T = TypeVar("T")


@dataclass
class HttpStats:
    """Counters for metrics: requests sent (in total and per base URL), errors by kind, retries."""

    requests: int = 0
    requests_by_url: dict[str, int] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)  # kind → count
    retries: int = 0
    failovers: int = 0
    last_success_at: float | None = None
    last_error: str | None = None  # message without header values
    last_error_at: float | None = None


@dataclass
class RequestTally:
    """A caller's own count of the requests (attempts included) made on its behalf."""

    requests: int = 0


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` header (delay seconds or HTTP date) → seconds from `now` (≥ 0), None if absent/invalid."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    if not math.isfinite(seconds):
        return None
    return max(0.0, seconds)


def _error(cls: type[SourceError], kind: str, message: str, *, status: int | None = None, **kwargs: Any) -> SourceError:
    exc = cls(message, **kwargs)
    # `kind` feeds the error counters; `status` lets callers tell a 404 ("no such tx") from other answers.
    exc.kind = kind  # type: ignore[attr-defined]
    exc.status = status  # type: ignore[attr-defined]
    return exc


def http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a SourceError raised by HttpClient, or None (timeout, connection, body)."""
    return getattr(exc, "status", None)


def _kind(exc: SourceError) -> str:
    kind = getattr(exc, "kind", None)
    if kind is None:  # raised by a caller's `parse` (watchers.validate)
        kind = "malformed" if isinstance(exc, MalformedError) else type(exc).__name__
    return kind


def _excerpt(body: bytes) -> str:
    text = " ".join(body[:_EXCERPT_BYTES].decode("utf-8", "replace").split())
    return text[:_EXCERPT_CHARS] + ("…" if len(text) > _EXCERPT_CHARS else "")


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _decode_bytes(body: bytes) -> bytes:
    return body


def _decode_text(body: bytes) -> str:
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _error(MalformedError, "malformed", f"body is not UTF-8 text: {_excerpt(body)!r}") from exc


def _decode_json(body: bytes) -> Any:
    text = _decode_text(body)
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise _error(MalformedError, "malformed", f"body is not JSON ({exc}): {_excerpt(body)!r}") from exc


# --- the one retry policy and the one failure/recovery log of every source -------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """`1 + retries` attempts; the n-th wait (n from 0) is jittered within `min(cap, base * 2**n)` seconds."""

    retries: int = 3
    base: float = 0.25
    cap: float = 10.0

    def step(self, attempt: int) -> float:
        """The capped exponential step before retry number `attempt` (0-based)."""
        return min(self.cap, self.base * 2**attempt)

    def full_jitter(self, attempt: int, rng: random.Random) -> float:
        """`uniform(0, step)`: retries of many callers spread over the whole step."""
        return rng.uniform(0.0, self.step(attempt))

    def equal_jitter(self, attempt: int, rng: random.Random) -> float:
        """`uniform(step/2, step)`: always a real pause (throttled servers, reconnects)."""
        step = self.step(attempt)
        return rng.uniform(step / 2, step)


def is_retryable(exc: SourceError) -> bool:
    """Transient (5xx, 429, timeouts, connections) and malformed answers are worth another attempt."""
    return isinstance(exc, (TransientError, MalformedError))


async def retry(
    call: Callable[[], Awaitable[T]],
    policy: RetryPolicy,
    *,
    sleep: Callable[[float], Awaitable[None]],
    rng: random.Random,
    retryable: Callable[[SourceError], bool] = is_retryable,
    on_failure: Callable[[SourceError, int], None] | None = None,
    delay: Callable[[SourceError, int], float | None] | None = None,
) -> T:
    """Await `call()` up to `1 + policy.retries` times while it raises a retryable SourceError.

    `on_failure(exc, attempt)` sees every retryable failure (the last one included); `delay(exc, attempt)`
    replaces the full-jitter wait before a retry (None: no sleep) and may raise to stop early. A
    permanent error, or the last retryable one, is raised. :raises SourceError:
    """
    attempt = 0
    while True:
        try:
            return await call()
        except SourceError as exc:
            if not retryable(exc):
                raise
            if on_failure is not None:
                on_failure(exc, attempt)
            if attempt >= policy.retries:
                raise
            wait = policy.full_jitter(attempt, rng) if delay is None else delay(exc, attempt)
            if wait is not None:
                await sleep(wait)
            attempt += 1


class FailureLog:
    """Logs state changes, not attempts: per key, the first failure at WARNING, repeats at DEBUG, the recovery at INFO.

    `changes=True` logs a repeat whose reason differs from the last one at WARNING too. A key is
    anything hashable (an address, a URL, a call kind); None stands for "the source as a whole".
    """

    def __init__(self, log: logging.Logger, *, changes: bool = False):
        self.log = log
        self._changes = changes
        self._reasons: dict[Hashable, str] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._reasons

    def reason(self, key: Hashable = None) -> str | None:
        """The last failure reason of `key` while it fails, else None."""
        return self._reasons.get(key)

    def failed(
        self,
        reason: str,
        first: str,
        again: str,
        *args: Any,
        key: Hashable = None,
        level: int = logging.WARNING,
        exc_info: bool = False,
    ) -> bool:
        """Record a failure; log `first % args` (at `level`) if `key` was not failing, else `again % args`. True if first."""
        previous = self._reasons.get(key)
        self._reasons[key] = reason
        if previous is None:
            self.log.log(level, first, *args, exc_info=exc_info)
            return True
        changed = self._changes and reason != previous
        self.log.log(logging.WARNING if changed else logging.DEBUG, again, *args)
        return False

    def recovered(self, message: str | None, *args: Any, key: Hashable = None) -> str | None:
        """Forget `key`'s failure; log `message % args` at INFO if it was failing. Returns its last reason."""
        previous = self._reasons.pop(key, None)
        if previous is not None and message is not None:
            self.log.info(message, *args)
        return previous


class HttpClient:
    """GETs against one source's base URLs with retries, rate limit and failover (see module docstring)."""

    def __init__(
        self,
        name: str,
        base_urls: Sequence[str],
        session: aiohttp.ClientSession,
        *,
        clock: Clock,
        rate_limit: float | None = 1.0,
        timeout: float = 10.0,
        retries: int = 3,
        backoff_base: float = 0.25,
        backoff_cap: float = 10.0,
        max_retry_after: float = 120.0,
        failback_after: float = DEFAULT_FAILBACK_AFTER,
        max_body: int = DEFAULT_MAX_BODY,
        headers: Mapping[str, str] | None = None,
        rng: random.Random | None = None,
        log: logging.Logger | None = None,
    ):
        if not base_urls:
            raise ValueError("HttpClient needs at least one base URL")
        if retries < 0:
            raise ValueError("retries must be >= 0")
        self.name = name
        self.base_urls = tuple(u.rstrip("/") for u in base_urls)
        self._session = session
        self._clock = clock
        self._interval = 1.0 / rate_limit if rate_limit else 0.0
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.retries = retries
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self._max_retry_after = max_retry_after
        self._failback_after = failback_after
        self._max_body = max_body
        self._headers = dict(headers or {})
        self._secrets = [v for v in self._headers.values() if isinstance(v, str) and len(v) >= 4]
        self._rng = rng or random.Random()
        self._log = log or logging.getLogger("watchers.http")
        # Only the scheme, host, port and path of a base URL are shown: no credentials, no query.
        self._shown = {u: str(URL(u).with_user(None).with_password(None).with_query(None)) for u in self.base_urls}
        self._next_slot = {u: float("-inf") for u in self.base_urls}
        self._blocked_until = {u: float("-inf") for u in self.base_urls}
        self._active = 0
        self._active_since = 0.0
        self._failures = FailureLog(self._log)
        self._failed_attempts = 0
        self._refused: set[tuple[str, str]] = set()  # (base URL, target origin) already logged
        self.stats = HttpStats(requests_by_url={self._shown[u]: 0 for u in self.base_urls})

    @property
    def active_url(self) -> str:
        """The base URL the next call starts with (credentials and query removed)."""
        return self._shown[self.base_urls[self._active]]

    async def get_json(self, path: str, *, parse: Callable[[Any], T] | None = None, tally: RequestTally | None = None) -> Any:
        """GET `path`, decode JSON and apply `parse` (a validator raising MalformedError) inside the retry loop.

        A shape error from `parse` is retried and fails over like a garbled body: another attempt or
        another provider may answer correctly. :raises SourceError: (Transient, RateLimited, Malformed, permanent)
        """
        if parse is None:
            return await self._call(path, _decode_json, tally)
        return await self._call(path, lambda body: parse(_decode_json(body)), tally)

    async def get_text(self, path: str, *, parse: Callable[[str], T] | None = None, tally: RequestTally | None = None) -> Any:
        """GET `path` as UTF-8 text, then `parse` it inside the retry loop (see get_json). :raises SourceError:"""
        if parse is None:
            return await self._call(path, _decode_text, tally)
        return await self._call(path, lambda body: parse(_decode_text(body)), tally)

    async def get_bytes(self, path: str, *, tally: RequestTally | None = None) -> bytes:
        """GET `path` as raw bytes. :raises SourceError: (Transient, RateLimited or permanent)."""
        return await self._call(path, _decode_bytes, tally)

    # --- the retry loop ---------------------------------------------------------------------------

    async def _call(self, path: str, decode: Callable[[bytes], T], tally: RequestTally | None) -> T:
        if not path.startswith("/"):
            path = "/" + path
        last: SourceError | None = None
        order = self._url_order()
        for position, base in enumerate(order):
            if position:
                self.stats.failovers += 1
                self._log.warning(
                    "http failover source=%s from=%s to=%s path=%s reason=%s",
                    self.name,
                    self._shown[order[position - 1]],
                    self._shown[base],
                    path,
                    _kind(last) if last else "?",
                )
            try:
                value = await self._retry(base, path, decode, tally)
            except (TransientError, MalformedError) as exc:  # this URL's attempts are spent: fail over
                last = exc
                continue
            except SourceError as exc:  # permanent: the server answered, and the answer is "no"
                self._count_error(exc)
                self._log.debug("http permanent error source=%s url=%s path=%s error=%s", self.name, self._shown[base], path, exc)
                raise
            self._note_success(base, path)
            return value
        assert last is not None
        raise last

    async def _retry(self, base: str, path: str, decode: Callable[[bytes], T], tally: RequestTally | None) -> T:
        async def once() -> T:
            return decode(await self._attempt(base, path, tally))

        return await retry(
            once,
            RetryPolicy(self.retries, self._backoff_base, self._backoff_cap),
            sleep=self._clock.sleep,
            rng=self._rng,
            on_failure=lambda exc, _attempt: self._note_failure(base, path, exc),
            delay=lambda exc, attempt: self._delay_before_retry(base, attempt, exc),
        )

    def _url_order(self) -> list[str]:
        now = self._clock.time()
        if self._active and now - self._active_since >= self._failback_after:
            self._log.info(
                "http failback source=%s to=%s after=%.0fs", self.name, self._shown[self.base_urls[0]], now - self._active_since
            )
            self._active = 0
        return list(self.base_urls[self._active :] + self.base_urls[: self._active])

    def _delay_before_retry(self, base: str, attempt: int, exc: SourceError) -> float | None:
        self.stats.retries += 1
        policy = RetryPolicy(self.retries, self._backoff_base, self._backoff_cap)
        if isinstance(exc, RateLimitedError):
            if exc.retry_after is not None:
                delay = min(exc.retry_after, self._max_retry_after)
            else:
                delay = policy.equal_jitter(attempt, self._rng)
            # Blocking the URL (not just this call) makes concurrent callers honour the limit too;
            # the wait itself happens in `_acquire` before the next attempt.
            self._blocked_until[base] = max(self._blocked_until[base], self._clock.time() + delay)
            return None
        return policy.full_jitter(attempt, self._rng)

    async def _acquire(self, base: str) -> None:
        now = self._clock.time()
        slot = max(now, self._next_slot[base], self._blocked_until[base])
        self._next_slot[base] = slot + self._interval  # reserved before sleeping: no bursts
        if slot > now:
            await self._clock.sleep(slot - now)

    # --- one attempt ------------------------------------------------------------------------------

    async def _attempt(self, base: str, path: str, tally: RequestTally | None) -> bytes:
        await self._acquire(base)
        shown = self._shown[base]
        where = f"source={self.name} url={shown}{path}"
        self.stats.requests += 1
        self.stats.requests_by_url[shown] += 1
        if tally is not None:
            tally.requests += 1
        url = URL(base + path)
        try:
            for _hop in range(_MAX_REDIRECTS + 1):
                # Redirects are followed here, not by aiohttp: it would send the configured headers (API
                # keys) to whatever host the Location names, and take that host's answer as our data.
                async with self._session.get(url, headers=self._headers, timeout=self._timeout, allow_redirects=False) as resp:
                    status = resp.status
                    if status in _REDIRECTS and "Location" in resp.headers:
                        url = self._redirect_target(base, url, resp.headers["Location"], where)
                        continue
                    return await self._answer(resp, status, where)
            raise _error(SourceError, "redirect", f"{where} more than {_MAX_REDIRECTS} redirects", status=status)
        except SourceError:
            raise
        except TimeoutError as exc:  # asyncio.TimeoutError and aiohttp's timeout errors
            raise _error(TransientError, "timeout", f"{where} timeout after {self._timeout.total}s") from exc
        except aiohttp.ClientPayloadError as exc:
            raise _error(TransientError, "payload", self._scrub(f"{where} incomplete body: {exc}")) from exc
        except (aiohttp.ClientConnectionError, OSError) as exc:
            raise _error(
                TransientError, "connection", self._scrub(f"{where} connection error: {type(exc).__name__}: {exc}")
            ) from exc
        except aiohttp.ClientError as exc:
            raise _error(TransientError, "client", self._scrub(f"{where} {type(exc).__name__}: {exc}")) from exc

    def _redirect_target(self, base: str, url: URL, location: str, where: str) -> URL:
        """The URL a redirect names, when it stays on the base URL's origin (scheme, host, port).

        :raises SourceError: (permanent) for a redirect to another origin, logged once per target.
        """
        try:
            target = url.join(URL(location))
        except ValueError as exc:
            raise _error(SourceError, "redirect", f"{where} redirect to an invalid Location") from exc
        origin = URL(base).origin()
        if target.is_absolute() and target.origin() == origin:
            return target
        shown = str(target.origin()) if target.is_absolute() else "?"
        message = (
            f"{where} redirects to another host ({shown}); refused: the source's headers are not sent "
            f"there and its answer is not taken as this source's data (fix the source's url)"
        )
        if (base, shown) not in self._refused:
            self._refused.add((base, shown))
            self._log.warning("http redirect refused source=%s url=%s to=%s", self.name, self._shown[base], shown)
        raise _error(SourceError, "redirect", self._scrub(message), status=None)

    async def _answer(self, resp: aiohttp.ClientResponse, status: int, where: str) -> bytes:
        if 200 <= status < 300:
            return await self._read(resp, where)
        excerpt = _excerpt(await resp.content.read(_EXCERPT_BYTES))
        if status == 429:
            retry_after = parse_retry_after(resp.headers.get("Retry-After"), self._clock.time())
            raise _error(
                RateLimitedError,
                "rate_limited",
                self._scrub(f"{where} status=429 retry_after={retry_after} body={excerpt!r}"),
                status=429,
                retry_after=retry_after,
            )
        if status >= 500:
            raise _error(TransientError, "http_5xx", self._scrub(f"{where} status={status} body={excerpt!r}"), status=status)
        raise _error(SourceError, "http_4xx", self._scrub(f"{where} status={status} body={excerpt!r}"), status=status)

    async def _read(self, resp: aiohttp.ClientResponse, where: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(65536):
            size += len(chunk)
            if size > self._max_body:
                raise _error(MalformedError, "malformed", f"{where} body larger than {self._max_body} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    # --- bookkeeping and state-change logs ----------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _count_error(self, exc: SourceError) -> None:
        kind = _kind(exc)
        self.stats.errors[kind] = self.stats.errors.get(kind, 0) + 1
        self.stats.last_error = self._scrub(str(exc))
        self.stats.last_error_at = self._clock.time()

    def _note_failure(self, base: str, path: str, exc: SourceError) -> None:
        self._count_error(exc)
        self._failed_attempts += 1
        self._failures.failed(
            _kind(exc),
            "http failing source=%s url=%s%s kind=%s error=%s",
            "http still failing source=%s url=%s%s kind=%s error=%s",
            self.name,
            self._shown[base],
            path,
            _kind(exc),
            self.stats.last_error,
        )

    def _note_success(self, base: str, path: str) -> None:
        now = self._clock.time()
        self.stats.last_success_at = now
        index = self.base_urls.index(base)
        if index != self._active:
            self._active = index
            self._active_since = now
        self._failures.recovered(
            "http recovered source=%s url=%s%s failed_attempts=%d", self.name, self._shown[base], path, self._failed_attempts
        )
        self._failed_attempts = 0
