"""Email channel: sends an alert as multipart/alternative (text + HTML) through SMTP with aiosmtplib.

Security modes: `starttls` (port 587; the upgrade is required, a server without STARTTLS is a permanent
error), `tls` (implicit TLS, port 465), `none` (plain SMTP, port 25, for a local relay only); `port=None`
picks the mode's port.

Every message carries `Message-ID` (`<message_id@sender domain>`: stable for one Alert, so a resend
after a crash has the same id) and `X-Treasury-Monitor-Dedup-Key`; receivers and mail filters can drop a
duplicate by either. An update, a retraction or an incident update carries `In-Reply-To` (the previous
message of its thread) and `References` (every earlier one), so mail clients show one thread.

Errors: SMTP 4xx replies and connection failures/timeouts are retryable; 5xx replies are permanent;
an authentication failure (535) is permanent, with a message naming the user, never the password.
"""

from __future__ import annotations

import base64
import binascii
import email.policy
import logging
import re
import ssl
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate
from typing import Any

import aiosmtplib

from alerts.channels.http import safe_cause, scrub
from alerts.render import payload_of, render_email
from monitor.model import Alert, Clock, DeliveryError

__all__ = ["EmailChannel", "SECURITY_MODES", "DEFAULT_PORTS", "DEDUP_HEADER"]

log = logging.getLogger(__name__)

SECURITY_MODES = ("starttls", "tls", "none")
#: The port for each security mode when none is configured (submission, submissions, relay).
DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}
DEDUP_HEADER = "X-Treasury-Monitor-Dedup-Key"
KIND_HEADER = "X-Treasury-Monitor-Kind"
_UNSAFE = re.compile("[\x00-\x1f\x7f]+")
# Python's header folder, at 78 columns, puts the space before an encoded word (e.g. the "—" of a
# title) at both ends of the fold, so readers see a doubled space. Subjects are clipped to 200 chars:
# with SMTP's hard limit of 998 they never need folding. The bodies are quoted-printable (7-bit),
# so the wire form is plain ASCII whatever the server's 8BITMIME/SMTPUTF8 support.
_WIRE_POLICY = email.policy.SMTP.clone(max_line_length=998)


def _header_text(value: Any) -> str:
    """Header-safe text: CR/LF and other controls would be a header injection."""
    return _UNSAFE.sub(" ", str(value or "")).strip()


def _code_retryable(code: int) -> bool:
    # 5xx is permanent by RFC 5321; 4xx and odd codes (aiosmtplib uses -1 for local failures) retry.
    return not 500 <= code < 600


class EmailChannel:
    """SMTP delivery of one alert to a fixed list of recipients."""

    type = "email"

    def __init__(
        self,
        name: str,
        host: str,
        port: int | None,
        sender: str,
        recipients: Sequence[str] | str,
        *,
        username: str | None = None,
        password: str | None = None,
        security: str = "starttls",
        timeout: float = 10.0,
        tls_context: ssl.SSLContext | None = None,
        clock: Clock | None = None,
    ):
        if security not in SECURITY_MODES:
            raise ValueError(f"security must be one of {', '.join(SECURITY_MODES)}, not {security!r}")
        recipients = (recipients,) if isinstance(recipients, str) else tuple(recipients)
        if not recipients:
            raise ValueError("recipients: none given")
        self.name = name
        self._clock = clock
        self.host = host
        self.port = port if port is not None else DEFAULT_PORTS[security]
        self.sender = sender
        self.recipients = recipients
        self.security = security
        self._username = username
        self._password = password
        self._timeout = timeout
        # Built here, not in send(): loading the CA bundle reads files, which must not block the loop.
        if tls_context is None and security != "none":
            tls_context = ssl.create_default_context()
        self._tls_context = tls_context

    def __repr__(self) -> str:
        return f"EmailChannel(name={self.name!r}, host={self.host!r}, port={self.port}, security={self.security!r})"

    def build_message(self, alert: Alert) -> EmailMessage:
        """The MIME message for `alert`: multipart/alternative text + HTML, mixed when it has attachments.

        :raises DeliveryError: not retryable, when an attachment is not valid base64.
        """
        payload = payload_of(alert)
        subject, text, html = render_email(payload)
        dedup_key = _header_text(payload.get("dedup_key"))
        kind = _header_text(payload.get("kind"))
        msg = EmailMessage()
        msg["Subject"] = _header_text(subject)
        msg["From"] = self.sender
        msg["To"] = ", ".join(self.recipients)
        # The send time (a replay's alert was created in simulated time; the event time is in the body).
        msg["Date"] = formatdate(self._clock.time() if self._clock is not None else alert.created_at, usegmt=True)
        msg["Message-ID"] = self._message_id(payload.get("message_id"))
        # Updates, retractions and incident updates reply to the thread their first message opened.
        thread = [self._message_id(t) for t in payload.get("thread") or () if isinstance(t, str) and t]
        if thread:
            msg["In-Reply-To"] = thread[-1]
            msg["References"] = " ".join(thread)
        msg[DEDUP_HEADER] = dedup_key
        msg[KIND_HEADER] = kind
        msg.set_content(text, cte="quoted-printable")
        msg.add_alternative(html, subtype="html", cte="quoted-printable")
        for i, att in enumerate(payload.get("attachments") or ()):
            try:
                data = base64.b64decode(att["data_base64"], validate=True)
                maintype, _, subtype = str(att.get("content_type") or "application/octet-stream").partition("/")
                filename = _header_text(att.get("filename")) or f"attachment-{i + 1}"
            except (KeyError, TypeError, binascii.Error) as exc:
                raise DeliveryError(f"{self.name}: attachment {i} is not valid base64 data", retryable=False) from exc
            msg.add_attachment(data, maintype=maintype or "application", subtype=subtype or "octet-stream", filename=filename)
        return msg

    def _message_id(self, message_id: object) -> str:
        # The message model's id: stable across resends of one alert, distinct for its update or retraction.
        local = re.sub(r"[^A-Za-z0-9._-]", "-", str(message_id or "alert"))[:64]
        domain = self.sender.rpartition("@")[2]
        if not re.fullmatch(r"[A-Za-z0-9.-]+", domain or ""):
            domain = "treasury-monitor.invalid"
        return f"<{local}@{domain}>"

    async def send(self, alert: Alert) -> None:
        """Send one alert to every recipient.

        :raises DeliveryError: classified as in the module docstring; never contains the password.
        """
        msg = self.build_message(alert)
        secrets = tuple(s for s in (self._password,) if s)
        where = f"{self.host}:{self.port}"
        try:
            errors, _ = await aiosmtplib.send(
                msg.as_bytes(policy=_WIRE_POLICY),
                sender=self.sender,
                recipients=list(self.recipients),
                hostname=self.host,
                port=self.port,
                username=self._username,
                password=self._password,
                use_tls=self.security == "tls",
                start_tls=self.security == "starttls",
                tls_context=self._tls_context,
                timeout=self._timeout,
            )
        except aiosmtplib.SMTPAuthenticationError as exc:
            retryable = _code_retryable(exc.code)
            what = "temporarily failed" if retryable else "failed"
            err = DeliveryError(
                f"{self.name}: SMTP authentication {what} for user {self._username!r} on {where}: "
                f"{exc.code} {scrub(_header_text(exc.message), secrets)}",
                retryable=retryable,
            )
            raise err from safe_cause(exc, secrets)
        except aiosmtplib.SMTPRecipientsRefused as exc:
            codes = [r.code for r in exc.recipients]
            detail = "; ".join(f"{r.recipient}: {r.code} {_header_text(r.message)}" for r in exc.recipients)
            err = DeliveryError(
                f"{self.name}: all recipients refused by {where}: {scrub(detail, secrets)}",
                retryable=all(_code_retryable(c) for c in codes),
            )
            raise err from safe_cause(exc, secrets)
        except aiosmtplib.SMTPResponseException as exc:
            err = DeliveryError(
                f"{self.name}: SMTP {exc.code} from {where}: {scrub(_header_text(exc.message), secrets)}",
                retryable=_code_retryable(exc.code),
            )
            raise err from safe_cause(exc, secrets)
        except aiosmtplib.SMTPNotSupported as exc:
            # E.g. an extension we need is missing: resending will not change the server's mind.
            err = DeliveryError(
                f"{self.name}: {where} does not support what is configured: {scrub(_header_text(exc), secrets)}",
                retryable=False,
            )
            raise err from safe_cause(exc, secrets)
        except ssl.SSLCertVerificationError as exc:
            err = DeliveryError(
                f"{self.name}: TLS certificate of {where} not trusted: {_header_text(exc.verify_message)}",
                retryable=False,
            )
            raise err from safe_cause(exc, secrets)
        except aiosmtplib.SMTPException as exc:
            # aiosmtplib raises the bare class when STARTTLS or AUTH is not offered; that is permanent.
            # Anything else here (disconnects, timeouts, TLS handshake failures) may pass: retry.
            detail = _header_text(exc)
            err = DeliveryError(
                f"{self.name}: SMTP delivery to {where} failed: {type(exc).__name__}: {scrub(detail, secrets)[:200]}",
                retryable="not supported" not in detail.lower(),
            )
            raise err from safe_cause(exc, secrets)
        except (OSError, TimeoutError) as exc:
            # Connection refused, resets, timeouts: try again later.
            err = DeliveryError(
                f"{self.name}: SMTP delivery to {where} failed: {type(exc).__name__}: {scrub(_header_text(exc), secrets)[:200]}",
                retryable=True,
            )
            raise err from safe_cause(exc, secrets)
        if errors:
            # Some recipients refused, others accepted: a resend would duplicate it for the others.
            log.warning(
                "email partly refused channel=%s refused=%s",
                self.name,
                ",".join(f"{rcpt}:{resp.code}" for rcpt, resp in errors.items()),
            )
        log.debug("delivered channel=%s dedup_key=%s recipients=%d", self.name, msg[DEDUP_HEADER], len(self.recipients))
