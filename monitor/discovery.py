"""Discovery jobs: co-spend learning against storage, and one pass of every discovery job.

`learn_from_txs` (monitor.cluster, pure) runs before a tick's flows are computed and `commit_learned`
stores its result inside the tick transaction; `learn_and_commit` does both on the store thread;
`learn_from_stored` does the same over txs already stored (resumable position), for the CLI and a
daemon job; `discover_once` runs co-spend learning, pool payout following and hop tracing once.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from monitor.cluster import CHANGE_MIN_VOTES, COINJOIN_MIN_EQUAL, LearnResult, apply_learned, learn_from_txs
from monitor.model import ChainTx
from monitor.pools import DEFAULT_POOL_OWNERS, FollowResult, PoolIndex, follow_pool_payouts
from monitor.registry import Registry
from monitor.tracing import DEFAULT_MAX_HOPS, DEFAULT_VALUE_FLOOR_SAT, trace_pending
from storage import Store
from storage.discovery import get_state, rejected_addresses, save_learned, set_state, transactions_after

__all__ = ["Committed", "commit_learned", "learn_and_commit", "learn_from_stored", "DiscoveryResult", "discover_once"]

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
    proposed = tuple(item for item, outcome in save_learned(store, result.candidates, now=now, status="candidate")
                     if outcome == "added")
    return Committed(result, added, proposed)


def learn_and_commit(store: Store, txs: Iterable[ChainTx], registry: Registry, *, now: int,
                     min_equal: int = COINJOIN_MIN_EQUAL, change_min_votes: int = CHANGE_MIN_VOTES) -> Committed:
    """Learn from `txs` (co-spend, flags, change; rejected addresses skipped) and store it (store thread)."""
    result = learn_from_txs(txs, registry, rejected=rejected_addresses(store), min_equal=min_equal,
                            change_min_votes=change_min_votes)
    return commit_learned(store, result, now=now)


def learn_from_stored(store: Store, registry: Registry, *, now: int, limit: int = 2_000,
                      min_equal: int = COINJOIN_MIN_EQUAL, change_min_votes: int = CHANGE_MIN_VOTES) -> Committed:
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
    registry: Registry | None = field(default=None, repr=False)


async def discover_once(
    *,
    store: Any,
    registry: Registry,
    pipeline: Any,
    source: Any,
    now: int,
    cospend: bool = True,
    pools: bool = True,
    trace: bool = True,
    pool_index: PoolIndex | None = None,
    owners: Mapping[str, str] = DEFAULT_POOL_OWNERS,
    min_payouts: int = 2,
    auto_accept_payouts: int | None = None,
    max_hops: int = DEFAULT_MAX_HOPS,
    value_floor_sat: int = DEFAULT_VALUE_FLOOR_SAT,
) -> DiscoveryResult:
    """Co-spend learning over stored txs, pool payout following, hop tracing: once, in that order.

    `store` is an AsyncStore; `source` an Esplora source. The returned registry includes what co-spend
    learned (the caller decides whether to rebuild its sources with it).
    """
    c = None
    if cospend:
        c = await store.run(learn_from_stored, registry, now=now)
        registry = apply_learned(registry, c.added)
        if pipeline is not None:
            pipeline.registry = registry
    f = None
    if pools and source is not None:
        f = await follow_pool_payouts(store, source, registry, now=now, pools=pool_index, owners=owners,
                                      min_payouts=min_payouts, auto_accept_payouts=auto_accept_payouts)
    n = None
    if trace and source is not None and pipeline is not None:
        n = await trace_pending(pipeline, source, store, registry, now=now, max_hops=max_hops,
                                value_floor_sat=value_floor_sat)
    return DiscoveryResult(c, f, n, registry)
