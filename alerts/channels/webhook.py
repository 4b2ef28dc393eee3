"""Webhook channel: POSTs the webhook JSON of an alert, signed with HMAC-SHA256, and its verifier.

Signature scheme (the same as Stripe's and Slack's request signing, so receivers know it):

    X-Timestamp: <unix seconds>
    X-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + body)>
    X-Dedup-Key: <dedup key>     (receivers drop a resend they already have; percent-encoded if not
                                  plain ASCII — the body's `dedup_key` is the exact value)

Signing the timestamp with the body lets a receiver reject replays older than a tolerance window
(`verify_signature`, 300 s by default). The secret and the URL never appear in errors or logs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from urllib.parse import quote

import aiohttp

from alerts.channels.http import post
from alerts.render import payload_of, render_webhook
from monitor.model import Alert, Clock

__all__ = ["WebhookChannel", "sign", "verify_signature", "dedup_header", "DEFAULT_TOLERANCE"]

DEFAULT_TOLERANCE = 300


def dedup_header(dedup_key: object) -> str:
    """`X-Dedup-Key` value: the key itself when it is plain ASCII, else percent-encoded (no CR/LF, no UTF-8)."""
    return quote(str(dedup_key or ""), safe=":/@-._~!$&'()*+,;=")


def _key(secret: str | bytes) -> bytes:
    return secret.encode() if isinstance(secret, str) else secret


def sign(secret: str | bytes, timestamp: int | str, body: bytes) -> str:
    """The `X-Signature` value for `body` sent at `timestamp`: `sha256=<hex>`."""
    mac = hmac.new(_key(secret), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify_signature(
    secret: str | bytes,
    timestamp: int | str | None,
    body: bytes,
    signature: str | None,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """True when `signature` is `sign(secret, timestamp, body)` and `timestamp` is within `tolerance` of `now`."""
    if timestamp is None or signature is None:
        return False
    try:
        ts = int(str(timestamp).strip())
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body).encode(), signature.strip().encode())


class WebhookChannel:
    """Signed JSON POST to any HTTPS endpoint; same retry classification as Slack."""

    type = "webhook"

    def __init__(
        self,
        name: str,
        url: str,
        secret: str | bytes,
        session: aiohttp.ClientSession,
        *,
        clock: Clock,
        timeout: float = 10.0,
    ):
        if not secret:
            raise ValueError("secret: empty")
        self.name = name
        self._url = url
        self._secret = secret
        self._session = session
        self._clock = clock
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"WebhookChannel(name={self.name!r})"

    async def send(self, alert: Alert) -> None:
        """Post one alert with its signature headers.

        :raises DeliveryError: retryable on 429 (with `retry_after`), 5xx, timeout, connection error.
        """
        payload = payload_of(alert)
        body = json.dumps(render_webhook(payload), ensure_ascii=False, separators=(",", ":")).encode()
        timestamp = int(self._clock.time())
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "treasury-monitor",
            "X-Timestamp": str(timestamp),
            "X-Signature": sign(self._secret, timestamp, body),
            "X-Dedup-Key": dedup_header(payload.get("dedup_key")),
        }
        await post(
            self._session,
            channel=self.name,
            url=self._url,
            body=body,
            headers=headers,
            timeout=self._timeout,
            secrets=(self._secret,),
            clock=self._clock,
        )
