"""Watchers: fetch chain and price data and normalise it into `monitor.model` dataclasses.

Every chain source implements the `Source` protocol below. `poll` gets the cursors the source
returned last time (key → JSON state, as stored with the data) and returns a `Batch`: new or changed
`ChainTx`, the new `Cursor` per key read successfully, balance snapshots, the keys that failed (their
cursors are absent, so they are read again next time) and txids that left the chain and the mempool.
A source never lets one key's failure escape `poll`; errors it raises are `monitor.model.SourceError`
(a single-key source such as `bitcoind` raises them; the daemon logs and retries at the next interval).

Modules: `http` (the shared HTTP client: timeouts, retries, rate limit, failover; and every source's
one `RetryPolicy`/`retry` and `FailureLog`), `validate`
(untrusted JSON → typed values or `MalformedError`), `esplora` (Esplora REST, address mode),
`esplora_blocks` (Esplora block mode: each block read once as raw bytes), `rawblock` (the fast raw
block/tx parser and matcher), `bitcoind/` (Bitcoin Core: `rpc`, `parse`, `source`), `evm` (web3: ETH and ERC-20),
`push` (mempool.space websocket and ZMQ wake-ups), `prices` (BTC/ETH prices), `addresses` (Bitcoin
address codec). Import them directly; this package imports nothing on load.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from monitor.model import Batch

__all__ = ["Source", "Progress"]

#: `progress(key, fetched, total)`: called while a source pages through a key's history (backfill).
Progress = Callable[[str, int, int], None]


@runtime_checkable
class Source(Protocol):
    """A chain source polled with its stored cursors; returns what is new since them."""

    name: str
    chain: str

    async def poll(self, cursors: Mapping[str, str], *, progress: Progress | None = None) -> Batch:
        """New txs and advanced cursors since `cursors` (key → state JSON this source returned before)."""
        ...
