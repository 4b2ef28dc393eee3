"""Logging setup: readable lines by default, JSON lines with `--log-format json`; secrets redacted.

Log records carry key=value context in their message (source=..., entity=..., txid=...). Secret values
registered with `redact()` are replaced by `***` in every formatted line, whatever logged them.
"""

from __future__ import annotations

import json
import logging
import sys

from monitor.clock import iso

__all__ = ["configure_logging", "redact"]

_SECRETS: set[str] = set()


def redact(*values: str) -> None:
    """Never print these values (e.g. webhook URLs, passwords) in any log line."""
    _SECRETS.update(v for v in values if v and len(v) >= 4)


def _scrub(text: str) -> str:
    # longest first: a secret that contains another must not be left half-visible
    for s in sorted(_SECRETS, key=len, reverse=True):
        if s in text:
            text = text.replace(s, "***")
    return text


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return _scrub(super().format(record))


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        # Scrub the values before encoding: JSON escapes a quote or backslash in a secret, and the
        # escaped form would no longer match (nor be replaced) in the encoded line.
        doc = {
            "time": iso(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": _scrub(record.getMessage()),
        }
        if record.exc_info:
            doc["exception"] = _scrub(self.formatException(record.exc_info))
        return _scrub(json.dumps(doc, ensure_ascii=False))


def configure_logging(*, level: str = "warning", fmt: str = "text", stream=None) -> None:
    """Install one stderr handler on the root logger with the chosen format."""
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_treasury_monitor", False):
            root.removeHandler(h)
    handler._treasury_monitor = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # APScheduler logs every job run at INFO: state changes are what matter, so keep it at WARNING.
    logging.getLogger("apscheduler").setLevel(max(logging.WARNING, root.level))
