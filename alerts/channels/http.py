"""HTTP delivery shared by the Slack and webhook channels (one POST, its outcome classified), and
the secret hygiene every channel uses (`scrub`, `safe_cause`).

Classification (STYLE.md rule 8, as in Alertmanager's notifiers): 2xx is success; 429 is retryable
with the server's `Retry-After`; 5xx, timeouts and connection errors are retryable; any other status
(4xx, and 3xx because redirects are not followed — a redirect would resend a signed body elsewhere)
is permanent. Retrying is the outbox's job, not this module's.

URLs here are secrets (a Slack webhook URL is a credential; webhook URLs often carry tokens), so
messages name the channel and at most the host, every known secret is scrubbed from response excerpts,
and a third-party exception whose text contains a secret is not chained as the cause.
"""

from __future__ import annotations

import email.utils
import logging
import re
from collections.abc import Iterable, Mapping

import aiohttp
from yarl import URL

from monitor.model import Clock, DeliveryError

__all__ = ["post", "parse_retry_after", "url_secrets", "scrub", "safe_cause"]

log = logging.getLogger(__name__)

EXCERPT_MAX = 200
_UNSAFE = re.compile("[\x00-\x1f\x7f]+")


def url_secrets(url: str) -> tuple[str, ...]:
    """The parts of a URL that may be credentials: the whole URL, its path/query and their tokens."""
    parts = {url}
    try:
        u = URL(url)
    except (TypeError, ValueError):
        return (url,)
    for text in (u.raw_path_qs, u.path_qs, u.raw_query_string, u.user or "", u.password or ""):
        if text and text != "/":
            parts.add(text)
    for token in re.split(r"[/?&=]", u.raw_path_qs) + re.split(r"[/?&=]", u.path_qs):
        if len(token) >= 6:
            parts.add(token)
    return tuple(sorted(parts, key=len, reverse=True))


def scrub(text: str, secrets: Iterable[str | bytes]) -> str:
    """`text` with every secret replaced by `***`."""
    for secret in secrets:
        s = secret.decode(errors="replace") if isinstance(secret, bytes) else secret
        if s:
            text = text.replace(s, "***")
    return text


def safe_cause(exc: BaseException, secrets: Iterable[str | bytes]) -> BaseException | None:
    """`exc`, or None when its chain's text would show a secret in a traceback (then chain nothing)."""
    return None if _mentions(exc, secrets) else exc


def _mentions(exc: BaseException, secrets: Iterable[str | bytes]) -> bool:
    texts = []
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        texts.append(f"{e!s} {e!r}")
        e = e.__cause__ or e.__context__
    blob = " ".join(texts)
    return any((s.decode(errors="replace") if isinstance(s, bytes) else s) in blob for s in secrets if s)


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """`Retry-After` as seconds: delta-seconds, or an HTTP date when `now` is given; None if unusable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        if now is None:
            return None
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - now
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        return None
    return max(0.0, seconds)


async def post(
    session: aiohttp.ClientSession,
    *,
    channel: str,
    url: str,
    body: bytes,
    headers: Mapping[str, str],
    timeout: float,
    secrets: Iterable[str | bytes] = (),
    clock: Clock | None = None,
) -> bytes:
    """POST `body` to `url`; on 2xx return the first 64 KiB of the answer (Slack's API answers JSON).

    :raises DeliveryError: classified as described in the module docstring; its message and cause
        never contain `url` or any of `secrets`.
    """
    secrets = tuple(secrets) + url_secrets(url)
    try:
        host = URL(url).host or "?"
    except (TypeError, ValueError):
        host = "?"
    try:
        async with session.post(
            url,
            data=body,
            headers=dict(headers),
            timeout=aiohttp.ClientTimeout(total=timeout),
            allow_redirects=False,
        ) as resp:
            status = resp.status
            raw = await resp.content.read(65536)
            retry_after_header = resp.headers.get("Retry-After")
    except aiohttp.InvalidURL:
        # The exception text is the URL itself: never chain it.
        raise DeliveryError(f"{channel}: invalid URL", retryable=False) from None
    except TimeoutError as exc:  # includes aiohttp.ServerTimeoutError
        err = DeliveryError(f"{channel}: no answer from {host} within {timeout:g}s", retryable=True)
        raise err from safe_cause(exc, secrets)
    except aiohttp.ClientConnectorError as exc:
        reason = exc.os_error.strerror or type(exc.os_error).__name__
        err = DeliveryError(f"{channel}: cannot connect to {host}: {scrub(reason, secrets)}", retryable=True)
        raise err from safe_cause(exc, secrets)
    except (aiohttp.ClientError, OSError) as exc:
        err = DeliveryError(f"{channel}: request to {host} failed: {type(exc).__name__}", retryable=True)
        raise err from safe_cause(exc, secrets)

    if 200 <= status < 300:
        log.debug("delivered channel=%s host=%s status=%d", channel, host, status)
        return raw
    excerpt = _UNSAFE.sub(" ", raw.decode("utf-8", errors="replace")).strip()
    excerpt = scrub(excerpt, secrets)[:EXCERPT_MAX]
    message = f"{channel}: HTTP {status} from {host}" + (f": {excerpt}" if excerpt else "")
    if status == 429 or status >= 500:
        now = clock.time() if clock is not None else None
        raise DeliveryError(message, retryable=True, retry_after=parse_retry_after(retry_after_header, now=now))
    if 300 <= status < 400:
        message += " (redirects are not followed)"
    raise DeliveryError(message, retryable=False)
