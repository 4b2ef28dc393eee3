"""Discovery jobs: co-spend learning against storage, and one pass of every discovery job.

`learn_from_txs` (monitor.core.cluster, pure) runs before a tick's flows are computed and `commit_learned`
stores its result inside the tick transaction; `learn_and_commit` does both on the store thread;
`learn_from_stored` does the same over txs already stored (resumable position), for the CLI and a
daemon job; `discover_once` runs co-spend learning, pool payout following and hop tracing once.

One discovery path: `entities discover` and the daemon's discovery job both call `discover_once` with
the `[discovery]` config and `discovery_source(sources)`, in every source mode. Following coins needs
`outspends` and transactions by id: an Esplora source answers both in address mode, and in block mode
through an address-less client on the same endpoint. Bitcoin Core has no spent-output index and EVM
sources no UTXOs: with only those, `discovery_source` is None and the caller says so (the CLI exits
non-zero; the daemon logs it and schedules no discovery job).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from monitor.core.cluster import CHANGE_MIN_VOTES, COINJOIN_MIN_EQUAL, LearnResult, apply_learned, learn_from_txs
from monitor.core.registry import Registry
from monitor.discovery.addressbook import settle_provisional
from monitor.discovery.pools import FollowResult, PoolIndex, follow_pool_payouts
from monitor.discovery.tracing import TraceLimits, trace_pending
from monitor.model import SATS_PER_BTC, ChainTx
from storage import Store
from storage.discovery import get_state, rejected_addresses, save_learned, set_state, transactions_after

__all__ = [
    "Committed",
    "commit_learned",
    "learn_and_commit",
    "learn_from_stored",
    "DiscoveryResult",
    "discover_once",
    "discovery_source",
    "trace_limits",
    "NO_DISCOVERY_SOURCE",
]

#: What the CLI says (and the daemon logs) when no configured source can follow coins.
NO_DISCOVERY_SOURCE = (
    "no configured source can follow coins: pool following and hop tracing need an Esplora "
    "source (address or block mode); Bitcoin Core has no spent-output index and EVM sources "
    "have no UTXOs (use --no-pools --no-trace for co-spend learning alone)"
)

log = logging.getLogger("treasury_monitor.discovery")

_COSPEND_KEY = "cospend_rowid"
#: A mempool tx older than this no longer holds back the co-spend scan (it was most likely dropped).
_MEMPOOL_WAIT = 14 * 86400


@dataclass(frozen=True)
class Committed:
    """What `learn_and_commit` stored: the learning result and which addresses were really added."""

    result: LearnResult
    added: tuple[Any, ...] = ()  # Learned items stored as active
    proposed: tuple[Any, ...] = ()  # change candidates stored as candidates


def commit_learned(store: Store, result: LearnResult, *, now: int) -> Committed:
    """Store what `learn_from_txs` found, in the caller's transaction (store thread).

    Rejected and already-stored addresses are skipped; learned addresses are stored active with an
    evidence row, change candidates as candidates, flags in `discovery_flags`.
    """
    added = tuple(item for item, outcome in save_learned(store, result.learned, result.flags, now=now) if outcome == "added")
    proposed = tuple(
        item for item, outcome in save_learned(store, result.candidates, now=now, status="candidate") if outcome == "added"
    )
    return Committed(result, added, proposed)


def learn_and_commit(
    store: Store,
    txs: Iterable[ChainTx],
    registry: Registry,
    *,
    now: int,
    min_equal: int = COINJOIN_MIN_EQUAL,
    change_min_votes: int = CHANGE_MIN_VOTES,
) -> Committed:
    """Learn from `txs` (co-spend, flags, change; rejected addresses skipped) and store it (store thread)."""
    result = learn_from_txs(
        txs, registry, rejected=rejected_addresses(store), min_equal=min_equal, change_min_votes=change_min_votes
    )
    return commit_learned(store, result, now=now)


def learn_from_stored(
    store: Store,
    registry: Registry,
    *,
    now: int,
    limit: int = 2_000,
    min_equal: int = COINJOIN_MIN_EQUAL,
    change_min_votes: int = CHANGE_MIN_VOTES,
) -> Committed:
    """Co-spend learning over stored txs not scanned yet (position kept in `discovery_state`).

    The scan waits at a mempool tx (it may confirm) unless that tx is older than two weeks.
    """
    with store.batch():
        pos = int(get_state(store, _COSPEND_KEY, 0))
        rows = transactions_after(store, pos, limit=limit)
        txs: list[ChainTx] = []
        new_pos = pos
        for rowid, status, tx in rows:
            if status == "mempool" and (tx.block_time is None or now - tx.block_time < _MEMPOOL_WAIT):
                break
            if status == "confirmed":
                txs.append(tx)
            new_pos = rowid
        committed = learn_and_commit(store, txs, registry, now=now, min_equal=min_equal, change_min_votes=change_min_votes)
        set_state(store, _COSPEND_KEY, new_pos, now=now)
    return committed


@dataclass(frozen=True)
class DiscoveryResult:
    """One pass of the discovery jobs."""

    cospend: Committed | None = None
    pools: FollowResult | None = None
    traced: int | None = None
    settled: tuple[str, ...] = ()  # provisional addresses confirmed because they sat unspent
    registry: Registry | None = field(default=None, repr=False)


def discovery_source(sources: Iterable[Any], clock: Any) -> Any:
    """The first source that can follow coins (outspends and txs by id), or None.

    An Esplora block-mode source lends its HTTP client (same endpoints, limits and failover) to an
    address-less Esplora client; a Core or EVM source cannot answer.
    """
    from watchers.esplora import EsploraSource
    from watchers.esplora_blocks import EsploraBlockSource

    for s in sources:
        if getattr(s, "chain", "bitcoin") != "bitcoin":
            continue
        if hasattr(s, "outspends") and hasattr(s, "get_tx"):
            return s
        if isinstance(s, EsploraBlockSource):
            return EsploraSource(s.name, s.http, (), clock=clock, chain=s.chain)
    return None


def trace_limits(config: Any) -> TraceLimits:
    """Tracing bounds from a `[discovery]` config (DiscoveryConfig)."""
    return TraceLimits(
        max_hops=config.trace_max_hops,
        value_floor_sat=int(config.trace_value_floor_btc * SATS_PER_BTC),
        floor_share=config.trace_floor_share,
        max_branches=config.trace_max_branches,
        significant_share=config.trace_significant_share,
        give_up_after=int(config.trace_max_age_days * 86400),
    )


async def discover_once(
    *,
    store: Any,
    registry: Registry,
    pipeline: Any,
    source: Any,
    now: int,
    config: Any = None,
    cospend: bool = True,
    pools: bool = True,
    trace: bool = True,
    pool_index: PoolIndex | None = None,
    auto_accept_payouts: int | None = None,
) -> DiscoveryResult:
    """Co-spend learning over stored txs, pool payout following, hop tracing: once, in that order.

    `store` is an AsyncStore; `source` what `discovery_source` chose; `config` the `[discovery]` config
    (DiscoveryConfig; defaults when None): pool owners, payout thresholds, tracing bounds. The returned
    registry includes what co-spend learned (the caller decides whether to rebuild its sources with it).
    """
    if config is None:
        from monitor.config import DiscoveryConfig

        config = DiscoveryConfig()
    owners: Mapping[str, str] = dict(config.pool_owners)
    if auto_accept_payouts is None:
        auto_accept_payouts = config.pool_auto_accept_payouts
    c = None
    if cospend:
        c = await store.run(learn_from_stored, registry, now=now)
        registry = apply_learned(registry, c.added)
        if pipeline is not None:
            pipeline.registry = registry
    f = None
    if pools and source is not None:
        f = await follow_pool_payouts(
            store,
            source,
            registry,
            now=now,
            pools=pool_index,
            owners=owners,
            min_payouts=config.pool_min_payouts,
            auto_accept_payouts=auto_accept_payouts,
        )
    settled: list[str] = []
    if config.provisional:
        settled = await store.run(settle_provisional, now=now, settle_days=config.provisional_settle_days)
        for a in settled:
            rec = registry.address_record("bitcoin", a)
            if rec is not None:
                registry = registry.replacing("bitcoin", a, replace(rec, learned_by="sweep"))
        if settled and pipeline is not None:
            pipeline.registry = registry
    n = None
    if trace and source is not None and pipeline is not None:
        n = await trace_pending(pipeline, source, store, registry, now=now, limits=trace_limits(config))
    return DiscoveryResult(c, f, n, tuple(settled), registry)
