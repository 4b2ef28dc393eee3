"""Channels: the Channel protocol, its implementations keyed by config type, and `build_channel`.

A channel delivers one Alert and either returns (delivered) or raises
`DeliveryError(message, retryable=..., retry_after=...)`. Retrying, backoff and give-up belong to the
outbox. Channels get their settings as plain values: the config layer owns the Secret objects and
reveals them just before construction. Channels never log a secret or put one in an error message
(a Slack webhook URL, a webhook URL and its HMAC secret, an SMTP password): errors name the channel
and at most the host.

    type      class            settings (constructor keywords)                     shared resources
    slack     SlackChannel     webhook_url | bot_token + channel_id, api_url,      session[, clock, threads]
                               timeout
    email     EmailChannel     host, [port], sender, recipients, username, password,
                               security (starttls | tls | none), timeout, tls_context
    webhook   WebhookChannel   url, secret, timeout, legacy_headers                session, clock
    console   ConsoleChannel   stream ("stdout" | "stderr" | a text stream)
    apprise   AppriseChannel   url, format (markdown | text | html), timeout      [clock]

Every type also takes `min_interval` (seconds between sends, see `alerts.ratelimit`).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import aiohttp

from alerts.channels.apprise import AppriseChannel
from alerts.channels.console import ConsoleChannel
from alerts.channels.email import EmailChannel
from alerts.channels.slack import SlackChannel
from alerts.channels.webhook import WebhookChannel, verify_signature
from alerts.ratelimit import DEFAULT_MIN_INTERVAL, RateLimitedChannel
from monitor.model import Alert, Clock, ConfigError

__all__ = [
    "Channel",
    "REGISTRY",
    "build_channel",
    "SlackChannel",
    "EmailChannel",
    "WebhookChannel",
    "ConsoleChannel",
    "AppriseChannel",
    "RateLimitedChannel",
    "verify_signature",
]


@runtime_checkable
class Channel(Protocol):
    """Something that delivers an Alert, named as in the config."""

    name: str

    async def send(self, alert: Alert) -> None:
        """Deliver `alert` once.

        :raises DeliveryError: with `retryable` (and `retry_after` when the remote said so).
        """
        ...


#: Channel classes keyed by the config `type`.
REGISTRY: dict[str, type] = {
    "slack": SlackChannel,
    "email": EmailChannel,
    "webhook": WebhookChannel,
    "console": ConsoleChannel,
    "apprise": AppriseChannel,
}

_INJECTED = ("session", "clock", "threads")
_STREAMS = {"stdout": None, "stderr": sys.stderr}


def build_channel(
    type_: str,
    name: str,
    settings: Mapping[str, Any],
    *,
    session: aiohttp.ClientSession | None = None,
    clock: Clock | None = None,
    threads: object | None = None,
) -> Channel:
    """A ready channel of config type `type_`, rate-limited when `min_interval` (or the type default) > 0.

    :raises ConfigError: unknown type, unknown or missing settings, missing session/clock; every
        problem is listed with its key path, and no setting value appears in it.
    """
    cls = REGISTRY.get(type_)
    if cls is None:
        raise ConfigError(f"channels.{name}.type: unknown channel type {type_!r} (known: {', '.join(REGISTRY)})")
    settings = dict(settings)
    min_interval = settings.pop("min_interval", DEFAULT_MIN_INTERVAL.get(type_, 0.0))
    if type_ == "email":
        settings.setdefault("port", None)  # EmailChannel picks 587 / 465 / 25 from `security`
    if type_ == "console" and isinstance(settings.get("stream"), str):
        if settings["stream"] not in _STREAMS:
            raise ConfigError(f"channels.{name}.stream: must be stdout or stderr")
        settings["stream"] = _STREAMS[settings["stream"]]
    params = {k: p for k, p in inspect.signature(cls.__init__).parameters.items() if k not in ("self", "name")}
    injected = {"session": session, "clock": clock, "threads": threads}
    problems = [
        f"channels.{name}.{key}: unknown setting for a {type_} channel"
        for key in settings
        if key not in params or key in _INJECTED
    ]
    kwargs: dict[str, Any] = {}
    for key, p in params.items():
        if key in _INJECTED:
            if injected[key] is not None:
                kwargs[key] = injected[key]
            elif p.default is p.empty:
                problems.append(f"channels.{name}: a {type_} channel needs a {key} (caller bug)")
        elif key in settings:
            kwargs[key] = settings[key]
        elif p.default is p.empty:
            problems.append(f"channels.{name}.{key}: required for a {type_} channel")
    if not isinstance(min_interval, (int, float)) or isinstance(min_interval, bool) or min_interval < 0:
        problems.append(f"channels.{name}.min_interval: must be a number of seconds >= 0")
    elif min_interval > 0 and clock is None:
        problems.append(f"channels.{name}: min_interval needs a clock (caller bug)")
    if problems:
        raise ConfigError(problems)
    try:
        channel = cls(name, **kwargs)
    except ValueError as exc:
        # Our constructors' ValueErrors name the setting, never its value.
        raise ConfigError(f"channels.{name}: {exc}") from None
    if min_interval > 0:
        return RateLimitedChannel(channel, float(min_interval), clock)
    return channel
