"""Reads for the dashboard: one page of an entity's flows with filters, the newest events, flow counts.

Rows have the same shape as `storage.reads.flow_rows` (stored columns, exact integer amounts, the
destinations and the newest classification attached); shaping them for a page is `monitor.output.dashboard`'s job.
"""

from __future__ import annotations

from typing import Any

from storage.reads import _destinations, _latest_classifications, events_after, last_event_id
from storage.store import Store

__all__ = ["DESTINATION_KINDS", "flow_page", "recent_events"]

#: Destination kinds a flow page can be filtered by (the prefix of a destination's attribution).
DESTINATION_KINDS = ("exchange", "otc", "custodian", "entity", "unknown", "self")

_LATEST_VERDICT = (
    "(select c.verdict from classifications c where c.chain = f.chain and c.txid = f.txid"
    " and c.entity = f.entity order by c.version desc limit 1)"
)


def flow_page(
    store: Store,
    entity: str,
    *,
    verdict: str | None = None,
    destination: str | None = None,
    since: int | None = None,
    until: int | None = None,
    limit: int = 25,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """One page of an entity's flows, newest first, and how many match the filters in all.

    `destination` is one of DESTINATION_KINDS: flows with at least one destination of that kind.
    `since`/`until` filter on the block time, or the time first seen for unconfirmed flows.

    :raises ValueError: for an unknown destination kind.
    """
    at = "coalesce(f.block_time, f.first_seen)"
    where, params = ["f.entity = ?"], [entity]
    if verdict:
        where.append(f"{_LATEST_VERDICT} = ?")
        params.append(verdict)
    if destination:
        if destination not in DESTINATION_KINDS:
            raise ValueError(f"destination: one of {', '.join(DESTINATION_KINDS)}")
        test = "d.attribution = ?" if destination in ("unknown", "self") else "d.attribution like ?"
        where.append(
            f"exists (select 1 from destinations d where d.chain = f.chain and d.txid = f.txid"
            f" and d.entity = f.entity and {test})"
        )
        params.append(destination if destination in ("unknown", "self") else destination + ":%")
    if since is not None:
        where.append(f"{at} >= ?")
        params.append(since)
    if until is not None:
        where.append(f"{at} < ?")
        params.append(until)
    cond = " and ".join(where)
    total = store._query(f"select count(*) as n from flows f where {cond}", params)[0]["n"]
    rows = store._query(
        f"select f.*, e.kind as entity_kind from flows f left join entities e on e.name = f.entity where {cond}"
        f" order by {at} desc, f.txid limit ? offset ?",
        [*params, limit, offset],
    )
    keys = [(r["chain"], r["txid"], r["entity"]) for r in rows]
    dests = _destinations(store, keys)
    classes = _latest_classifications(store, keys)
    for r in rows:
        key = (r["chain"], r["txid"], r["entity"])
        r["destinations"] = dests.get(key, [])
        r["classification"] = classes.get(key)
        for k in ("spent_units", "change_units", "received_units", "fee_share_units", "out_units"):
            r[k] = int(r[k])
    return rows, total


def recent_events(store: Store, limit: int = 40) -> list[dict[str, Any]]:
    """The newest `limit` events, oldest first (as `storage.reads.events_after`)."""
    last = last_event_id(store)
    return events_after(store, max(0, last - limit), limit=limit)
