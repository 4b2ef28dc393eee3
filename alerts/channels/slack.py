"""Slack channel: posts the Block Kit rendering of an alert, through an Incoming Webhook or a bot token.

Two ways in, because they differ in what Slack lets them do:

- `webhook_url` (Incoming Webhook): the simplest set-up, but Slack gives back no message `ts`, so updates
  and incident messages cannot be threaded: each arrives as its own top-level message.
- `bot_token` + `channel_id` (a Slack app's `xoxb-` token with `chat:write`): `chat.postMessage`, which
  answers with the message's `ts`. The channel remembers the `ts` of each message it posted (through the
  injected `threads` store, durable across restarts) and posts updates and incident messages with
  `thread_ts` = the thread's first message, so an incident is ONE thread in Slack.

The webhook URL and the bot token are credentials: never logged or put in an error message; errors name
the channel and `hooks.slack.com` / `slack.com` at most.
"""

from __future__ import annotations

import json
import logging
from typing import Any, Protocol

import aiohttp

from alerts.channels.http import post
from alerts.render import payload_of, render_slack
from monitor.model import Alert, Clock, DeliveryError

__all__ = ["SlackChannel", "ThreadStore", "SLACK_API_URL"]

log = logging.getLogger(__name__)

SLACK_API_URL = "https://slack.com/api/chat.postMessage"
#: Web API `error` codes worth another attempt (Slack's docs: transient server-side failures).
_RETRYABLE_ERRORS = {"internal_error", "fatal_error", "service_unavailable", "request_timeout", "ratelimited"}


class ThreadStore(Protocol):
    """Durable (message id, channel) → what the channel answered (Slack's `ts`), implemented over storage."""

    async def get(self, message_id: str, channel: str) -> str | None: ...

    async def put(self, message_id: str, channel: str, ref: str) -> None: ...


class SlackChannel:
    """Slack Incoming Webhook, or `chat.postMessage` with a bot token (threads updates under their first message)."""

    type = "slack"

    def __init__(
        self,
        name: str,
        webhook_url: str | None = None,
        session: aiohttp.ClientSession | None = None,
        timeout: float = 10.0,
        *,
        clock: Clock | None = None,
        bot_token: str | None = None,
        channel_id: str | None = None,
        api_url: str = SLACK_API_URL,
        threads: ThreadStore | None = None,
    ):
        if session is None:
            raise ValueError("session: required (caller bug)")
        if bool(webhook_url) == bool(bot_token):
            raise ValueError("set either webhook_url or bot_token (with channel_id), not both or neither")
        if bot_token and not channel_id:
            raise ValueError("channel_id: required with bot_token")
        self.name = name
        self._url = webhook_url
        self._token = bot_token
        self._channel_id = channel_id
        self._api_url = api_url
        self._threads = threads
        self._session = session
        self._timeout = timeout
        self._clock = clock  # only to read an HTTP-date Retry-After

    def __repr__(self) -> str:
        return f"SlackChannel(name={self.name!r})"

    @property
    def can_thread(self) -> bool:
        """Whether updates are threaded (a bot token); Incoming Webhooks cannot thread."""
        return self._token is not None

    async def send(self, alert: Alert) -> None:
        """Post one alert.

        :raises DeliveryError: retryable on 429 (with `retry_after`), 5xx, timeout, connection error and
            Slack's transient API errors; permanent on other 4xx and API errors (e.g. `invalid_auth`).
        """
        payload = payload_of(alert)
        message = render_slack(payload)
        if self._token is None:
            assert self._url is not None
            body = json.dumps(message, ensure_ascii=False).encode()
            await post(
                self._session,
                channel=self.name,
                url=self._url,
                body=body,
                headers={"Content-Type": "application/json; charset=utf-8"},
                timeout=self._timeout,
                clock=self._clock,
            )
            return
        await self._post_message(payload, message)

    async def _post_message(self, payload: dict[str, Any], message: dict[str, Any]) -> None:
        thread = [t for t in payload.get("thread") or () if isinstance(t, str) and t]
        root_ts = None
        if thread and self._threads is not None:
            root_ts = await self._threads.get(thread[0], self.name)
        body: dict[str, Any] = {"channel": self._channel_id, **message}
        if root_ts:
            body["thread_ts"] = root_ts
        raw = await post(
            self._session,
            channel=self.name,
            url=self._api_url,
            body=json.dumps(body, ensure_ascii=False).encode(),
            headers={"Content-Type": "application/json; charset=utf-8", "Authorization": f"Bearer {self._token}"},
            timeout=self._timeout,
            secrets=(self._token or "",),
            clock=self._clock,
        )
        try:
            answer = json.loads(raw)
        except ValueError:
            answer = None
        if not isinstance(answer, dict) or not isinstance(answer.get("ok"), bool):
            # Slack took the request (2xx) but its answer is not the documented JSON: do not post again.
            log.warning("channel=%s chat.postMessage answered 2xx without the documented JSON; not threading", self.name)
            return
        if not answer["ok"]:
            error = str(answer.get("error") or "unknown_error")[:100]
            raise DeliveryError(f"{self.name}: chat.postMessage failed: {error}", retryable=error in _RETRYABLE_ERRORS)
        ts = answer.get("ts")
        message_id = payload.get("message_id")
        if isinstance(ts, str) and ts and isinstance(message_id, str) and self._threads is not None and not root_ts:
            await self._threads.put(message_id, self.name, ts)  # a thread's first message: later ones reply to it
