"""Hop tracing: follow an outflow's unknown destination forward until it reaches an exchange, OTC desk or custodian.

Bhutan's sales are the reference case: main wallet → fresh intermediate address → (another fresh
address →) QCP / Binance / Kraken / Cobo. The flow is first classified `unknown_transfer`; tracing then
follows the coins and, when they reach a known counterparty, re-attributes the destination with the
path as evidence (`Pipeline.reattribute`), which stores a new classification version (e.g.
`sovereign_sale`) and queues one update alert.

Rules:
- Every confirmed outflow destination attributed `unknown` and worth at least `value_floor_sat` gets a
  trace (queued from storage, so nothing needs wiring in the tick).
- Hops count transactions on the path, the flow's own tx being hop 1 (watched → fresh → fresh →
  exchange is a 3-hop path). At each hop the spending tx is read (`outspends`, then `get_tx`) and the
  largest output is followed (largest branch; ties → the lowest output index).
- The trace ends when the followed output's address is attributed: exchange/OTC/custodian →
  `attributed` (re-classification); back to the entity itself or to another tracked entity → `ended`
  (no sale shown, nothing changed); when the largest branch falls below the value floor → `ended`;
  after `max_hops` without an attribution → `exhausted`.
- Coins not spent yet, or spent by a tx still in the mempool, are checked again later (backoff from
  `retry_base` doubling up to `retry_cap`): the coins may move tomorrow. After `give_up_after` seconds
  from the start the trace is `gave_up`.
- Progress (hops, path, where the coins are, next check) is stored after every trace, so a restart
  continues where it stopped; a source error keeps the progress made and retries at the next check.
- The first hop also re-checks the destination itself, so an address imported or learned as an
  exchange after the flow was classified attributes it without any request.

Requests per trace check: 2 per hop followed (outspends + tx), 1 when the coins are still unspent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Protocol

from monitor.attribution import attribute_address
from monitor.model import SATS_PER_BTC, Attribution, ChainTx, SourceError
from monitor.registry import Registry
from storage import AsyncStore, Store
from storage.discovery import TraceState, due_traces, queue_traces, save_trace

__all__ = [
    "DEFAULT_MAX_HOPS",
    "DEFAULT_VALUE_FLOOR_SAT",
    "DEFAULT_LIMIT",
    "RETRY_BASE",
    "RETRY_CAP",
    "GIVE_UP_AFTER",
    "TraceSource",
    "TraceOutcome",
    "advance_trace",
    "trace_pending",
]

log = logging.getLogger("treasury_monitor.tracing")

DEFAULT_MAX_HOPS = 5
#: 0.1 BTC: smaller branches are fees, dust and peels not worth following.
DEFAULT_VALUE_FLOOR_SAT = SATS_PER_BTC // 10
#: Traces checked per run.
DEFAULT_LIMIT = 50
RETRY_BASE = 3_600
RETRY_CAP = 86_400
GIVE_UP_AFTER = 180 * 86_400
_COUNTERPARTY = frozenset({"exchange", "otc", "custodian"})


class TraceSource(Protocol):
    """What tracing needs from a chain source (EsploraSource has both)."""

    async def outspends(self, txid: str) -> list[Any]: ...  # per output: .spent, .txid, .block_height, .confirmed

    async def get_tx(self, txid: str) -> ChainTx: ...


@dataclass(frozen=True)
class TraceOutcome:
    """A trace after one check, and the attribution to apply when it reached a counterparty."""

    state: TraceState
    attribution: Attribution | None = None
    requests: int = 0


def _largest(tx: ChainTx):
    outs = [o for o in tx.outputs if o.address is not None and o.value > 0]
    return max(outs, key=lambda o: (o.value, -o.n)) if outs else None


def _retry(t: TraceState, now: int, base: int, cap: int, give_up_after: int, why: str) -> TraceState:
    if now - t.created_at >= give_up_after:
        return replace(t, status="gave_up", result=f"{why}; gave up after {give_up_after // 86400} days")
    delay = min(cap, base * (2 ** min(t.attempts, 20)))
    return replace(t, attempts=t.attempts + 1, next_at=now + delay, result=f"{why}; next check in {delay // 60} min")


def _judge(t: TraceState, registry: Registry) -> tuple[TraceState, Attribution | None] | None:
    """Ends the trace when the coins' current address is attributed; None to keep following."""
    att = attribute_address(t.chain, t.tip_address, t.entity, registry)
    if att.kind in _COUNTERPARTY:
        result = f"reached {att} after {t.hops} hop(s)"
        return replace(t, status="attributed", result=result, attribution=str(att)), Attribution(att.kind, att.name, t.path)
    if att.kind == "self":
        return replace(t, status="ended", result=f"coins returned to {t.entity} after {t.hops} hop(s)"), None
    if att.kind == "entity":
        return replace(t, status="ended", result=f"coins reached tracked entity {att.name} after {t.hops} hop(s)"), None
    return None


async def advance_trace(
    t: TraceState,
    source: TraceSource,
    registry: Registry,
    *,
    now: int,
    max_hops: int = DEFAULT_MAX_HOPS,
    value_floor_sat: int = DEFAULT_VALUE_FLOOR_SAT,
    retry_base: int = RETRY_BASE,
    retry_cap: int = RETRY_CAP,
    give_up_after: int = GIVE_UP_AFTER,
) -> TraceOutcome:
    """Follow one trace as far as the chain allows now (see the module docstring)."""
    requests = 0
    judged = _judge(t, registry)
    if judged is not None:
        return TraceOutcome(judged[0], judged[1], requests)
    while True:
        if t.hops >= max_hops:
            return TraceOutcome(replace(t, status="exhausted", result=f"no counterparty within {max_hops} hops"), None, requests)
        try:
            spends = await source.outspends(t.tip_txid)
            requests += 1
            if t.tip_vout >= len(spends):
                return TraceOutcome(replace(t, status="ended", result=f"{t.tip_txid} has no output {t.tip_vout}"), None, requests)
            s = spends[t.tip_vout]
            if not s.spent:
                return TraceOutcome(_retry(t, now, retry_base, retry_cap, give_up_after, "coins unspent"), None, requests)
            if s.txid is None:  # mempool.space on Core without txospenderindex says only "spent"
                return TraceOutcome(_retry(t, now, retry_base, retry_cap, give_up_after, "spender not named by the source"),
                                    None, requests)
            if s.block_height is None and not s.confirmed:
                return TraceOutcome(_retry(t, now, retry_base, retry_cap, give_up_after, "spend unconfirmed"), None, requests)
            tx = await source.get_tx(s.txid)
            requests += 1
        except SourceError as exc:
            log.warning("trace %s:%d paused at hop %d: %s", t.txid, t.n, t.hops, exc)
            return TraceOutcome(_retry(t, now, retry_base, retry_cap, give_up_after, f"source error: {exc}"), None, requests)
        out = _largest(tx)
        if out is None:
            return TraceOutcome(replace(t, status="ended", result=f"{tx.txid} has no output to follow"), None, requests)
        t = replace(t, hops=t.hops + 1, path=t.path + (tx.txid,), tip_txid=tx.txid, tip_vout=out.n,
                    tip_value=out.value, tip_address=out.address, attempts=0, next_at=now)
        judged = _judge(t, registry)
        if judged is not None:
            return TraceOutcome(judged[0], judged[1], requests)
        if out.value < value_floor_sat:
            return TraceOutcome(replace(t, status="ended", result=f"largest branch {out.value} sat is below the "
                                        f"{value_floor_sat} sat floor"), None, requests)


def _queue(store: Store, *, now: int, value_floor: int) -> int:
    with store.batch():
        return queue_traces(store, now=now, value_floor=value_floor)


def _save(store: Store, t: TraceState, *, now: int) -> None:
    with store.batch():
        save_trace(store, t, now=now)


def _still_unknown(store: Store, t: TraceState) -> str | None:
    """Why a queued trace no longer applies (the tx left the chain, or the destination got attributed), or None."""
    status = store.tx_status(t.chain, t.txid)
    if status != "confirmed":
        return f"the flow's tx is {status or 'unknown'}"
    flow = store.get_flow(t.chain, t.txid, t.entity)
    dest = next((d for d in flow.destinations if d.n == t.n), None) if flow is not None else None
    if dest is None:
        return "the destination is no longer stored"
    if dest.attribution.kind != "unknown":
        return f"already attributed as {dest.attribution}"
    return None


async def trace_pending(
    pipeline: Any,
    source: TraceSource,
    store: AsyncStore,
    registry: Registry,
    *,
    now: int,
    max_hops: int = DEFAULT_MAX_HOPS,
    value_floor_sat: int = DEFAULT_VALUE_FLOOR_SAT,
    limit: int = DEFAULT_LIMIT,
    retry_base: int = RETRY_BASE,
    retry_cap: int = RETRY_CAP,
    give_up_after: int = GIVE_UP_AFTER,
) -> int:
    """Queue new unknown destinations, advance up to `limit` due traces; returns how many were re-attributed.

    `pipeline.reattribute(chain, txid, entity, {n: Attribution})` applies an attribution (a new
    classification version and its update alert, in one transaction).
    """
    await store.run(_queue, now=now, value_floor=value_floor_sat)
    due = await store.run(due_traces, now=now, limit=limit)
    attributed = 0
    for t in due:
        stale = await store.run(_still_unknown, t)
        if stale is not None:
            await store.run(_save, replace(t, status="ended", result=stale), now=now)
            continue
        outcome = await advance_trace(t, source, registry, now=now, max_hops=max_hops, value_floor_sat=value_floor_sat,
                                      retry_base=retry_base, retry_cap=retry_cap, give_up_after=give_up_after)
        if outcome.attribution is not None:
            decision = await pipeline.reattribute(t.chain, t.txid, t.entity, {t.n: outcome.attribution})
            if decision is not None:
                attributed += 1
                log.info("trace %s:%d (%s) %s; verdict now %s", t.txid, t.n, t.entity, outcome.state.result,
                         decision.classification.verdict)
        await store.run(_save, outcome.state, now=now)
    return attributed

