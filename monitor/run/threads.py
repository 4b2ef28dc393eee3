"""Message ids and threads: the one id scheme for every queued message (per-flow alerts and incidents).

A message's id is fixed when it is queued; an update or retraction names the first earlier message it
amends and the whole thread, so receivers can thread or replace what they showed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from alerts.render import message_id_of
from alerts.router import Route
from monitor.model import Alert
from storage import Store
from storage import alerts as outbox_store

__all__ = ["new_message_id", "thread_fields"]


def new_message_id(dedup_key: str, kind: str, now: int, seq: int) -> str:
    """A message id unique in this database (`seq` is the outbox's alert sequence) and fixed once stored."""
    return "msg_" + hashlib.sha256(f"{dedup_key}\n{kind}\n{now}\n{seq}".encode()).hexdigest()[:32]


def thread_fields(store: Store, route: Route, earlier: Sequence[Alert], *, now: int) -> dict:
    """`message_id`, `amends` (the first earlier message) and `thread` (earlier ids) of a new message."""
    ids = [message_id_of(a) for a in earlier]
    return {
        "message_id": new_message_id(route.dedup_key, route.kind, now, outbox_store.alert_count(store) + 1),
        "amends": ids[0] if ids and route.kind in ("update", "retraction") else None,
        "thread": ids if route.kind in ("update", "retraction") else [],
    }
