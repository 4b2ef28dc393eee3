"""The pipeline: one tick end to end, shared by `poll`, `backfill`, the daemon and the demo.

A tick reads a source's stored cursors, asks the source for a Batch, turns its transactions into entity
flows, attributes their destinations, and commits everything — transactions, flows, balance snapshots
and the advanced cursors — in ONE storage transaction. A crash before the commit repeats the tick (all
writes are idempotent upserts keyed by chain, txid and entity); after it, nothing is repeated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.attribution import attribute
from monitor.flows import entity_flows
from monitor.model import Batch, Clock, EntityFlow
from monitor.registry import Registry
from storage import AsyncStore, Store
from watchers import Source

__all__ = ["TickResult", "Pipeline", "commit_batch"]

log = logging.getLogger("treasury_monitor.pipeline")


@dataclass(frozen=True)
class TickResult:
    """What one tick did, for logs, metrics and the CLI."""

    source: str
    txs: int = 0
    new_txs: int = 0
    flows: int = 0
    new_flows: int = 0
    outflows: int = 0
    failed: tuple[str, ...] = ()
    requests: int = 0
    tip_height: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def commit_batch(store: Store, batch: Batch, flows: list[EntityFlow], *, now: int) -> TickResult:
    """Write a batch and its flows in one transaction (runs on the store thread)."""
    new_txs = new_flows = 0
    with store.batch():
        for tx in batch.txs:
            new_txs += store.save_tx(tx, now=now)
        for f in flows:
            new_flows += store.save_flow(f, now=now)
        store.save_snapshots(batch.snapshots)
        store.set_cursors(batch.cursors, now=now)
    return TickResult(
        source=batch.source,
        txs=len(batch.txs),
        new_txs=new_txs,
        flows=len(flows),
        new_flows=new_flows,
        outflows=sum(1 for f in flows if f.direction == "out"),
        failed=batch.failed,
        requests=batch.requests,
        tip_height=batch.tip_height,
    )


class Pipeline:
    """Flows → attribution → storage for the batches of any source."""

    def __init__(self, registry: Registry, store: AsyncStore, clock: Clock):
        self.registry = registry
        self.store = store
        self.clock = clock

    def flows_of(self, batch: Batch) -> list[EntityFlow]:
        """Attributed entity flows of every tx in a batch (pure)."""
        return [attribute(f, self.registry) for tx in batch.txs for f in entity_flows(tx, self.registry)]

    async def process(self, batch: Batch) -> TickResult:
        """Commit one batch with its flows; returns what was stored."""
        flows = self.flows_of(batch)
        return await self.store.run(commit_batch, batch, flows, now=int(self.clock.time()))

    async def tick(self, source: Source, *, progress: Callable[..., None] | None = None) -> TickResult:
        """Poll one source from its stored cursors and process what it returns."""
        cursors = await self.store.run(Store.cursors, source.name)
        kwargs = {"progress": progress} if progress is not None else {}
        batch = await source.poll(cursors, **kwargs)
        result = await self.process(batch)
        if result.failed:
            log.warning("source=%s tick stored %d txs; %d keys failed and will be retried: %s",
                        source.name, result.txs, len(result.failed), ", ".join(result.failed[:5]))
        return result
