"""Slack channel: posts the Block Kit rendering of an alert to an Incoming Webhook URL.

The webhook URL is a credential (anyone holding it can post to the channel): it is never logged or
put in an error message; errors name the channel and `hooks.slack.com` at most.
"""

from __future__ import annotations

import json

import aiohttp

from alerts.channels.http import post
from alerts.render import payload_of, render_slack
from monitor.model import Alert, Clock

__all__ = ["SlackChannel"]


class SlackChannel:
    """Slack Incoming Webhook. Slack answers 200 `ok`, or 4xx with a reason such as `invalid_payload`."""

    type = "slack"

    def __init__(
        self,
        name: str,
        webhook_url: str,
        session: aiohttp.ClientSession,
        timeout: float = 10.0,
        *,
        clock: Clock | None = None,
    ):
        self.name = name
        self._url = webhook_url
        self._session = session
        self._timeout = timeout
        self._clock = clock  # only to read an HTTP-date Retry-After

    def __repr__(self) -> str:
        return f"SlackChannel(name={self.name!r})"

    async def send(self, alert: Alert) -> None:
        """Post one alert.

        :raises DeliveryError: retryable on 429 (with `retry_after`), 5xx, timeout, connection error.
        """
        body = json.dumps(render_slack(payload_of(alert)), ensure_ascii=False).encode()
        await post(
            self._session,
            channel=self.name,
            url=self._url,
            body=body,
            headers={"Content-Type": "application/json; charset=utf-8"},
            timeout=self._timeout,
            clock=self._clock,
        )
