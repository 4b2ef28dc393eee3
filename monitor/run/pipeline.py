"""The pipeline: one tick end to end, shared by `poll`, `backfill`, the daemon and the demo.

A tick reads a source's stored cursors, asks the source for a Batch, turns its transactions into entity
flows, attributes their destinations, gets the market context of each outflow (price, difficulty,
fees), and then, in ONE storage transaction on the store thread: stores transactions and flows,
classifies each outflow against the entity's stored history, stores the classifications (versioned),
retracts what left the chain and the mempool, queues the alerts the rules ask for, and advances the
cursors. A crash before the commit repeats the tick (every write is an idempotent upsert keyed by chain,
txid and entity, and an unchanged classification writes nothing); after it, nothing is repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from monitor.core.attribution import attribute
from monitor.core.classify import Thresholds, classify
from monitor.core.cluster import LearnResult, apply_learned, learn_from_txs
from monitor.core.facts import day_end
from monitor.core.flows import entity_flows
from monitor.core.registry import Registry
from monitor.discovery.addressbook import commit_provisional
from monitor.discovery.jobs import commit_learned
from monitor.discovery.miners import with_measured_production
from monitor.discovery.provisional import Judgement, Sweep, apply_provisional, find_sweeps, judge_spends, provisional_inputs
from monitor.market.context import Market, context_json
from monitor.model import Attribution, Batch, Classification, Clock, Entity, EntityFlow, FlowHistory, MarketContext, TraceShare
from storage import AsyncStore, Store
from storage.discovery import rejected_addresses
from storage.utxos import apply_utxo_changes
from watchers import Source

__all__ = ["TickEvents", "TickResult", "Pipeline", "Decision", "commit_batch", "reattribute_flow", "flow_history", "HISTORY_DAYS"]

log = logging.getLogger("treasury_monitor.pipeline")

#: Window of the "30-day cumulative out" the classifier compares with monthly production and holdings.
HISTORY_DAYS = 30
#: Verdicts that are not transfers away from the treasury and do not count toward sales history.
_NOT_SALES = frozenset({"internal", "custody_move"})
_RECENT = 5


@dataclass(frozen=True)
class Decision:
    """One classification made in a tick: the flow, the stored classification and what it replaced."""

    flow: EntityFlow
    classification: Classification
    previous: Classification | None
    context: MarketContext

    @property
    def is_new(self) -> bool:
        """A first classification of this flow."""
        return self.previous is None

    @property
    def is_changed(self) -> bool:
        """A new version that differs from the previous active one."""
        return self.previous is not None and self.previous.id != self.classification.id


@dataclass(frozen=True)
class TickEvents:
    """What else happened to transactions in a tick, for the alert hook."""

    replaced_by: dict[str, str] = field(default_factory=dict)  # gone txid → the tx that spends its inputs (RBF)
    confirmed: frozenset[str] = frozenset()  # txids seen unconfirmed before and confirmed in this tick


class AlertHook(Protocol):
    """Queues alerts inside the tick's transaction (the alert router implements it)."""

    def __call__(
        self,
        store: Store,
        decisions: list[Decision],
        retracted: list[Classification],
        *,
        now: int,
        events: TickEvents = ...,
    ) -> int: ...


@dataclass(frozen=True)
class TickResult:
    """What one tick did, for logs, metrics and the CLI."""

    source: str
    txs: int = 0
    new_txs: int = 0
    flows: int = 0
    new_flows: int = 0
    outflows: int = 0
    classified: int = 0
    retracted: int = 0
    alerts: int = 0
    failed: tuple[str, ...] = ()
    requests: int = 0
    tip_height: int | None = None
    unfinished: tuple[str, ...] = ()
    decisions: tuple[Decision, ...] = field(default=(), repr=False)


def _at(flow: EntityFlow, now: int) -> int:
    return flow.block_time if flow.block_time is not None else now


def flow_history(
    store: Store, flow: EntityFlow, *, now: int, days: int = HISTORY_DAYS, entity: Entity | None = None
) -> FlowHistory:
    """The entity's sales history before this flow, from storage (30-day total, recent sizes), and, for
    each dated holdings point of `entity`, what was seen arriving and leaving since that point's day."""
    at = _at(flow, now)
    since: list[tuple[str, int, int]] = []
    if entity is not None:
        for fact in entity.profile.series("holdings_btc"):
            if fact.as_of and day_end(fact.as_of) <= at:
                received, left = store.flow_totals(
                    flow.entity, asset=flow.asset, since=day_end(fact.as_of), before=(at, flow.txid)
                )
                since.append((fact.as_of, received, left))
    rows = [
        r
        for r in store.outflow_history(flow.entity, since=at - days * 86400, before=(at, flow.txid))
        if r["verdict"] not in _NOT_SALES
    ]
    recent = rows[-_RECENT:]
    return FlowHistory(
        out_30d=sum(int(r["out_units"]) for r in rows),
        count_30d=len(rows),
        recent_usd=tuple(float(r["usd_value"]) for r in recent if r["usd_value"] is not None)
        if all(r["usd_value"] is not None for r in recent)
        else (),
        recent_out=tuple(int(r["out_units"]) for r in recent),
        since=tuple(since),
    )


def _replacements(store: Store, batch: Batch) -> dict[str, str]:
    """Gone mempool txids whose inputs a tx of this batch spends: replaced by it (RBF), not just dropped.

    Only a tx last seen unconfirmed can be replaced. A confirmed tx whose block was orphaned is gone by a
    reorg even when the new branch re-spends its inputs: what the user was told happened did not, so it is
    retracted, and the new branch's tx is a new flow with its own alert (never "replaced (RBF)").
    """
    if not batch.gone:
        return {}
    spends = {(i.prev_txid, i.prev_vout): tx.txid for tx in batch.txs for i in tx.inputs if i.prev_txid}
    out = {}
    for txid in batch.gone:
        if store.tx_status(batch.chain, txid) != "mempool":
            continue
        old = store.get_tx(batch.chain, txid)
        for i in old.inputs if old is not None else ():
            new = spends.get((i.prev_txid, i.prev_vout))
            if new is not None and new != txid:
                out[txid] = new
                break
    return out


def _keep_traced(store: Store, flow: EntityFlow) -> EntityFlow:
    """The flow, keeping stored attributions found by hop tracing where it would now say `unknown`."""
    if not any(d.attribution.kind == "unknown" for d in flow.destinations):
        return flow
    old = store.get_flow(flow.chain, flow.txid, flow.entity)
    traced = {d.n: d for d in (old.destinations if old else ()) if d.attribution.path}
    if not traced:
        return flow
    return replace(
        flow,
        destinations=tuple(
            replace(d, attribution=traced[d.n].attribution, shares=traced[d.n].shares)
            if d.attribution.kind == "unknown" and d.n in traced
            else d
            for d in flow.destinations
        ),
    )


def _missing_context(flow: EntityFlow, now: int) -> MarketContext:
    return MarketContext(at=_at(flow, now))


def commit_batch(
    store: Store,
    batch: Batch,
    flows: list[EntityFlow],
    contexts: dict[tuple[str, str, str], MarketContext],
    registry: Registry,
    *,
    now: int,
    thresholds: Thresholds = Thresholds(),
    alert_hook: AlertHook | None = None,
    learned: LearnResult | None = None,
    provisional: tuple[list[Sweep], list[Judgement]] = ([], []),
) -> TickResult:
    """Write a batch, classify its outflows and queue alerts, all in one transaction (store thread).

    `provisional`: sweeps found in the batch and what spends from provisional addresses decided; a
    deposit re-attributes its sweep flow (a new classification and its update alert) in the same transaction.
    """
    txs = {tx.txid: tx for tx in batch.txs}
    decisions: list[Decision] = []
    retracted: list[Classification] = []
    alerts = 0
    with store.batch():
        stored_status = store.tx_statuses(batch.chain, (tx.txid for tx in batch.txs if tx.is_confirmed))
        confirmed = {t for t, status in stored_status.items() if status == "mempool"}
        new_txs = store.save_txs(batch.txs, now=now)  # one batched write: a backfill step has thousands
        if learned is not None and (learned.learned or learned.flags or learned.candidates):
            commit_learned(store, learned, now=now)
        # A provisional address found to be an exchange deposit re-attributes its sweep flow (path: sweep, collection)
        redo: dict[tuple[str, str, str], dict[int, Attribution]] = {}
        if provisional[0] or provisional[1]:
            for chain, txid, entity_name, n, att in commit_provisional(store, provisional[0], provisional[1], now=now):
                redo.setdefault((chain, txid, entity_name), {})[n] = att
        flows = [_keep_traced(store, f) for f in flows]
        flows = [
            replace(
                f,
                destinations=tuple(
                    replace(d, attribution=redo[(f.chain, f.txid, f.entity)].get(d.n, d.attribution)) for d in f.destinations
                ),
            )
            if (f.chain, f.txid, f.entity) in redo
            else f
            for f in flows
        ]
        in_batch = {(f.txid, f.entity) for f in flows}
        new_flows = store.save_flows(flows, now=now)  # one batched write: a backfill step has thousands
        # Retract first: a replacement in this same batch must not count the tx it replaced in its history.
        replaced_by = _replacements(store, batch)
        for txid in batch.gone:
            before = store.tx_status(batch.chain, txid)
            if before is None or before in ("orphaned", "replaced"):
                continue
            store.set_tx_status(batch.chain, txid, "orphaned" if before == "confirmed" else "replaced", now=now)
            retracted.extend(store.retract(batch.chain, txid, now=now))
        # Oldest first, so each flow's history includes the earlier flows of the same batch.
        for f in sorted((f for f in flows if f.direction != "in"), key=lambda f: (_at(f, now), f.txid)):
            # the miner view's measured production replaces a staler reported figure (monitor.discovery.miners)
            entity = with_measured_production(store, registry.get(f.entity), at=_at(f, now))
            ctx = contexts.get((f.chain, f.txid, f.entity)) or _missing_context(f, now)
            c = classify(
                f,
                entity,
                ctx,
                flow_history(store, f, now=now, entity=entity),
                thresholds,
                now=now,
                provisional=provisional_inputs(txs.get(f.txid), f.entity, registry),
            )
            stored, prev = store.save_classification(c, context=context_json(ctx), now=now)
            decisions.append(Decision(f, stored, prev, ctx))
        # Balances before alerts: balance alerts read the state this batch leaves (same transaction).
        store.save_snapshots(batch.snapshots)
        if batch.utxos_added or batch.utxos_spent:
            apply_utxo_changes(store, batch.chain, batch.utxos_added, batch.utxos_spent)
        if alert_hook is not None:
            alerts = alert_hook(store, decisions, retracted, now=now, events=TickEvents(replaced_by, frozenset(confirmed)))
        for (chain, txid, entity_name), atts in redo.items():
            if (txid, entity_name) in in_batch:
                continue  # re-attributed above, before it was classified
            d = reattribute_flow(
                store, chain, txid, entity_name, atts, registry, now=now, thresholds=thresholds, alert_hook=alert_hook
            )
            if d is not None:
                decisions.append(d)
                alerts += int(d.is_changed)
        store.set_cursors(batch.cursors, now=now)
    return TickResult(
        source=batch.source,
        txs=len(batch.txs),
        new_txs=new_txs,
        flows=len(flows),
        new_flows=new_flows,
        outflows=sum(1 for f in flows if f.direction == "out"),
        classified=sum(1 for d in decisions if d.is_new or d.is_changed),
        retracted=len(retracted),
        alerts=alerts,
        failed=batch.failed,
        requests=batch.requests,
        tip_height=batch.tip_height,
        unfinished=batch.unfinished,
        decisions=tuple(decisions),
    )


def reattribute_flow(
    store: Store,
    chain: str,
    txid: str,
    entity: str,
    attributions: dict[int, Attribution],
    registry: Registry,
    *,
    now: int,
    thresholds: Thresholds = Thresholds(),
    alert_hook: AlertHook | None = None,
    shares: dict[int, tuple[TraceShare, ...]] | None = None,
) -> Decision | None:
    """Re-attribute destinations of a stored flow (by output index), re-classify, queue an update (store thread).

    `shares` gives a destination the breakdown multi-branch tracing found. The market context of the
    flow's newest classification is reused, so only the attribution changes the verdict. Returns the
    Decision, or None when the flow is unknown.
    """
    shares = shares or {}
    with store.batch():
        flow = store.get_flow(chain, txid, entity)
        if flow is None:
            return None
        dests = tuple(
            replace(d, attribution=attributions.get(d.n, d.attribution), shares=shares.get(d.n, d.shares))
            for d in flow.destinations
        )
        flow = replace(flow, destinations=dests)
        store.save_flow(flow, now=now, status=store.tx_status(chain, txid))
        prev = store.latest_classification(chain, txid, entity)
        ctx_data = store.classification_context(prev.id) if prev is not None and prev.id is not None else {}
        ctx = MarketContext(**ctx_data) if ctx_data else _missing_context(flow, now)
        ent = with_measured_production(store, registry.get(entity), at=_at(flow, now))
        c = classify(
            flow,
            ent,
            ctx,
            flow_history(store, flow, now=now, entity=ent),
            thresholds,
            now=now,
            provisional=provisional_inputs(store.get_tx(chain, txid), entity, registry),
        )
        stored, previous = store.save_classification(c, context=context_json(ctx), now=now)
        decision = Decision(flow, stored, previous, ctx)
        if alert_hook is not None:
            alert_hook(store, [decision], [], now=now)
    return decision


class Pipeline:
    """Flows → attribution → context → classification → storage (+ alerts) for any source's batches."""

    def __init__(
        self,
        registry: Registry,
        store: AsyncStore,
        clock: Clock,
        *,
        market: Market | None = None,
        thresholds: Thresholds = Thresholds(),
        alert_hook: AlertHook | None = None,
        learn_cospend: bool = True,
        on_registry_change: Callable[[Registry], None] | None = None,
        provisional: bool = True,
    ):
        self.learn_cospend = learn_cospend
        self.provisional = provisional
        self.on_registry_change = on_registry_change
        self.registry = registry
        self.store = store
        self.clock = clock
        self.market = market
        self.thresholds = thresholds
        self.alert_hook = alert_hook

    def flows_of(self, batch: Batch) -> list[EntityFlow]:
        """Attributed entity flows of every tx in a batch (pure)."""
        return [attribute(f, self.registry) for tx in batch.txs for f in entity_flows(tx, self.registry)]

    async def process(self, batch: Batch) -> TickResult:
        """Learn co-spent addresses, classify and commit one batch; returns what was stored."""
        learned = None
        if self.learn_cospend and batch.txs:
            # Addresses co-spent with a watched one belong to its entity: learn them before computing
            # flows, so their inputs count in this very tick (a rejected address is never learned again).
            rejected = await self.store.run(rejected_addresses)
            learned = learn_from_txs(batch.txs, self.registry, rejected=rejected)
            if learned.learned:
                self.registry = apply_learned(self.registry, learned.learned)
                if self.on_registry_change is not None:
                    self.on_registry_change(self.registry)
        sweeps: list[Sweep] = []
        judgements: list[Judgement] = []
        if self.provisional and batch.txs:
            # A sweep's destination is watched at once, provisionally (its history read from the next poll);
            # spends from provisional addresses decide them (monitor.discovery.provisional), before flows are computed.
            rejected = await self.store.run(rejected_addresses)
            sweeps = find_sweeps(batch.txs, self.registry, rejected=rejected)
            reg = apply_provisional(self.registry, sweeps)
            judgements = judge_spends(batch.txs, reg)
            if sweeps or judgements:
                self.registry = apply_provisional(reg, (), judgements)
                if self.on_registry_change is not None:
                    self.on_registry_change(self.registry)
        flows = self.flows_of(batch)
        contexts: dict[tuple[str, str, str], MarketContext] = {}
        if self.market is not None:
            hashes = {tx.txid: tx.block_hash for tx in batch.txs}
            contexts = await self.market.contexts((f, hashes.get(f.txid)) for f in flows if f.direction != "in")
        return await self.store.run(
            commit_batch,
            batch,
            flows,
            contexts,
            self.registry,
            now=int(self.clock.time()),
            thresholds=self.thresholds,
            alert_hook=self.alert_hook,
            learned=learned,
            provisional=(sweeps, judgements),
        )

    async def reattribute(
        self,
        chain: str,
        txid: str,
        entity: str,
        attributions: dict[int, Attribution],
        *,
        shares: dict[int, tuple[TraceShare, ...]] | None = None,
    ) -> Decision | None:
        """Re-attribute a stored flow's destinations (e.g. after hop tracing) and re-classify it."""
        return await self.store.run(
            reattribute_flow,
            chain,
            txid,
            entity,
            attributions,
            self.registry,
            now=int(self.clock.time()),
            thresholds=self.thresholds,
            alert_hook=self.alert_hook,
            shares=shares,
        )

    async def tick(self, source: Source, *, progress: Callable[..., Any] | None = None) -> TickResult:
        """Poll one source from its stored cursors and process what it returns."""
        cursors = await self.store.run(Store.cursors, source.name)
        kwargs = {"progress": progress} if progress is not None else {}
        batch = await source.poll(cursors, **kwargs)
        result = await self.process(batch)
        if result.failed:
            log.warning(
                "source=%s tick stored %d txs; %d keys failed and will be retried: %s",
                source.name,
                result.txs,
                len(result.failed),
                ", ".join(result.failed[:5]),
            )
        return result

    async def backfill(self, source: Source, *, progress: Callable[..., Any] | None = None) -> TickResult:
        """Tick `source` again at once while it reports unfinished keys: the whole history in one call.

        Each step commits its data with its cursors, so an interrupted backfill resumes where it stopped.
        A source that pages addresses (address mode) is narrowed to the unfinished ones for the later steps,
        so addresses already read cost nothing more. Returns the steps' sums.
        """
        total = result = await self.tick(source, progress=progress)
        narrow = hasattr(source, "addresses") and hasattr(source, "set_addresses")
        try:
            while result.unfinished:
                if narrow:
                    source.set_addresses(result.unfinished)  # type: ignore[attr-defined]
                result = await self.tick(source, progress=progress)
                total = _add(total, result)
                if result.requests == 0:
                    break  # no step possible (e.g. every unfinished key failed): the next call retries
        finally:
            if narrow:
                source.set_addresses(self.registry.watched_addresses(source.chain))  # type: ignore[attr-defined]
        return total


def _add(a: TickResult, b: TickResult) -> TickResult:
    """Two ticks of one source as one: counts summed, the later tick's state."""
    return replace(
        b,
        txs=a.txs + b.txs,
        new_txs=a.new_txs + b.new_txs,
        flows=a.flows + b.flows,
        new_flows=a.new_flows + b.new_flows,
        outflows=a.outflows + b.outflows,
        classified=a.classified + b.classified,
        retracted=a.retracted + b.retracted,
        alerts=a.alerts + b.alerts,
        requests=a.requests + b.requests,
        decisions=a.decisions + b.decisions,
        failed=tuple(dict.fromkeys(a.failed + b.failed)),
    )
