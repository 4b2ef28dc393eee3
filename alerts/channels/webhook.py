"""Webhook channel: POSTs the webhook JSON of an alert, signed per Standard Webhooks, and the verifiers.

Headers (https://www.standardwebhooks.com, the convention Svix, Stripe-style receivers and the
`standardwebhooks` libraries verify):

    webhook-id:        the message id (`msg_…`): unique per message, the SAME on every resend of it
    webhook-timestamp: unix seconds of this attempt
    webhook-signature: `v1,<base64 HMAC-SHA256(key, f"{id}.{timestamp}." + body)>`, one per configured
                       secret, space-separated (several secrets = key rotation: the receiver accepts
                       any one it knows)

A secret written `whsec_<base64>` is the spec's form (the key is the decoded bytes); any other string is
used as UTF-8 bytes as it is (what earlier releases did). The `secret` setting may hold several secrets
separated by spaces: every one signs, so a receiver can move to the new one before the old is dropped.

A receiver deduplicates on `webhook-id` (a resend after a crash or a timeout repeats it); the body's
`kind` (new | update | retraction | digest | test) says what the message is, and `amends` names the
`webhook-id` of the message an update or retraction amends, so a retraction is never mistaken for a
repeat of the alert it withdraws.

Deprecated (one release, `legacy_headers = true`): the earlier scheme's headers, sent in addition:

    X-Timestamp: <unix seconds>
    X-Signature: sha256=<hex HMAC-SHA256(secret, f"{timestamp}.".encode() + body)>
    X-Dedup-Key: <dedup key>     (percent-encoded if not plain ASCII — the body's `dedup_key` is exact)

The secret and the URL never appear in errors or logs.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
from urllib.parse import quote

import aiohttp

from alerts.channels.http import post
from alerts.render import message_id_of, payload_of, render_webhook
from monitor.model import Alert, Clock

__all__ = [
    "WebhookChannel",
    "sign",
    "verify_signature",
    "signing_keys",
    "standard_signature",
    "verify_standard",
    "dedup_header",
    "DEFAULT_TOLERANCE",
]

DEFAULT_TOLERANCE = 300


def dedup_header(dedup_key: object) -> str:
    """`X-Dedup-Key` value: the key itself when it is plain ASCII, else percent-encoded (no CR/LF, no UTF-8)."""
    return quote(str(dedup_key or ""), safe=":/@-._~!$&'()*+,;=")


def _header_safe(value: object) -> str:
    """A header value without CR/LF or other controls (ids are ours, but a stored payload is still data)."""
    return quote(str(value), safe=":/@-._~!$&'()*+,;=")


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


def signing_keys(secret: str | bytes) -> tuple[bytes, ...]:
    """The HMAC keys of a `secret` setting: one per space-separated secret; `whsec_…` is base64-decoded.

    :raises ValueError: when there is none, or a `whsec_` secret is not base64 (the message shows no secret).
    """
    if isinstance(secret, bytes):
        return (secret,) if secret else ()
    keys = []
    for i, part in enumerate(secret.split()):
        if part.startswith("whsec_"):
            try:
                key = base64.b64decode(part[len("whsec_") :] + "==", validate=False)
            except (binascii.Error, ValueError):
                raise ValueError(f"secret: part {i + 1} starts with whsec_ but is not base64") from None
            if not key:
                raise ValueError(f"secret: part {i + 1} is an empty whsec_ key")
            keys.append(key)
        else:
            keys.append(part.encode())
    return tuple(keys)


def standard_signature(keys: tuple[bytes, ...], msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64>` per key, space-separated."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return " ".join("v1," + base64.b64encode(hmac.new(k, signed, hashlib.sha256).digest()).decode() for k in keys)


def verify_standard(
    secret: str | bytes,
    headers: dict[str, str] | object,
    body: bytes,
    *,
    now: float,
    tolerance: float = DEFAULT_TOLERANCE,
) -> bool:
    """True when the Standard Webhooks headers carry a `v1` signature by one of `secret`'s keys, in time."""
    get = headers.get
    msg_id, ts, sig = get("webhook-id"), get("webhook-timestamp"), get("webhook-signature")
    if not (msg_id and ts and sig):
        return False
    try:
        when = int(str(ts).strip())
    except ValueError:
        return False
    if abs(now - when) > tolerance:
        return False
    try:
        keys = signing_keys(secret)
    except ValueError:
        return False
    offered = [s.encode() for s in str(sig).split(" ") if s.startswith("v1,")]
    return any(hmac.compare_digest(standard_signature((k,), msg_id, when, body).encode(), o) for k in keys for o in offered)


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
        legacy_headers: bool = False,
    ):
        if not secret:
            raise ValueError("secret: empty")
        self._keys = signing_keys(secret)
        if not self._keys:
            raise ValueError("secret: empty")
        self._legacy = legacy_headers
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
        msg_id = _header_safe(payload.get("message_id") or message_id_of(alert))
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": "treasury-monitor",
            "webhook-id": msg_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": standard_signature(self._keys, msg_id, timestamp, body),
        }
        if self._legacy:  # deprecated: the pre-Standard-Webhooks headers, signed with the first secret
            headers["X-Timestamp"] = str(timestamp)
            headers["X-Signature"] = sign(self._keys[0], timestamp, body)
            headers["X-Dedup-Key"] = dedup_header(payload.get("dedup_key"))
        await post(
            self._session,
            channel=self.name,
            url=self._url,
            body=body,
            headers=headers,
            timeout=self._timeout,
            secrets=(self._secret, *self._keys),
            clock=self._clock,
        )
