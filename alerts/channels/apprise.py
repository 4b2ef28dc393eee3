"""Apprise channel: one alert to any of apprise's 100+ services (Telegram, Discord, Teams, ntfy, PagerDuty, …).

The URL (e.g. `tgram://bottoken/ChatID`, `discord://webhook_id/token`, `ntfys://ntfy.sh/topic`) carries the
service's credentials, so it is a secret: it comes from `{ env = ... }` and never appears in an error or a
log line. The message is rendered from the same message model as every other channel
(`alerts.render.render_apprise`, Markdown by default; `text` or `html` where a service wants them).

Apprise makes exactly ONE attempt per send (a `?retry=` in the URL is overridden, and apprise's own
pacing is off): retrying, backoff, give-up and the per-channel rate limit (`min_interval`, 1 s by
default) are the outbox's, like for Slack and webhooks. Apprise reports
only success or failure, not the HTTP answer, so to classify a failure (429 and 5xx retryable with the
server's `Retry-After`, other 4xx permanent, no answer retryable) the channel records the responses of
the send through a `requests` response hook that is active only inside this channel's own send (a
context variable; apprise copies the caller's context into its worker threads). Everywhere else the
hook does nothing.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import re
from typing import TYPE_CHECKING, Any

from alerts.channels.http import parse_retry_after, scrub, url_secrets
from alerts.render import APPRISE_FORMATS, payload_of, render_apprise
from monitor.model import Alert, Clock, DeliveryError

if TYPE_CHECKING:
    import apprise

__all__ = ["AppriseChannel", "apprise_url_problem"]

log = logging.getLogger(__name__)

_SEVERITY = re.compile(r"^\[(\w+)\]")

# (status, Retry-After) of every HTTP response during the current apprise send, or None outside one.
_responses: contextvars.ContextVar[list[tuple[int, str | None]] | None] = contextvars.ContextVar(
    "treasury_monitor_apprise_responses", default=None
)


def _record(response: Any, *args: Any, **kwargs: Any) -> None:
    box = _responses.get()
    if box is not None:
        box.append((int(response.status_code), response.headers.get("Retry-After")))


@functools.cache
def _lib() -> Any:
    """apprise, imported on first use (it reads many files: callers run this off the event loop).

    Every `requests` session apprise creates then gets the response recorder, a no-op outside our sends.
    """
    import apprise as lib
    import requests.sessions

    default_hooks = requests.sessions.default_hooks

    def hooks_with_recorder() -> dict[str, list[Any]]:
        hooks = default_hooks()
        hooks["response"].append(_record)
        return hooks

    requests.sessions.default_hooks = hooks_with_recorder
    return lib


class _Scrub(logging.Filter):
    """Apprise logs some URLs it posts to (ntfy does); those carry tokens: scrub them from its records."""

    def __init__(self) -> None:
        super().__init__()
        self.secrets: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        clean = scrub(text, sorted(self.secrets, key=len, reverse=True))
        if clean != text:
            record.msg, record.args = clean, None
        return True


def apprise_url_problem(url: str) -> str | None:
    """Why apprise cannot use `url` (never quoting it), or None; reads apprise's plugin files: not on the loop."""
    lib = _lib()
    try:
        service = lib.Apprise.instantiate(url, asset=lib.AppriseAsset(storage_mode="memory"))
    except Exception as exc:  # noqa: BLE001 - apprise's plugins raise what they like on a bad URL
        return f"apprise rejects it ({type(exc).__name__})"
    return None if service else "apprise does not recognise it (see apprise's list of services)"


_SCRUB = _Scrub()
logging.getLogger("apprise").addFilter(_SCRUB)


class AppriseChannel:
    """Delivery through one apprise URL; one attempt per send, classified for the outbox."""

    type = "apprise"

    def __init__(self, name: str, url: str, *, format: str = "markdown", timeout: float = 10.0, clock: Clock | None = None):
        if format not in APPRISE_FORMATS:
            raise ValueError(f"format must be one of {', '.join(APPRISE_FORMATS)}")
        self.name = name
        self._url = url
        self._format = format
        self._timeout = timeout
        self._clock = clock  # only to read an HTTP-date Retry-After
        self._secrets = url_secrets(url)
        _SCRUB.secrets.update(self._secrets)
        # Apprise reads its plugin and locale files when first used: built in a worker thread at the
        # first send (never on the event loop), once.
        self._apprise: apprise.Apprise | None = None
        self._building = asyncio.Lock()

    def __repr__(self) -> str:
        return f"AppriseChannel(name={self.name!r})"

    def _build(self) -> apprise.Apprise:
        lib = _lib()
        asset = lib.AppriseAsset(storage_mode="memory")  # no cache files written behind our back
        ap = lib.Apprise(asset=asset)
        if not ap.add(self._url):
            raise DeliveryError(f"{self.name}: apprise does not recognise the configured url", retryable=False)
        for service in ap:
            service.retry = 0  # the outbox retries, not apprise
            service.request_rate_per_sec = 0  # and paces sends (`min_interval`): no sleeping in apprise
        return ap

    async def send(self, alert: Alert) -> None:
        """Send one alert through apprise.

        :raises DeliveryError: retryable on 429 (with `retry_after`), 5xx, or no answer; permanent on other 4xx.
        """
        payload = payload_of(alert)
        title, body = render_apprise(payload, self._format)
        async with self._building:
            if self._apprise is None:
                self._apprise = await asyncio.to_thread(self._build)
        lib = _lib()  # imported by the build above
        m = _SEVERITY.match(title)
        severity = m.group(1).lower() if m else ""
        notify_type = {"critical": lib.NotifyType.FAILURE, "warning": lib.NotifyType.WARNING}.get(severity, lib.NotifyType.INFO)
        formats = {"markdown": lib.NotifyFormat.MARKDOWN, "text": lib.NotifyFormat.TEXT, "html": lib.NotifyFormat.HTML}
        box: list[tuple[int, str | None]] = []
        token = _responses.set(box)
        try:
            result = await self._apprise.async_notify(
                body=body,
                title=title,
                notify_type=notify_type,
                body_format=formats[self._format],
                timeout=self._timeout,
            )
        finally:
            _responses.reset(token)
        if result:
            log.debug("delivered channel=%s responses=%s", self.name, [s for s, _ in box])
            return
        raise self._error(box, result)

    def _error(self, box: list[tuple[int, str | None]], result: Any) -> DeliveryError:
        failed = [(s, ra) for s, ra in box if not 200 <= s < 300]
        if not failed:
            # No HTTP answer at all (refused, timeout, DNS) or a failure apprise found before sending.
            detail = scrub(_last_log(result), self._secrets)[:200]
            return DeliveryError(f"{self.name}: apprise could not deliver" + (f": {detail}" if detail else ""), retryable=True)
        status, retry_after = failed[-1]
        message = f"{self.name}: HTTP {status} through apprise"
        if status == 429 or status >= 500:
            now = self._clock.time() if self._clock is not None else None
            return DeliveryError(message, retryable=True, retry_after=parse_retry_after(retry_after, now=now))
        return DeliveryError(message, retryable=False)


def _last_log(result: Any) -> str:
    """The last warning apprise recorded for this send (its only account of a failure without an answer)."""
    last = ""
    for service in result:
        for attempt in service:
            for entry in attempt:
                if entry.level in ("WARNING", "ERROR"):
                    last = entry.message
    return last
