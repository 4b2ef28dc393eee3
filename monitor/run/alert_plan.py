"""Alerting glue: the pipeline's alert hook (rules → queued alerts) and the outbox over storage.

`AlertPlanner` runs inside a tick's storage transaction: it reads what the outbox already told each
flow's channels, asks `alerts.router.plan` (pure) for the tick's routes (new and changed
classifications, retractions, RBF updates, confirmations), and for each route builds the message model
(the flow's export record plus kind, dedup key, changes and an explorer link) and queues it with
`storage.alerts.queue_alert`, so the alert commits together with the classification that caused it.
`StoreQueue` exposes the durable queue to `alerts.outbox.Dispatcher` through the async store thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from alerts.router import FlowDecision, Route, Rule, plan
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
        payload = alert_payload(route, flow_record(row), explorer_url=self.settings.explorer_url, label=self.settings.label)
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
        # read → decide (alerts.router.plan, pure) → write
        flows = [
            FlowDecision(d.classification, d.previous, d.is_new, d.is_changed, d.flow.block_time, d.flow.block_height)
            for d in decisions
        ]
        keys = {(c.chain, c.txid, c.entity) for c in [*retracted, *(d.classification for d in decisions)]}
        heard = {k: outbox_store.alerted_channels(store, *k) for k in keys}
        statuses = {(c.chain, c.txid): store.tx_status(c.chain, c.txid) or "gone" for c in retracted}
        kinds = {c.entity: self.registry.get(c.entity).kind for c in (d.classification for d in decisions)}
        for p in plan(
            self.settings.rules,
            flows,
            retracted,
            heard=heard,
            statuses=statuses,
            kinds=kinds,
            replacing=replacing,
            confirmed=events.confirmed,
            notify_confirmations=self.settings.notify_confirmations,
            max_age=self.settings.max_age,
            now=now,
        ):
            queued += self._queue(store, p.route, p.classification, now=now, amends_txid=p.amends_txid)
        label = self.settings.label
        incidents = dataclasses.replace(self.settings.incidents, label=label)
        queued += plan_incidents(
            store,
            self.registry,
            self.settings.rules,
            incidents,
            decisions,
            retracted,
            replacing=replacing,
            is_live=self._is_live,
            now=now,
        )
        queued += plan_dormancy(
            store,
            self.registry,
            self.settings.dormancy,
            decisions,
            is_live=self._is_live,
            explorer_url=self.settings.explorer_url,
            now=now,
            label=label,
        )
        if self.settings.balance:
            queued += plan_balances(store, self.registry, self.settings.balance, now=now, label=label)
        return queued


class StoreQueue:
    """`alerts.outbox.OutboxQueue` over the async store, claiming pairs as `owner`.

    `owner` is this process's lock token (`storage.lock`); `live_owners` are the owners whose in-flight
    pairs recovery must leave alone (this process's own: while it holds the database's lock, no other
    dispatcher of the database is alive).
    """

    def __init__(self, store: AsyncStore, owner: str = ""):
        self.store = store
        self.owner = owner

    async def due(self, now: int, limit: int) -> Sequence[outbox_store.Pending]:
        return await self.store.run(outbox_store.due, now=now, limit=limit)

    async def begin(self, alert_id: int, channel: str, now: int) -> int | None:
        return await self.store.run(outbox_store.begin_attempt, alert_id, channel, now=now, owner=self.owner)

    async def finish(self, delivery: Delivery) -> None:
        await self.store.run(outbox_store.finish_attempt, delivery)

    async def recover(self, now: int) -> int:
        return await self.store.run(outbox_store.recover_in_flight, now=now, live_owners=(self.owner,) if self.owner else ())


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
        **{
            f"{k}_units": v
            for k, v in (
                ("spent", 125_000_100_000),
                ("change", 0),
                ("received", 0),
                ("fee_share", 100_000),
                ("out", 125_000_000_000),
            )
        },
        **{
            f"{k}_amount": v
            for k, v in (
                ("spent", "1250.00100000"),
                ("change", "0.00000000"),
                ("received", "0.00000000"),
                ("fee_share", "0.00100000"),
                ("out", "1250.00000000"),
            )
        },
        "destinations": [
            {
                "address": None,
                "n": 0,
                "value_units": 125_000_000_000,
                "value_amount": "1250.00000000",
                "attribution": "exchange:Example",
            }
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
