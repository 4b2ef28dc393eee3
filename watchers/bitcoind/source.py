"""The Bitcoin Core source: follows the tip over JSON-RPC, reads each block once, matches it against watched addresses.

Requirements on the node (see docs/bitcoind.md): Bitcoin Core 23.0 or newer, because `getblock <hash> 3`
(added in 23.0) puts the spent output (`prevout`: value, scriptPubKey, address) on every input; the blocks
read must not be pruned away (prevouts come from the block's undo data). `txindex` is not needed.

One poll (key `tip`; all RPCs counted in `Batch.requests`, one HTTP request per batch):

1. Once per process (and again after a failure): `getnetworkinfo` — a Core older than 23.0 is refused
   with a clear message (`MIN_CORE_VERSION`).
2. One batch `[getrawmempool, getblockchaininfo]`, in that order, so every tx missing from the mempool
   snapshot but confirmed is in a block at or below the tip read next. `initialblockdownload: true` →
   `TransientError("... initial block download (NN% verified); waiting")`.
3. Blocks: from the cursor's height + 1 to the tip (at most `max_blocks` per poll; `Batch.tip_height`
   shows what is left, and `Batch.unfinished` is `("tip",)` while behind, so `backfill` polls again at
   once), `getblockhash` + `getblock <hash> 3` each. Every input's prevout address and every
   output address is looked up in the watched set (a `set`, O(1) per lookup, so the cost does not grow with
   the number of addresses); matching txs become full ChainTx (inputs with prevout address and value,
   fee = in − out, coinbase flag).
4. Reorgs: when a new block's `previousblockhash` is not the stored tip (or the tip is at or below the
   stored height with another hash), one batch of `getblockhash` over the stored last 100 heights finds
   the fork point; the stored blocks above it are orphaned and the new branch is read. Watched txs of
   orphaned blocks that the new branch does not confirm again are returned unconfirmed when they are back
   in the mempool, else listed in `Batch.gone` (decided once the new branch has been read to the tip).
5. Mempool: txids in the snapshot not seen before (neither a known watched tx nor one already found
   irrelevant, nor in a block read this poll), at most `max_mempool_txs` per poll, are fetched in batches
   of `getrawtransaction <txid> 2` (verbosity 2 on Core 25+, `true` before; Core gives no prevouts or fee
   for mempool txs at any verbosity, so they are resolved here): each input's spent output comes from the
   parent when the parent is itself in the mempool (`getrawtransaction <parent> 1`), else from the UTXO
   set with `gettxout <txid> <n> false` (false: ignore mempool spends, so an output our tx spends is still
   found); if neither answers (a race with a new block) `getrawtransaction <parent> 1` is tried (works with
   txindex), and a tx still unresolved is retried next poll. The fee is in − out of those exact values, so
   `getmempoolentry` is not needed; `block_time` stays None for mempool txs (Core's first-seen time is
   not fetched, as Esplora gives none either).
6. Gone: a watched mempool tx that left the mempool without being confirmed in a block read this poll is
   looked up with `getrawtransaction <txid> 1`: error -5 ("No such mempool ...") → `Batch.gone`
   (replaced, evicted); found → still there (a race) or confirmed (txindex) → not gone. Decided only when
   the blocks were read up to the tip, so a tx confirmed in a block not read yet is never called gone.

Cursor state (JSON, key `tip`), version 1:

    {"v": 1, "height": 880123, "hash": "<hash at height>",      # last block read (hash null: none yet)
     "blocks": [[880024, "<hash>", ["<watched txid>", ...]], ...],  # last 100 blocks read, oldest first
     "mempool": ["<txid>", ...],   # watched txs seen unconfirmed and not confirmed since
     "orphans": ["<txid>", ...]}   # watched txs of orphaned blocks, resolved when the tip is reached

The mempool txids found *irrelevant* are kept in memory only (`set`, pruned to the current mempool each
poll): storing a 100,000-tx mempool in the cursor would write megabytes per tick. After a restart the
mempool is examined once more (capped per poll). A failed store commit cannot lose a watched tx, because
only irrelevant ones are remembered outside the cursor.

Without a cursor the source starts at the current tip (the tip block and the mempool are read; history
before it is address mode's job), or at `start_height` when given.

Errors: `poll` raises (it does not return `Batch.failed`): this source has one key, so there is nothing
to isolate, and a raised `SourceError` carries the clear message to the caller, which logs it and tries
again at the next interval (the stored cursor is untouched, so nothing is skipped). The first failure and
the recovery are logged here too. The RPC errors are `watchers.bitcoind.rpc`'s; here: Core older than
23.0, or a node that answers `getblock <hash> 3` with an error or without prevouts and does not say it is
Core 23+ → "Bitcoin Core 23.0 or newer is needed (getblock verbosity 3 returns prevouts); ..."; missing
prevout on Core 23+ (pruned block) and malformed amounts → `MalformedError` naming the field.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from monitor.model import Batch, ChainTx, Clock, Cursor, MalformedError, SourceError, TransientError
from monitor.model import normalise_bitcoin_address as _norm
from watchers.bitcoind.parse import (
    MAX_U32,
    Header,
    address_of,
    format_core_version,
    parse_core_tx,
    parse_header,
    show,
)
from watchers.bitcoind.rpc import RPC_INVALID_ADDRESS_OR_KEY, BitcoindRpc, rpc_code, source_error
from watchers.http import FailureLog, RequestTally
from watchers.validate import assert_bool, assert_dict, assert_hex, assert_int, assert_list, assert_number, require

__all__ = [
    "BitcoindSource",
    "TIP_KEY",
    "MIN_CORE_VERSION",
    "CURSOR_VERSION",
    "KEEP_BLOCKS",
    "DEFAULT_MAX_BLOCKS",
    "DEFAULT_MAX_MEMPOOL_TXS",
]

TIP_KEY = "tip"
#: `getblock <hash> 3` (prevouts on every input) exists since Bitcoin Core 23.0.
MIN_CORE_VERSION = 230000
#: `getrawtransaction <txid> 2` exists since 25.0 (before it, verbosity means `true`).
_RAWTX_VERBOSITY2_VERSION = 250000
CURSOR_VERSION = 1
#: Block hashes remembered for reorg detection.
KEEP_BLOCKS = 100
DEFAULT_MAX_BLOCKS = 20
DEFAULT_MAX_MEMPOOL_TXS = 10_000
#: Calls per JSON-RPC batch request.
RPC_BATCH = 500
_NEED_CORE = "Bitcoin Core 23.0 or newer is needed (getblock verbosity 3 returns prevouts)"
#: Core's `getblockchaininfo.chain` per network name used in config.
_CHAIN_NAMES = {"mainnet": ("main",), "testnet": ("test", "testnet4"), "signet": ("signet",), "regtest": ("regtest",)}


# --- cursor -----------------------------------------------------------------------------------------


@dataclass
class _State:
    """Decoded `tip` cursor (see the module docstring)."""

    height: int
    hash: str | None
    blocks: list[tuple[int, str, list[str]]] = field(default_factory=list)
    mempool: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    def dumps(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "height": self.height,
                "hash": self.hash,
                "blocks": [[h, b, list(t)] for h, b, t in self.blocks],
                "mempool": self.mempool,
                "orphans": self.orphans,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, text: str) -> _State:
        """:raises ValueError, KeyError, TypeError, MalformedError: when the text is not a version-1 state."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("v") != CURSOR_VERSION:
            raise ValueError("unknown cursor version")
        height = assert_int(d["height"], "height", minimum=-1)
        h = d["hash"]
        blocks = [
            (assert_int(x, "blocks.height", minimum=0), assert_hex(b, "blocks.hash"), [assert_hex(t, "blocks.txid") for t in ts])
            for x, b, ts in d["blocks"]
        ]
        return cls(
            height,
            None if h is None else assert_hex(h, "hash"),
            blocks,
            [assert_hex(t, "mempool") for t in d["mempool"]],
            [assert_hex(t, "orphans") for t in d["orphans"]],
        )

    def push(self, height: int, block_hash: str, txids: list[str]) -> None:
        self.blocks.append((height, block_hash, txids))
        del self.blocks[:-KEEP_BLOCKS]
        self.height, self.hash = height, block_hash


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# --- the source -------------------------------------------------------------------------------------


class BitcoindSource:
    """Bitcoin Core over JSON-RPC in block mode: `poll` returns watched txs of new blocks and of the mempool."""

    def __init__(
        self,
        name: str,
        rpc: BitcoindRpc,
        addresses: Iterable[str],
        *,
        clock: Clock,
        chain: str = "bitcoin",
        network: str | None = None,
        start_height: int | None = None,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        max_mempool_txs: int = DEFAULT_MAX_MEMPOOL_TXS,
        mempool: bool = True,
        log: logging.Logger | None = None,
    ):
        if network is not None and network not in _CHAIN_NAMES:
            raise ValueError(f"unknown network {network!r}; one of {', '.join(_CHAIN_NAMES)}")
        self.name = name
        self.chain = chain
        self.rpc = rpc
        self.network = network
        self._clock = clock
        self._start_height = start_height
        self._max_blocks = max(1, max_blocks)
        self._max_mempool = max(0, max_mempool_txs)
        self._mempool_enabled = mempool
        self._log = log or logging.getLogger("watchers.bitcoind")
        self._watched: frozenset[str] = frozenset()
        self._irrelevant: set[str] = set()
        self._version: int | None = None
        self._subversion = ""
        self._failures = FailureLog(self._log, changes=True)
        self.set_addresses(addresses)

    @property
    def addresses(self) -> frozenset[str]:
        """The watched addresses (canonical form: bech32 lower-cased)."""
        return self._watched

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Replace the watched set (e.g. after clustering found new addresses).

        When addresses were added, mempool txs found irrelevant before are examined again (capped per
        poll by `max_mempool_txs`); an unchanged or shrunk set costs nothing.
        """
        new = frozenset(_norm(a) for a in addresses)
        if not new <= self._watched:
            self._irrelevant.clear()
        self._watched = new

    @property
    def node_version(self) -> int | None:
        """`getnetworkinfo.version` of the node (e.g. 250000), once known; 0 when the node did not say."""
        return self._version

    # --- polling ----------------------------------------------------------------------------------

    async def poll(self, cursors: Mapping[str, str], *, progress=None) -> Batch:
        """Watched txs of new blocks and new mempool txs since the `tip` cursor, and txids gone (see module docstring).

        :raises SourceError: TransientError (node down, busy, in IBD or warming up), MalformedError, or a
            permanent SourceError (credentials, node too old); the cursor passed in stays valid.
        """
        tally = RequestTally()
        try:
            batch = await self._poll(cursors.get(TIP_KEY), tally, progress)
        except SourceError as exc:
            self._version = None  # the node may have been restarted or replaced: check it again
            self._note_failure(exc)
            raise
        self._failures.recovered("bitcoind recovered source=%s node=%s", self.name, self.rpc.where)
        return batch

    def _note_failure(self, exc: SourceError) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self._failures.failed(
            reason, "bitcoind poll failed source=%s error=%s", "bitcoind poll still failing source=%s error=%s", self.name, reason
        )

    def _load(self, text: str | None) -> _State | None:
        if text is None:
            return None
        try:
            return _State.loads(text)
        except (ValueError, KeyError, TypeError, MalformedError) as exc:
            self._log.warning("bitcoind cursor unreadable, starting at the tip source=%s error=%s", self.name, exc)
            return None

    async def _check_node(self, tally: RequestTally) -> None:
        if self._version is not None:
            return
        info = assert_dict(await self.rpc.call("getnetworkinfo", tally=tally), "getnetworkinfo")
        version = info.get("version")
        self._subversion = str(info.get("subversion", ""))[:60]
        if isinstance(version, int) and not isinstance(version, bool):
            if version < MIN_CORE_VERSION:
                raise source_error(
                    SourceError,
                    f"{_NEED_CORE}; bitcoind at {self.rpc.where} is {format_core_version(version)} "
                    f"({self._subversion or version})",
                    kind="version",
                )
            self._version = version
        else:
            self._version = 0  # not Core's integer: the getblock verbosity-3 answer has to prove itself

    async def _poll(self, cursor: str | None, tally: RequestTally, progress) -> Batch:
        state = self._load(cursor)
        await self._check_node(tally)
        calls: list[tuple[str, Sequence[Any]]] = [("getblockchaininfo", [])]
        if self._mempool_enabled:
            calls.insert(0, ("getrawmempool", []))
        answers = await self.rpc.batch(calls, tally=tally)
        for a in answers:
            if isinstance(a, SourceError):
                raise a
        info = assert_dict(answers[-1], "getblockchaininfo")
        snapshot = self._parse_mempool(answers[0]) if self._mempool_enabled else set()
        tip_height, tip_hash = self._check_chain(info)
        if state is None:
            start = tip_height if self._start_height is None else min(self._start_height, tip_height)
            state = _State(height=start - 1, hash=None)

        found: dict[str, tuple[int, int, ChainTx]] = {}  # txid → (height, position, tx) confirmed this poll
        read_txids: dict[int, list[str]] = {}  # height → every txid of the blocks read this poll
        orphans: set[str] = set(state.orphans)
        reorg = state.hash is not None and tip_hash != state.hash and tip_height <= state.height
        to_read = max(0, tip_height - state.height)
        read = 0
        unwinds = 0
        while True:
            if reorg:
                unwinds += 1
                orphaned = await self._unwind(state, tip_height, tally)
                orphans |= orphaned
                for t in orphaned:
                    found.pop(t, None)
                for h in [h for h in read_txids if h > state.height]:
                    del read_txids[h]
                reorg = False
                to_read = read + max(0, tip_height - state.height)
            if state.height >= tip_height or read >= self._max_blocks:
                break
            height = state.height + 1
            block_hash = assert_hex(await self.rpc.call("getblockhash", height, tally=tally), f"getblockhash {height}")
            data = await self._getblock3(block_hash, height, tally)
            header = parse_header(data, f"getblock {block_hash}")
            if header.hash != block_hash or header.height != height:
                raise MalformedError(f"getblock {block_hash}: answered block {header.hash} at height {header.height}")
            if header.confirmations < 0:
                break  # the block left the best chain between our two calls: a reorg under way, next poll
            if state.hash is not None and header.prev != state.hash:
                if unwinds:
                    break  # a second reorg during this poll: the next poll sorts it out
                reorg = True
                continue
            matched, txids = self._scan_block(data, header)
            for pos, tx in matched:
                found[tx.txid] = (height, pos, tx)
            read_txids[height] = txids
            state.push(height, block_hash, [tx.txid for _, tx in matched])
            read += 1
            if progress is not None:
                progress(TIP_KEY, read, to_read)

        caught_up = state.height >= tip_height
        in_blocks = {t for ts in read_txids.values() for t in ts}
        known = set(state.mempool)
        # Watched mempool txs that left the mempool without a block read this poll confirming them.
        left = known - snapshot - found.keys() - in_blocks
        keep = (known & snapshot) - found.keys()
        unresolved_orphans = orphans - found.keys()
        gone: set[str] = set()
        pending: set[str] = set()
        forced: list[str] = []
        if caught_up:
            back = {t for t in unresolved_orphans if t in snapshot}
            gone, again = await self._lookup_vanished(sorted((left | unresolved_orphans) - back), tally)
            forced = sorted(back | again)
        else:
            # A block not read yet may confirm them: decide once the tip is reached.
            keep |= left
            pending = set(unresolved_orphans)

        if self._mempool_enabled:
            self._irrelevant &= snapshot
            fresh = sorted(snapshot - keep - self._irrelevant - in_blocks - found.keys() - set(forced))
        else:
            fresh = []
        todo = forced + fresh
        if len(todo) > max(self._max_mempool, len(forced)):
            limit = max(self._max_mempool, len(forced))
            self._log.info(
                "bitcoind mempool backlog source=%s examined=%d left_for_next_polls=%d", self.name, limit, len(todo) - limit
            )
            todo = todo[:limit]
        relevant, irrelevant, _ = await self._fetch_mempool(todo, snapshot, tally)
        self._irrelevant |= irrelevant
        unconfirmed = [t for t in relevant if t.txid not in found]
        keep |= {t.txid for t in unconfirmed}
        pending -= keep  # an orphan back in the mempool is followed as a mempool tx from now on
        # Orphans or vanished txs seen back in the mempool but not readable yet are tried again next poll.
        unread = set(forced) - {t.txid for t in relevant} - irrelevant
        pending |= unread & unresolved_orphans
        keep |= unread & known
        known = keep
        state.mempool = sorted(known)
        state.orphans = sorted(pending)
        confirmed = [tx for _, _, tx in sorted(found.values(), key=lambda x: (x[0], x[1]))]
        gone -= found.keys()
        gone -= {t.txid for t in unconfirmed}
        return Batch(
            source=self.name,
            txs=tuple(confirmed + unconfirmed),
            cursors=(Cursor(self.name, TIP_KEY, state.dumps()),),
            chain=self.chain,
            gone=tuple(sorted(gone)),
            tip_height=tip_height,
            requests=tally.requests,
            unfinished=("tip",) if state.height < tip_height else (),  # behind by more than max_blocks
        )

    # --- pieces of a poll -----------------------------------------------------------------------------

    @staticmethod
    def _parse_mempool(value: Any) -> set[str]:
        items = assert_list(value, "getrawmempool")
        return {assert_hex(t, f"getrawmempool[{i}]") for i, t in enumerate(items)}

    def _check_chain(self, info: dict) -> tuple[int, str]:
        p = "getblockchaininfo"
        # Core has reported it since 0.16; a node without the field is taken as synced.
        ibd = assert_bool(info.get("initialblockdownload", False), f"{p}.initialblockdownload")
        if ibd:
            progress = info.get("verificationprogress")
            pct = (
                f"{float(progress) * 100:.1f}% verified"
                if isinstance(progress, (int, Decimal)) and not isinstance(progress, bool)
                else "progress unknown"
            )
            raise source_error(
                TransientError, f"bitcoind at {self.rpc.where} is in initial block download ({pct}); waiting", kind="ibd"
            )
        chain = require(info, "chain", p)
        if self.network is not None and chain not in _CHAIN_NAMES[self.network]:
            raise source_error(
                SourceError,
                f"bitcoind at {self.rpc.where} is on chain {chain!r}, but this source is configured for {self.network}",
                kind="chain",
            )
        height = assert_int(require(info, "blocks", p), f"{p}.blocks", minimum=0)
        return height, assert_hex(require(info, "bestblockhash", p), f"{p}.bestblockhash")

    async def _getblock3(self, block_hash: str, height: int, tally: RequestTally) -> dict:
        try:
            data = await self.rpc.call("getblock", block_hash, 3, tally=tally)
        except SourceError as exc:
            code = rpc_code(exc)
            if code is None or isinstance(exc, TransientError):
                raise
            message = getattr(exc, "rpc_message", "") or str(exc)
            if code == RPC_INVALID_ADDRESS_OR_KEY:
                raise source_error(
                    TransientError,
                    f"bitcoind at {self.rpc.where}: block {block_hash} at height {height} is gone (reorg under way?)",
                    kind="rpc",
                    code=code,
                ) from exc
            if "prune" in message.lower():
                raise source_error(
                    SourceError,
                    f"bitcoind at {self.rpc.where} has pruned block {height} ({block_hash}); the "
                    f"Bitcoin Core source reads every new block: keep them (prune= large enough, or no pruning)",
                    kind="pruned",
                    code=code,
                ) from exc
            raise source_error(
                SourceError,
                f"{_NEED_CORE}; bitcoind at {self.rpc.where} ({self._node_name()}) answered "
                f"getblock verbosity 3 with error {code}: {message}",
                kind="version",
                code=code,
            ) from exc
        return assert_dict(data, f"getblock {block_hash}")

    def _node_name(self) -> str:
        if self._version:
            return f"Core {format_core_version(self._version)}"
        return self._subversion or "version unknown"

    def _scan_block(self, data: dict, header: Header) -> tuple[list[tuple[int, ChainTx]], list[str]]:
        """(position, ChainTx) of the txs touching watched addresses, and every txid of the block."""
        where = f"getblock {header.hash} (height {header.height})"
        txs = assert_list(require(data, "tx", where), "tx", non_empty=True)
        watched = self._watched
        matched: list[tuple[int, ChainTx]] = []
        txids: list[str] = []
        for i, t in enumerate(txs):
            p = f"tx[{i}]"
            if not isinstance(t, dict):
                raise source_error(
                    SourceError,
                    f"{_NEED_CORE}; bitcoind at {self.rpc.where} ({self._node_name()}) answered "
                    f"getblock verbosity 3 with txids only",
                    kind="version",
                )
            vin = t.get("vin")
            vout = t.get("vout")
            if not isinstance(vin, list) or not isinstance(vout, list):
                raise MalformedError(f"{p}.vin/vout: expected arrays in {where}")
            hit = False
            for j, x in enumerate(vin):
                if not isinstance(x, dict):
                    raise MalformedError(f"{p}.vin[{j}]: expected an object in {where}")
                if "coinbase" in x:
                    continue
                prev = x.get("prevout")
                if prev is None:
                    if not self._version:
                        raise source_error(
                            SourceError,
                            f"{_NEED_CORE}; bitcoind at {self.rpc.where} ({self._node_name()}) "
                            f"answered getblock verbosity 3 without prevouts",
                            kind="version",
                        )
                    raise MalformedError(
                        f"{p}.vin[{j}].prevout: missing in {where} verbosity 3 (no undo data for this block: pruned?)"
                    )
                if not hit and address_of(prev) in watched:
                    hit = True
            if not hit:
                hit = any(address_of(x) in watched for x in vout)
            txid = assert_hex(t.get("txid"), f"{p}.txid")
            txids.append(txid)
            if hit:
                matched.append((i, parse_core_tx(t, chain=self.chain, prefix=p, block=(header.height, header.hash, header.time))))
        return matched, txids

    async def _unwind(self, state: _State, tip_height: int, tally: RequestTally) -> set[str]:
        """Roll `state` back to the fork point with the best chain; returns the watched txids of orphaned blocks."""
        stored = [(h, b) for h, b, _ in state.blocks if h <= tip_height]
        answers = await self.rpc.batch([("getblockhash", [h]) for h, _ in stored], tally=tally)
        current: dict[int, str] = {}
        for (h, _), a in zip(stored, answers, strict=True):
            if isinstance(a, SourceError):
                raise a
            current[h] = assert_hex(a, f"getblockhash {h}")
        keep = len(state.blocks)
        while keep and current.get(state.blocks[keep - 1][0]) != state.blocks[keep - 1][1]:
            keep -= 1
        orphaned_blocks = state.blocks[keep:]
        orphaned = {t for _, _, ts in orphaned_blocks for t in ts}
        if keep:
            state.height, state.hash = state.blocks[keep - 1][0], state.blocks[keep - 1][1]
        else:
            # Deeper than the remembered blocks: re-read from the oldest one we know, without a parent check.
            oldest = state.blocks[0][0] if state.blocks else state.height
            self._log.error(
                "bitcoind reorg deeper than the %d remembered blocks source=%s from_height=%d", KEEP_BLOCKS, self.name, oldest
            )
            state.height, state.hash = oldest - 1, None
        del state.blocks[keep:]
        self._log.warning(
            "bitcoind reorg source=%s fork_height=%d orphaned_blocks=%d watched_txs=%d",
            self.name,
            state.height,
            len(orphaned_blocks),
            len(orphaned),
        )
        return orphaned

    async def _lookup_vanished(self, txids: list[str], tally: RequestTally) -> tuple[set[str], set[str]]:
        """(gone, back in the mempool) among txids that left our view: -5 means neither chain nor mempool knows it."""
        gone: set[str] = set()
        again: set[str] = set()
        for chunk in _chunks(txids, RPC_BATCH):
            answers = await self.rpc.batch([("getrawtransaction", [t, 1]) for t in chunk], tally=tally)
            for t, a in zip(chunk, answers, strict=True):
                if isinstance(a, SourceError):
                    if rpc_code(a) == RPC_INVALID_ADDRESS_OR_KEY:
                        gone.add(t)
                        continue
                    raise a
                d = assert_dict(a, f"getrawtransaction {t}")
                if d.get("blockhash") is None:
                    again.add(t)  # in the mempool after all (it came back between our calls)
                # with a blockhash: confirmed (txindex) in a block we read or will read; not gone
        return gone, again

    async def _fetch_mempool(
        self, txids: list[str], snapshot: set[str], tally: RequestTally
    ) -> tuple[list[ChainTx], set[str], set[str]]:
        """(watched ChainTx, irrelevant txids, unresolved txids) of mempool txs (see module docstring, step 5)."""
        verbosity: int | bool = 2 if (self._version or 0) >= _RAWTX_VERBOSITY2_VERSION else True
        raw: dict[str, dict] = {}
        for chunk in _chunks(txids, RPC_BATCH):
            answers = await self.rpc.batch([("getrawtransaction", [t, verbosity]) for t in chunk], tally=tally)
            for t, a in zip(chunk, answers, strict=True):
                if isinstance(a, SourceError):
                    if rpc_code(a) == RPC_INVALID_ADDRESS_OR_KEY:
                        continue  # left the mempool since the snapshot: a block or `gone` will tell
                    raise a
                d = assert_dict(a, f"getrawtransaction {t}")
                if d.get("txid") != t:
                    raise MalformedError(f"getrawtransaction {t}: txid: expected {t}, got {show(d.get('txid'))}")
                raw[t] = d

        need: dict[tuple[str, int], None] = {}
        for t, d in raw.items():
            for j, x in enumerate(assert_list(require(d, "vin", t), f"getrawtransaction {t}.vin", non_empty=True)):
                x = assert_dict(x, f"getrawtransaction {t}.vin[{j}]")
                if "coinbase" not in x and x.get("prevout") is None:
                    key = (
                        assert_hex(require(x, "txid"), f"{t}.vin[{j}].txid"),
                        assert_int(require(x, "vout"), f"{t}.vin[{j}].vout", minimum=0, maximum=MAX_U32),
                    )
                    need[key] = None
        prevouts: dict[tuple[str, int], Any] = {}
        parents: dict[str, dict] = dict(raw)
        mempool_parents = sorted({p for p, _ in need if p not in parents and p in snapshot})
        parents.update(await self._get_parents(mempool_parents, tally))
        utxo_keys = [k for k in need if k[0] not in parents]
        missing_parents: set[str] = set()
        for chunk in _chunks(utxo_keys, RPC_BATCH):
            answers = await self.rpc.batch([("gettxout", [p, n, False]) for p, n in chunk], tally=tally)
            for (p, n), a in zip(chunk, answers, strict=True):
                if isinstance(a, SourceError):
                    raise a
                if a is None:
                    missing_parents.add(p)
                else:
                    prevouts[(p, n)] = a
        parents.update(await self._get_parents(sorted(missing_parents), tally))
        for p, n in need:
            if (p, n) in prevouts or p not in parents:
                continue
            vout = parents[p].get("vout")
            if isinstance(vout, list) and n < len(vout):
                prevouts[(p, n)] = vout[n]

        watched = self._watched
        relevant: list[ChainTx] = []
        irrelevant: set[str] = set()
        unresolved: set[str] = set()
        for t in txids:
            if t not in raw:
                continue
            d = raw[t]
            vin = d["vin"]
            ins = []
            complete = True
            for x in vin:
                if "coinbase" in x:
                    continue
                prev = x.get("prevout") or prevouts.get((x["txid"], x["vout"]))
                if prev is None:
                    complete = False
                else:
                    ins.append(prev)
            hit = any(address_of(x) in watched for x in ins) or any(
                address_of(x) in watched for x in assert_list(require(d, "vout", t), f"getrawtransaction {t}.vout")
            )
            if not complete:
                unresolved.add(t)
                self._log.debug("bitcoind mempool tx not resolved yet source=%s txid=%s", self.name, t)
                continue
            if not hit:
                irrelevant.add(t)
                continue
            relevant.append(parse_core_tx(d, chain=self.chain, prefix=f"getrawtransaction {t}", prevouts=prevouts))
        return relevant, irrelevant, unresolved

    async def _get_parents(self, txids: list[str], tally: RequestTally) -> dict[str, dict]:
        found: dict[str, dict] = {}
        for chunk in _chunks(txids, RPC_BATCH):
            answers = await self.rpc.batch([("getrawtransaction", [t, 1]) for t in chunk], tally=tally)
            for t, a in zip(chunk, answers, strict=True):
                if isinstance(a, SourceError):
                    if rpc_code(a) == RPC_INVALID_ADDRESS_OR_KEY:
                        continue
                    raise a
                found[t] = assert_dict(a, f"getrawtransaction {t}")
        return found

    # --- single lookups the rest of the product needs -----------------------------------------------

    async def tip_hash(self) -> str:
        """Hash of the best block (`getbestblockhash`). :raises SourceError:"""
        return assert_hex(await self.rpc.call("getbestblockhash"), "getbestblockhash")

    async def get_block(self, block_hash: str) -> dict[str, Any]:
        """Header fields of a block (`getblock <hash> 1`), with EsploraSource.get_block's keys:
        id, height, version, timestamp, tx_count, size, weight, merkle_root, previousblockhash, mediantime,
        nonce, bits (int), difficulty (float). :raises SourceError:"""
        _check_hex(block_hash)
        d = assert_dict(await self.rpc.call("getblock", block_hash, 1), f"getblock {block_hash}")
        p = f"getblock {block_hash}"
        header = parse_header(d, p)
        if header.hash != block_hash:
            raise MalformedError(f"{p}.hash: expected {block_hash}, got {header.hash}")
        bits = require(d, "bits", p)
        try:
            bits_int = int(bits, 16) if isinstance(bits, str) and len(bits) == 8 else None
        except ValueError:
            bits_int = None
        if bits_int is None:
            raise MalformedError(f"{p}.bits: expected 8 hex digits, got {show(bits)}")
        difficulty = require(d, "difficulty", p)
        if isinstance(difficulty, Decimal):
            difficulty = float(difficulty)
        return {
            "id": header.hash,
            "height": header.height,
            "version": assert_int(require(d, "version", p), f"{p}.version"),
            "timestamp": header.time,
            "tx_count": assert_int(require(d, "nTx", p), f"{p}.nTx", minimum=1),
            "size": assert_int(require(d, "size", p), f"{p}.size", minimum=0),
            "weight": assert_int(require(d, "weight", p), f"{p}.weight", minimum=0),
            "merkle_root": assert_hex(require(d, "merkleroot", p), f"{p}.merkleroot"),
            "previousblockhash": header.prev,
            "mediantime": assert_int(require(d, "mediantime", p), f"{p}.mediantime", minimum=0),
            "nonce": assert_int(require(d, "nonce", p), f"{p}.nonce", minimum=0),
            "bits": bits_int,
            "difficulty": assert_number(difficulty, f"{p}.difficulty", minimum=0),
        }

    async def coinbase_total(self, block_hash: str) -> int:
        """Total output of a block's coinbase in satoshis (`getblock <hash> 1`, then `getrawtransaction
        <coinbase> 1 <hash>`, which needs no txindex). :raises SourceError:"""
        _check_hex(block_hash)
        d = assert_dict(await self.rpc.call("getblock", block_hash, 1), f"getblock {block_hash}")
        txids = assert_list(require(d, "tx"), f"getblock {block_hash}.tx", non_empty=True)
        coinbase = assert_hex(txids[0], f"getblock {block_hash}.tx[0]")
        tx = await self.rpc.call("getrawtransaction", coinbase, 1, block_hash)
        parsed = parse_core_tx(tx, chain=self.chain, prefix=f"getrawtransaction {coinbase}")
        if not parsed.is_coinbase or parsed.txid != coinbase:
            raise MalformedError(f"getrawtransaction {coinbase}: expected the coinbase of block {block_hash}")
        return parsed.total_out


def _check_hex(value: str) -> None:
    # Caller input, not remote data: a bad hash is a programming error.
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"expected 64 lower-case hex digits, got {value!r}")
