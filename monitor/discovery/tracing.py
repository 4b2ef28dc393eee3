"""Multi-branch hop tracing: follow an outflow's unknown destination forward, every branch worth following,
until its parts reach exchanges, OTC desks, custodians, the entity itself, or stop being worth following.

Method. Outputs are followed forward through the spending transactions ("taint analysis" in the
literature) with the **haircut** rule: a spending tx passes the traced value it received on to each of
its outputs pro rata to the output's value over the tx's total input value, so coins mixed with
someone else's inputs carry only their own share forward (Möser, Böhme & Breuker 2014, "Towards Risk
Scoring of Bitcoin Transactions", compare the "poison" rule, which would taint every output in full,
and the "haircut" rule used here). Peeling chains — a large remainder hopping on to a fresh address
while small amounts peel off to exchanges at each hop — are followed as Meiklejohn et al. 2013 ("A
Fistful of Bitcoins", IMC '13, §5) follow them: every hop, every peel is checked against the known
labels, and the remainder is followed on; a peel that lands on an attributed address counts however
small it is (checking a label costs no request), an unattributed branch is followed only above the
value floor.

Bhutan's sales are the reference case (main wallet → fresh intermediate address → (another fresh
address →) QCP / Binance / Kraken / Cobo), and the split hop: 6,500 BTC to a fresh address whose next
tx pays part to two exchanges, part to unknown addresses and the largest part on to another fresh
address.

Rules:
- Every confirmed outflow destination attributed `unknown` and worth at least the value floor gets a
  trace (queued from storage, so nothing needs wiring in the tick). Its traced value is the output's value.
- Hops count transactions on a path, the flow's own tx being hop 1 (watched → fresh → fresh → exchange is
  a 3-hop path). At each hop the spending tx is read (`outspends`, then `get_tx`; both cached within a
  check, so sibling branches spent by one tx cost two requests in all).
- A branch ends when its address is attributed: exchange/OTC/custodian, back to the entity (`self`) or
  another tracked entity (`entity:<name>`). An unattributed branch is followed when its traced value is at
  least the floor — `max(value_floor_sat, floor_share × traced value)` — and fewer than `max_branches`
  branches are being followed; otherwise its value is recorded as `below_floor` or `fan_out`. After
  `max_hops` it is recorded as `max_hops`. Fees on the way are not a share.
- Coins not spent yet, or spent by a tx still in the mempool, `wait`: checked again later (backoff from
  `retry_base` doubling up to `retry_cap`). After `give_up_after` seconds from the start the waiting
  branches are recorded as `gave_up` and the trace ends.
- Everything (branches followed, shares found) is stored after every check, so a restart continues where
  it stopped; a source error keeps the progress made and retries at the next check.
- The flow is re-classified ONCE per trace (one `update` alert): when the share that reached exchanges
  and OTC desks is at least `significant_share` of the traced value, or when more than half reached
  counterparties (e.g. a custodian). The destination then carries the whole breakdown
  (`Destination.shares`) and the main counterparty's attribution and path; the classifier reads the
  breakdown ("1,000 of 6,500 BTC (15%) reached exchange:Kraken and exchange:Coinbase within 2 hops;
  4,500 BTC wait at an unattributed address"). The trace keeps following the rest afterwards (shown by
  `entities show`), without further alerts.

Requests per trace check: 2 per spending tx read, 1 per branch whose coins are still unspent.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, replace
from typing import Any, Protocol

from monitor.core.attribution import attribute_address
from monitor.core.classify import trace_breakdown
from monitor.core.registry import Registry
from monitor.model import SATS_PER_BTC, Attribution, ChainTx, SourceError, TraceShare
from storage import AsyncStore, Store
from storage.discovery import TraceBranch, TraceState, due_traces, queue_traces, save_trace

__all__ = [
    "DEFAULT_MAX_HOPS",
    "DEFAULT_VALUE_FLOOR_SAT",
    "DEFAULT_FLOOR_SHARE",
    "DEFAULT_MAX_BRANCHES",
    "DEFAULT_SIGNIFICANT_SHARE",
    "DEFAULT_LIMIT",
    "RETRY_BASE",
    "RETRY_CAP",
    "GIVE_UP_AFTER",
    "TraceLimits",
    "TraceSource",
    "TraceOutcome",
    "advance_trace",
    "report_of",
    "trace_pending",
]

log = logging.getLogger("treasury_monitor.tracing")

DEFAULT_MAX_HOPS = 20
#: 0.1 BTC: smaller unattributed branches are fees, dust and peels not worth following.
DEFAULT_VALUE_FLOOR_SAT = SATS_PER_BTC // 10
#: ... and so are branches below 1% of the traced value (a 6,500 BTC trace follows branches from 65 BTC).
DEFAULT_FLOOR_SHARE = 0.01
DEFAULT_MAX_BRANCHES = 16
#: Share of the traced value that, once it reached exchanges or OTC desks, re-classifies the flow.
DEFAULT_SIGNIFICANT_SHARE = 0.10
#: Traces checked per run.
DEFAULT_LIMIT = 50
RETRY_BASE = 3_600
RETRY_CAP = 86_400
GIVE_UP_AFTER = 180 * 86_400
_COUNTERPARTY = frozenset({"exchange", "otc", "custodian"})
_SALE = frozenset({"exchange", "otc"})


@dataclass(frozen=True)
class TraceLimits:
    """The bounds of tracing (config `[discovery]` trace_* keys)."""

    max_hops: int = DEFAULT_MAX_HOPS
    value_floor_sat: int = DEFAULT_VALUE_FLOOR_SAT
    floor_share: float = DEFAULT_FLOOR_SHARE
    max_branches: int = DEFAULT_MAX_BRANCHES
    significant_share: float = DEFAULT_SIGNIFICANT_SHARE
    retry_base: int = RETRY_BASE
    retry_cap: int = RETRY_CAP
    give_up_after: int = GIVE_UP_AFTER


class TraceSource(Protocol):
    """What tracing needs from a chain source (EsploraSource has both)."""

    async def outspends(self, txid: str) -> list[Any]: ...  # per output: .spent, .txid, .block_height, .confirmed

    async def get_tx(self, txid: str) -> ChainTx: ...


@dataclass(frozen=True)
class TraceOutcome:
    """A trace after one check, and the attribution (with the breakdown) to apply when it is reported."""

    state: TraceState
    attribution: Attribution | None = None
    requests: int = 0
    shares: tuple[TraceShare, ...] = ()


def _kind(attribution: str) -> str:
    return attribution.partition(":")[0]


def _share(att: Attribution | str, b: TraceBranch, note: str = "") -> TraceShare:
    return TraceShare(str(att), b.value, b.hops, b.path, note)


def report_of(
    t: TraceState, significant_share: float = DEFAULT_SIGNIFICANT_SHARE
) -> tuple[Attribution, tuple[TraceShare, ...]] | None:
    """The attribution and breakdown to re-classify the flow with, when the trace found enough; else None.

    Enough: exchanges + OTC reached at least `significant_share` of the traced value, or counterparties
    (custodians included) more than half of it. The main attribution is the largest such counterparty.
    """
    by: dict[str, int] = {}
    paths: dict[str, tuple[str, ...]] = {}
    best: dict[str, int] = {}
    for s in t.shares:
        if _kind(s.attribution) in _COUNTERPARTY:
            by[s.attribution] = by.get(s.attribution, 0) + s.value
            if s.value > best.get(s.attribution, -1):
                best[s.attribution], paths[s.attribution] = s.value, s.path
    sale = sum(v for a, v in by.items() if _kind(a) in _SALE)
    total = max(t.value, 1)
    if sale and sale >= significant_share * total:
        main = max((a for a in by if _kind(a) in _SALE), key=lambda a: (by[a], a))
    elif by and 2 * sum(by.values()) > total:
        main = max(by, key=lambda a: (by[a], a))
    else:
        return None
    att = Attribution.parse(main)
    waiting = tuple(TraceShare("unknown", b.value, b.hops, b.path, "waiting") for b in t.branches)
    return Attribution(att.kind, att.name, paths[main]), t.shares + waiting


def _status(shares: list[TraceShare]) -> str:
    kinds = {_kind(s.attribution) for s in shares}
    if kinds & _COUNTERPARTY:
        return "attributed"
    if any(s.note == "max_hops" for s in shares) and not kinds - {"unknown"}:
        return "exhausted"
    return "ended"


def _summary(t: TraceState, shares: list[TraceShare], waiting: list[TraceBranch], why: str, floor: int) -> TraceState:
    """The state's tip/path/hops fields from its largest branch (or largest share) and its result sentence."""
    all_waiting = [TraceShare("unknown", b.value, b.hops, b.path, "waiting") for b in waiting]
    result = trace_breakdown(t.value, tuple(shares) + tuple(all_waiting), entity=t.entity, floor_sat=floor)
    if why:
        result = f"{result}; {why}"
    hops = max([s.hops for s in shares] + [b.hops for b in waiting] + [t.hops])
    if waiting:
        tip = max(waiting, key=lambda b: (b.value, -b.hops))
        return replace(
            t,
            hops=hops,
            path=tip.path,
            tip_txid=tip.txid,
            tip_vout=tip.vout,
            tip_value=tip.value,
            tip_address=tip.address,
            result=result,
            branches=tuple(waiting),
            shares=tuple(shares),
        )
    counter = [s for s in shares if _kind(s.attribution) in _COUNTERPARTY]
    main = max(counter or shares or [TraceShare("unknown", t.value, t.hops, t.path)], key=lambda s: (s.value, -s.hops))
    return replace(
        t,
        hops=hops,
        path=main.path,
        result=result,
        branches=(),
        shares=tuple(shares),
        attribution=main.attribution if counter else t.attribution,
    )


async def advance_trace(
    t: TraceState,
    source: TraceSource,
    registry: Registry,
    *,
    now: int,
    max_hops: int = DEFAULT_MAX_HOPS,
    value_floor_sat: int = DEFAULT_VALUE_FLOOR_SAT,
    floor_share: float = DEFAULT_FLOOR_SHARE,
    max_branches: int = DEFAULT_MAX_BRANCHES,
    significant_share: float = DEFAULT_SIGNIFICANT_SHARE,
    retry_base: int = RETRY_BASE,
    retry_cap: int = RETRY_CAP,
    give_up_after: int = GIVE_UP_AFTER,
) -> TraceOutcome:
    """Follow every branch of one trace as far as the chain allows now (see the module docstring)."""
    floor = max(value_floor_sat, int(t.value * floor_share))
    if not t.branches and not t.shares and t.status == "pending":  # a fresh state: its tip is its one branch
        t = replace(t, branches=(TraceBranch(t.tip_txid, t.tip_vout, t.tip_value, t.tip_address, t.hops, t.path),))
    requests = 0
    spends_of: dict[str, list[Any]] = {}
    txs: dict[str, ChainTx] = {}
    shares = list(t.shares)
    queue = deque(t.branches)
    waiting: list[TraceBranch] = []
    whys: list[str] = []
    error: str | None = None
    progressed = False

    def judge(b: TraceBranch) -> bool:
        """Record the branch as a share when its address is attributed; True when it was."""
        att = attribute_address(t.chain, b.address, t.entity, registry)
        if att.kind == "unknown":
            return False
        shares.append(_share(att, b))
        return True

    while queue:
        b = queue.popleft()
        if judge(b):
            continue
        if b.hops >= max_hops:
            shares.append(_share("unknown", b, "max_hops"))
            continue
        if error is not None:
            waiting.append(b)
            continue
        try:
            if b.txid not in spends_of:
                spends_of[b.txid] = await source.outspends(b.txid)
                requests += 1
            spends = spends_of[b.txid]
            if b.vout >= len(spends):
                shares.append(_share("unknown", b, "no_output"))
                continue
            s = spends[b.vout]
            # a spender not named (mempool.space on Core without txospenderindex says only "spent") or
            # not confirmed yet: wait, the next check may know more
            why = (
                "coins unspent"
                if not s.spent
                else "spender not named by the source"
                if s.txid is None
                else "spend unconfirmed"
                if s.block_height is None and not s.confirmed
                else ""
            )
            if why:
                waiting.append(b)
                whys.append(why)
                continue
            if s.txid not in txs:
                txs[s.txid] = await source.get_tx(s.txid)
                requests += 1
            tx = txs[s.txid]
        except SourceError as exc:
            log.warning("trace %s:%d paused at hop %d: %s", t.txid, t.n, b.hops, exc)
            error = f"source error: {exc}"
            waiting.append(b)
            continue
        progressed = True
        total_in = tx.total_in or tx.total_out
        children = [
            TraceBranch(tx.txid, o.n, b.value * o.value // total_in, o.address, b.hops + 1, b.path + (tx.txid,))
            for o in tx.outputs
            if o.address is not None and o.value > 0 and total_in > 0
        ]
        for c in sorted((c for c in children if c.value > 0), key=lambda c: (-c.value, c.vout)):
            if judge(c):
                continue
            if c.value < floor:
                shares.append(_share("unknown", c, "below_floor"))
            elif len(queue) + len(waiting) >= max_branches:
                shares.append(_share("unknown", c, "fan_out"))
            else:
                queue.append(c)

    def outcome(state: TraceState) -> TraceOutcome:
        report = None if t.reported else report_of(state, significant_share)
        if report is None:
            return TraceOutcome(state, None, requests)
        return TraceOutcome(replace(state, attribution=str(report[0])), report[0], requests, report[1])

    if not waiting:
        state = _summary(replace(t, attempts=0, next_at=now), shares, [], "", floor)
        return outcome(replace(state, status=_status(shares)))
    why = error or ", ".join(dict.fromkeys(whys))
    if now - t.created_at >= give_up_after:
        shares += [_share("unknown", b, "gave_up") for b in waiting]
        state = _summary(t, shares, [], f"gave up after {give_up_after // 86400} days", floor)
        return outcome(replace(state, status="gave_up"))
    attempts = 0 if progressed else t.attempts
    delay = min(retry_cap, retry_base * (2 ** min(attempts, 20)))
    state = _summary(
        replace(t, attempts=attempts + 1, next_at=now + delay), shares, waiting, f"{why}; next check in {delay // 60} min", floor
    )
    return outcome(state)


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
    if dest.attribution.kind != "unknown" and not t.reported:
        return f"already attributed as {dest.attribution}"
    return None


async def trace_pending(
    pipeline: Any,
    source: TraceSource,
    store: AsyncStore,
    registry: Registry,
    *,
    now: int,
    limits: TraceLimits = TraceLimits(),
    limit: int = DEFAULT_LIMIT,
) -> int:
    """Queue new unknown destinations, advance up to `limit` due traces; returns how many flows were re-attributed.

    `pipeline.reattribute(chain, txid, entity, {n: Attribution}, shares={n: TraceShares})` applies an
    attribution (a new classification version and its update alert, in one transaction).
    """
    await store.run(_queue, now=now, value_floor=limits.value_floor_sat)
    due = await store.run(due_traces, now=now, limit=limit)
    attributed = 0
    for t in due:
        stale = await store.run(_still_unknown, t)
        if stale is not None:
            await store.run(_save, replace(t, status="ended", result=stale, branches=()), now=now)
            continue
        outcome = await advance_trace(
            t,
            source,
            registry,
            now=now,
            max_hops=limits.max_hops,
            value_floor_sat=limits.value_floor_sat,
            floor_share=limits.floor_share,
            max_branches=limits.max_branches,
            significant_share=limits.significant_share,
            retry_base=limits.retry_base,
            retry_cap=limits.retry_cap,
            give_up_after=limits.give_up_after,
        )
        state = outcome.state
        if outcome.attribution is not None:
            att = outcome.attribution
            decision = await pipeline.reattribute(t.chain, t.txid, t.entity, {t.n: att}, shares={t.n: outcome.shares})
            state = replace(state, reported=True)
            if decision is not None:
                attributed += 1
                log.info(
                    "trace %s:%d (%s) %s; verdict now %s", t.txid, t.n, t.entity, state.result, decision.classification.verdict
                )
        await store.run(_save, state, now=now)
    return attributed
