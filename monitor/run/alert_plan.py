"""Alerting glue: the pipeline's alert hook (rules → queued alerts) and the outbox over storage.

`AlertPlanner` runs inside a tick's storage transaction: for each new or changed classification and each
retraction it asks `alerts.router` for a Route, builds the message model (the flow's export record plus
kind, dedup key, changes and an explorer link) and queues it with `storage.alerts.queue_alert`, so the
alert commits together with the classification that caused it. `StoreQueue` exposes the durable queue to
`alerts.outbox.Dispatcher` through the async store thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from alerts.router import Route, Rule, changes_between, dedup_key, matching_channels, route_classification, route_retraction
from monitor.core.registry import Registry
from monitor.model import Alert, Classification, Delivery
from monitor.output.export import flow_record
from monitor.run.incident_alerts import IncidentSettings, plan_incidents
from monitor.run.pipeline import Decision, TickEvents
from monitor.run.threads import new_message_id, thread_fields
from monitor.run.watch_alerts import BalanceRule, DormancyRule, plan_balances, plan_dormancy
from storage import AsyncStore, Store
from storage import alerts as outbox_store
from storage import incidents as inc_store
from storage.reads import flow_row

__all__ = ["AlertSettings", "AlertPlanner", "StoreQueue", "StoreThreads", "alert_payload", "sample_alert", "new_message_id"]

DEFAULT_EXPLORER = "https://mempool.space/tx/{txid}"
#: Explorers of the other chains (the configured `explorer_url` is Bitcoin's).
CHAIN_EXPLORERS = {"ethereum": "https://etherscan.io/tx/{txid}"}
#: Flows older than this (block time) are classified but not alerted: a backfill of years of history
#: must not page anyone.
DEFAULT_MAX_AGE = 86_400


@dataclass(frozen=True)
class AlertSettings:
    """How alerts are planned (config `[alerts]`)."""

    rules: tuple[Rule, ...] = ()
    explorer_url: str | None = DEFAULT_EXPLORER  # `{txid}` is replaced; None for no link
    max_age: int = DEFAULT_MAX_AGE
    notify_confirmations: bool = False  # an update when an alerted unconfirmed flow confirms
    label: str = ""  # e.g. SIMULATED: every renderer puts it in the title and the body
    incidents: IncidentSettings = IncidentSettings()
    dormancy: tuple[DormancyRule, ...] = ()
    balance: tuple[BalanceRule, ...] = ()


def alert_payload(route: Route, record: dict, *, explorer_url: str | None, label: str = "") -> dict:
    """The message model renderers take (documented in `alerts.render`)."""
    if record["chain"] != "bitcoin" and explorer_url:
        explorer_url = CHAIN_EXPLORERS.get(record["chain"])
    url = explorer_url.format(txid=record["txid"].split(":")[0]) if explorer_url else None
    return {
        "kind": route.kind,
        "dedup_key": route.dedup_key,
        "changes": list(route.changes),
        "explorer_url": url,
        "flow": record,
        **({"label": label} if label else {}),
    }


class AlertPlanner:
    """The pipeline's alert hook: queue what the rules ask for, in the tick's transaction."""

    def __init__(self, registry: Registry, settings: AlertSettings):
        self.registry = registry
        self.settings = settings

    def _is_live(self, c: Classification, block_time: int | None, now: int) -> bool:
        return block_time is None or now - block_time <= self.settings.max_age

    def _queue(self, store: Store, route: Route, c: Classification, *, now: int, amends_txid: str | None = None) -> int:
        row = flow_row(store, c.chain, c.txid, c.entity)
        if row is None:
            return 0
        payload = alert_payload(route, flow_record(row), explorer_url=self.settings.explorer_url,
                                label=self.settings.label)
        # An RBF replacement amends what was said about the tx it replaced.
        earlier = outbox_store.flow_messages(store, c.chain, amends_txid or c.txid, c.entity)
        payload.update(thread_fields(store, route, earlier, now=now))
        alert = Alert(route.dedup_key, route.kind, route.channels, payload, created_at=now)
        outbox_store.queue_alert(store, alert, chain=c.chain, txid=c.txid, entity=c.entity, classification_id=c.id, now=now)
        return 1

    def __call__(
        self,
        store: Store,
        decisions: list[Decision],
        retracted: list[Classification],
        *,
        now: int,
        events: TickEvents = TickEvents(),
    ) -> int:
        queued = 0
        replacing = {new: old for old, new in events.replaced_by.items()}
        retracted_by_key = {(c.txid, c.entity): c for c in retracted}
        # RBF: a replaced tx whose channels heard about it gets ONE update through its replacement, never
        # a retraction plus a second "new" alert for what is the same outflow.
        rbf: dict[tuple[str, str], tuple[Classification, set[str]]] = {}  # (new txid, entity) → (old, heard)
        for d in decisions:
            c = d.classification
            old = retracted_by_key.get((replacing.get(c.txid), c.entity))
            if old is not None and (d.is_new or d.is_changed):
                heard_old = outbox_store.alerted_channels(store, c.chain, old.txid, c.entity)
                if heard_old:
                    rbf[(c.txid, c.entity)] = (old, heard_old)
        superseded = {(old.txid, entity) for (_, entity), (old, _) in rbf.items()}
        for c in retracted:
            if (c.txid, c.entity) in superseded:
                continue
            status = store.tx_status(c.chain, c.txid) or "gone"
            why = "the transaction was replaced (RBF)" if status == "replaced" else "its block was orphaned by a reorg"
            heard = outbox_store.alerted_channels(store, c.chain, c.txid, c.entity)
            route = route_retraction(c, already_alerted=heard, why=why)
            if route is not None:
                queued += self._queue(store, route, c, now=now)
        for d in decisions:
            c = d.classification
            if not self._is_live(c, d.flow.block_time, now):
                continue
            kind = self.registry.get(c.entity).kind
            if (c.txid, c.entity) in rbf:
                old, heard_old = rbf[(c.txid, c.entity)]
                channels = tuple(dict.fromkeys(matching_channels(self.settings.rules, c, kind) + tuple(heard_old)))
                changes = (f"replaced (RBF) by {c.txid}; {old.txid} will not confirm",) + changes_between(old, c)
                route = Route("update", dedup_key(c.chain, c.txid, c.entity, c.verdict), channels, changes)
                queued += self._queue(store, route, c, now=now, amends_txid=old.txid)
            elif d.is_new or d.is_changed:
                heard = outbox_store.alerted_channels(store, c.chain, c.txid, c.entity)
                route = route_classification(self.settings.rules, c, d.previous, entity_kind=kind, already_alerted=heard)
                if route is not None:
                    queued += self._queue(store, route, c, now=now)
            elif self.settings.notify_confirmations and c.txid in events.confirmed:
                heard = outbox_store.alerted_channels(store, c.chain, c.txid, c.entity)
                if heard:
                    route = Route("update", dedup_key(c.chain, c.txid, c.entity, c.verdict), tuple(heard),
                                  (f"confirmed in block {d.flow.block_height}",))
                    queued += self._queue(store, route, c, now=now)
        label = self.settings.label
        incidents = dataclasses.replace(self.settings.incidents, label=label)
        queued += plan_incidents(store, self.registry, self.settings.rules, incidents, decisions, retracted,
                                 replacing=replacing, is_live=self._is_live, now=now)
        queued += plan_dormancy(store, self.registry, self.settings.dormancy, decisions, is_live=self._is_live,
                                explorer_url=self.settings.explorer_url, now=now, label=label)
        if self.settings.balance:
            queued += plan_balances(store, self.registry, self.settings.balance, now=now, label=label)
        return queued


class StoreQueue:
    """`alerts.outbox.OutboxQueue` over the async store."""

    def __init__(self, store: AsyncStore):
        self.store = store

    async def due(self, now: int, limit: int) -> Sequence[outbox_store.Pending]:
        return await self.store.run(outbox_store.due, now=now, limit=limit)

    async def begin(self, alert_id: int, channel: str, now: int) -> int:
        return await self.store.run(outbox_store.begin_attempt, alert_id, channel, now=now)

    async def finish(self, delivery: Delivery) -> None:
        await self.store.run(outbox_store.finish_attempt, delivery)

    async def recover(self, now: int) -> int:
        return await self.store.run(outbox_store.recover_in_flight, now=now)


class StoreThreads:
    """`alerts.channels.slack.ThreadStore` over the async store: what a channel answered per message."""

    def __init__(self, store: AsyncStore, clock):
        self.store = store
        self.clock = clock

    async def get(self, message_id: str, channel: str) -> str | None:
        return await self.store.run(inc_store.thread_ref, message_id, channel)

    async def put(self, message_id: str, channel: str, ref: str) -> None:
        await self.store.run(inc_store.save_thread_ref, message_id, channel, ref, now=int(self.clock.time()))


def sample_alert(now: int, channels: tuple[str, ...]) -> Alert:
    """A clearly labelled test alert with a realistic flow record (for `alerts test`)."""
    txid = "0" * 64
    record = {
        "schema": "treasury-monitor.flow/1",
        "chain": "bitcoin",
        "txid": txid,
        "entity": "TEST (treasury-monitor alerts test)",
        "entity_kind": "miner",
        "direction": "out",
        "status": "confirmed",
        "block_height": None,
        "block_time": None,
        "seen_at": None,
        "asset": "BTC",
        "decimals": 8,
        **{f"{k}_units": v for k, v in (("spent", 125_000_100_000), ("change", 0), ("received", 0), ("fee_share", 100_000), ("out", 125_000_000_000))},
        **{f"{k}_amount": v for k, v in (("spent", "1250.00100000"), ("change", "0.00000000"), ("received", "0.00000000"), ("fee_share", "0.00100000"), ("out", "1250.00000000"))},
        "destinations": [
            {"address": None, "n": 0, "value_units": 125_000_000_000, "value_amount": "1250.00000000", "attribution": "exchange:Example"}
        ],
        "classification": {
            "verdict": "distress_sale",
            "severity": "info",
            "reasons": ["This is a test alert sent by `treasury-monitor alerts test`; no coins moved."],
            "usd_value": None,
            "btc_usd": None,
            "hashprice_usd": None,
            "price_source": None,
            "price_at": None,
            "price_stale": False,
            "attribution": "exchange:Example",
            "version": 1,
            "status": "active",
            "classified_at": None,
        },
    }
    key = f"test:{now}"
    payload = {"kind": "test", "dedup_key": key, "changes": [], "explorer_url": None, "flow": record}
    return Alert(key, "test", channels, payload, created_at=now)
