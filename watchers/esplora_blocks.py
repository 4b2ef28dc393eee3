"""Esplora REST source, block mode: each new block read once as raw bytes and matched against the watched set.

Why: address mode costs at least one request per watched address per poll. Block mode costs one request
per poll (`/blocks/tip/hash`) plus, per new block, `/block-height/:h` and `/block/:hash/raw` (one request
whatever the block's size), plus `/tx/:txid` per matching tx that spends an input outside the watched UTXO
set, whatever the number of watched addresses.

How a block is matched (`watchers.rawblock.scan_block`): outputs against a dict of the watched
addresses' output scripts (script bytes → address, built once), inputs against the watched UTXO set
(36-byte outpoint → WatchedUtxo). Raw blocks carry no prevouts, so the UTXO set of the watched
addresses is kept here: given at start (`utxos=`, the stored set), seeded for addresses that have no
state yet, and updated from every block. A matching tx whose every input is a watched UTXO (an entity's
sale, sweep or consolidation) is built from the raw block: input addresses and values from the stored
UTXOs, output addresses from their scripts, fee = inputs − outputs. For any other matching tx (a receipt
from someone else, a co-spend with a foreign input), `/tx/:txid` gives the exact input addresses, values
and fee. Either way the ChainTx (and the flows computed from it) equal address mode's.
`Batch.utxos_added` / `utxos_spent` carry the net UTXO changes of the pass; the pipeline stores them
with the cursor in one transaction. `Batch.snapshots` carry, for every seeded address whose UTXOs changed
(a block, a reorg, its seeding), its confirmed balance summed from that set: the balance users see
(`entities`, reconciliation, API, report) follows the blocks, not the answer of the day it was seeded.

Per poll:
1. `GET /blocks/tip/hash`. Equal to the cursor's hash: done (1 request).
2. Otherwise walk up by height from the cursor: `/block-height/:h`, then the block once. When its
   previous hash is the cursor's hash the block is matched and applied; when not (or `/block-height`
   is 404 because the chain got shorter), that is a reorg: walk back comparing the cursor's stored
   hashes with `/block-height/:h` down to the fork point, undo the orphaned blocks' UTXO changes, then
   read the new branch. At most `max_blocks` blocks per poll (default 50): a long catch-up spreads
   over polls and the cursor advances with the data.
3. Matching txs of orphaned blocks that are not in the new branch are looked up with `/tx/:txid`: still
   known (back in the mempool, block fields None, or already confirmed in a block not read yet) → returned
   as they are now; 404 → `Batch.gone`. Txs returned unconfirmed this way are kept in the cursor
   (`pending`) and looked up again after each new block until they confirm or vanish.
4. When the walk reached the tip: seed addresses not seeded yet (below), then stop.

Blocks are read as `/block/:hash/raw`. A server that answers it 404/400 while `/block/:hash` exists
lacks the endpoint: the source logs it once and falls back, for the rest of its life, to
`/block/:hash` + `/block/:hash/txs/:start` (25 txs a page, about 160 requests for a 4,000-tx block;
those pages carry prevouts, so matching txs need no `/tx` request there). Matching is the same.

Seeding (one time per address, when the walk is at the tip): `GET /address/:a/utxo` and
`GET /address/:a/txs/mempool` (a server without that route, 404, e.g. mempool.space on its electrum
backend: `GET /address/:a/txs` and its `?after_txid=` pages while they hold only mempool txs) (2 requests per address, at most `max_seed` addresses per poll). Esplora's
utxo list includes mempool outputs and omits outputs spent by mempool txs; block mode needs the
*confirmed* set, so unconfirmed outputs are left out (they are seen when their block is read) and
confirmed outputs spent by one of the address's mempool txs (shown up to 50) are put back. The tip hash is
read again after seeding; if it moved, the answers may straddle two blocks and are thrown away (retried
next poll). A seeded address's stored UTXOs that the server no longer lists are removed. Until an
address is seeded, block mode sees its receipts but not spends of outputs it held before. Electrs
refuses `/utxo` for addresses with more than 500 UTXOs (a 4xx error): such an address is logged and
stays unseeded. With `history=True`, each new address first gets an address-mode backfill of its whole
history (an embedded `EsploraSource`, cursor keys `history:<address>`, `max_pages` pages per address per
poll; costs in `watchers.esplora`), and is seeded when that is finished. `Batch.unfinished` lists `tip`
while blocks remain behind it and the addresses not seeded yet, so `backfill` polls again at once.

Start: a source with no cursor starts at the current tip (`/blocks/tip/hash` + `/block/:hash`), or,
when given `start_height`, just below that height (`/block-height/:h` + `/block/:hash` for its parent's
hash) and walks up from there.

Mempool (`mempool_checks` > 0): Esplora has no cheap way to see a set of addresses' unconfirmed txs
(`/mempool/recent` shows 10 txs without scripts; `/mempool/txids` lists every txid, each needing `/tx`),
so when the walk is at the tip, `/address/:a/txs/mempool` is read for at most `mempool_checks` addresses
per poll: first the addresses with an unconfirmed tx seen before (so a replacement or an eviction shows at
the next poll), then the next ones, in address order round the ring, of the addresses holding watched
UTXOs (only they can send; a receipt is seen in its block). New unconfirmed txs are returned with block
fields None; a tx seen before that is no longer listed is looked up with `/tx/:txid`: 404 → `Batch.gone`
(replaced or evicted; the pipeline calls it RBF when a tx of the batch spends its inputs), confirmed → it
is (or was) matched in its block. Key `mempool`: `{"v": 1, "after": "<address>", "seen": {"<address>":
["<txid>", ...]}}`, so a CLI `poll` continues the ring where the last one stopped. With
`mempool_checks = 0`, the only unconfirmed txs block mode returns are orphaned ones back in the mempool
(step 3); pending sales are then seen when they confirm.

Cursor, key `tip` (JSON), version 1:

    {"v": 1, "seq": 7, "height": 880300, "hash": "<tip hash>",
     "blocks": [[880201, "<hash>", [[txid, vout, address, value], ...],                 # outputs added
                                   [[txid, vout, address, value, height, spender], ...]],  # watched spent
                ...],                                  # the last 100 blocks, lowest first
     "pending": ["<txid>", ...]}                       # orphaned txs returned unconfirmed

The per-block UTXO deltas of the last 100 blocks are kept in the cursor (not recomputed), so a reorg
after a restart can still be undone; a reorg deeper than 100 blocks cannot, and makes the source restart
from the tip and re-seed every address (logged as an error). Key `seeded`: `{"v": 1, "addresses": [...]}`,
written with every batch that seeds addresses (with the UTXOs it covers), so a stopped process (a CLI
`poll` above `max_seed` addresses) goes on with the next addresses instead of seeding the same ones. `seq` changes with every returned tip cursor: when the stored cursor is
not the one returned last time (the pipeline did not commit that batch), the in-memory UTXO set is rolled
back to what was committed before polling again.

A block is applied whole: a malformed answer for any of its txs (`/tx/:txid` of a matching tx, or a
`/block/:hash/txs` page) stops the poll at that block with a logged reason and the block is read again
next poll, because skipping one tx could lose a spend of a watched coin. (Address mode, by contrast,
skips and retries a single malformed tx: see `watchers.esplora`.)

One block-mode source per chain: the stored watched UTXO set is per chain.
"""

from __future__ import annotations

import bisect
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

from monitor.model import (
    BalanceSnapshot,
    Batch,
    ChainTx,
    Clock,
    Cursor,
    MalformedError,
    SourceError,
    TxInput,
    TxOutput,
    WatchedUtxo,
)
from monitor.model import normalise_bitcoin_address as _norm
from watchers.addresses import InvalidAddress, _b58decode_check, _segwit_decode, script_to_address
from watchers.esplora import ELECTRUM_PAGE, MEMPOOL_LIMIT, EsploraSource
from watchers.http import FailureLog, HttpClient, RequestTally, http_status
from watchers.rawblock import (
    BlockHeader,
    outpoint_key,
    outpoint_of_key,
    parse_header,
    scan_block,
)
from watchers.rawblock import parse_tx as parse_raw_tx
from watchers.validate import assert_hex, parse_txs

__all__ = [
    "AUTO_THRESHOLD",
    "CURSOR_VERSION",
    "DEFAULT_MAX_BLOCKS",
    "DEFAULT_MAX_SEED",
    "KEEP_BLOCKS",
    "EsploraBlockSource",
    "address_script",
    "choose_mode",
    "mode_sees",
]

CURSOR_VERSION = 1
#: Block hashes (and their UTXO deltas) remembered for reorgs.
KEEP_BLOCKS = 100
#: Blocks read per poll at most (a catch-up spreads over polls).
DEFAULT_MAX_BLOCKS = 50
#: Addresses seeded per poll at most (2 requests each).
DEFAULT_MAX_SEED = 200
#: `?after_txid=` pages read to find an address's mempool txs on a server without `/txs/mempool`.
_MAX_MEMPOOL_PAGES = 20
#: Addresses whose mempool block mode checks per poll by default in the watcher (the config's default is
#: `monitor.config.DEFAULT_MEMPOOL_CHECKS`); 0 = block mode sees confirmed txs only.
DEFAULT_MEMPOOL_CHECKS = 0
#: Watched-address count from which `mode = "auto"` picks block mode.
AUTO_THRESHOLD = 50
_BLOCK_PAGE = 25  # electrs: txs per /block/:hash/txs/:start page
_MISSING = object()


def choose_mode(mode: str, n_addresses: int, threshold: int = AUTO_THRESHOLD) -> tuple[str, str]:
    """`address` or `block` for a configured mode (`address`, `block`, `auto`), and a log line saying why."""
    if mode in ("address", "block"):
        return mode, f"mode={mode} (configured) for {n_addresses} watched addresses"
    if mode != "auto":
        raise ValueError(f"unknown mode {mode!r} (address, block, auto)")
    if n_addresses >= threshold:
        return "block", (
            f"mode=block (auto): {n_addresses} watched addresses >= {threshold}; address mode would cost at least "
            f"{n_addresses} requests per poll, block mode costs 1 per poll + 2 per new block + 1 per matching tx "
            f"with a foreign input whatever the number of addresses, but sees unconfirmed txs only of the "
            f"`mempool_checks` addresses it reads per poll"
        )
    return "address", (
        f"mode=address (auto): {n_addresses} watched addresses < {threshold}; {n_addresses} requests per quiet "
        f"poll is affordable and address mode sees every address's unconfirmed txs at every poll"
    )


def mode_sees(mode: str, n_addresses: int, mempool_checks: int) -> str:
    """What an Esplora source in `mode` (`address` or `block`) sees, in one sentence for `check-config`."""
    if mode == "address":
        return (
            f"confirmed and unconfirmed txs of all {n_addresses} addresses at every poll ({n_addresses + 1} "
            f"requests per quiet poll, the tip included); balances from Esplora's address stats"
        )
    if not mempool_checks:
        mempool = "no unconfirmed txs (mempool_checks = 0): pending sales are seen when they confirm"
    elif mempool_checks >= n_addresses:
        mempool = f"unconfirmed txs of every address at every poll ({n_addresses} requests)"
    else:
        polls = -(-n_addresses // mempool_checks)
        mempool = (
            f"unconfirmed txs of {mempool_checks} addresses per poll, round robin over the addresses holding "
            f"coins (each one at least every {polls} polls; an address with a pending tx every poll)"
        )
    return (
        f"confirmed txs of all {n_addresses} addresses from each new block (1 request per quiet poll, plus "
        f"the mempool checks); {mempool}; balances from the watched UTXO set"
    )


def address_script(address: str) -> bytes:
    """Output script of an already validated address (checksummed decode, no bitcoinlib: ~40 µs, not ~1 ms).

    Addresses reaching a source were validated with `watchers.addresses.validate_address` when the config
    and registry were loaded; this only converts. The script does not depend on the network.
    :raises InvalidAddress:
    """
    a = address.strip()
    low = a.lower()
    if low.startswith(("bc1", "tb1", "bcrt1")):
        _, witver, prog = _segwit_decode(a)
        return bytes([witver + 0x50 if witver else 0, len(prog)]) + prog
    payload = _b58decode_check(a)
    if len(payload) != 21:
        raise InvalidAddress("has a base58 payload of the wrong length")
    if payload[0] in (0x00, 0x6F):
        return b"\x76\xa9\x14" + payload[1:] + b"\x88\xac"
    if payload[0] in (0x05, 0xC4):
        return b"\xa9\x14" + payload[1:] + b"\x87"
    raise InvalidAddress(f"has an unknown base58 version byte {payload[0]}")


# --- cursor state ---------------------------------------------------------------------------------


@dataclass
class _Delta:
    """UTXO changes one block made: outputs added, and watched outputs spent (with the spending txid)."""

    height: int
    hash: str
    added: list[WatchedUtxo] = field(default_factory=list)
    spent: list[tuple[WatchedUtxo, str]] = field(default_factory=list)

    def txids(self) -> list[str]:
        """Matching txids of the block, each once."""
        return list(dict.fromkeys([u.txid for u in self.added] + [s for _, s in self.spent]))

    def dump(self) -> list[Any]:
        return [
            self.height,
            self.hash,
            [[u.txid, u.vout, u.address, u.value] for u in self.added],
            [[u.txid, u.vout, u.address, u.value, u.height, s] for u, s in self.spent],
        ]

    @classmethod
    def load(cls, item: Any, chain: str) -> _Delta:
        height, h, added, spent = item
        return cls(
            int(height),
            assert_hex(h, "blocks.hash"),
            [WatchedUtxo(chain, assert_hex(t, "added.txid"), int(v), str(a), int(val), int(height)) for t, v, a, val in added],
            [
                (
                    WatchedUtxo(chain, assert_hex(t, "spent.txid"), int(v), str(a), int(val), None if uh is None else int(uh)),
                    assert_hex(s, "spent.spender"),
                )
                for t, v, a, val, uh, s in spent
            ],
        )


@dataclass
class _Tip:
    """Decoded `tip` cursor (see the module docstring)."""

    height: int
    hash: str
    blocks: list[_Delta]
    pending: list[str] = field(default_factory=list)
    orphaned: list[str] = field(default_factory=list)
    seq: int = 0

    def dumps(self) -> str:
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "seq": self.seq,
                "height": self.height,
                "hash": self.hash,
                "blocks": [d.dump() for d in self.blocks[-KEEP_BLOCKS:]],
                "pending": self.pending,
                "orphaned": self.orphaned,
            },
            separators=(",", ":"),
        )

    @classmethod
    def loads(cls, text: str, chain: str) -> _Tip:
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("v") != CURSOR_VERSION:
            raise ValueError("unknown cursor version")
        blocks = [_Delta.load(x, chain) for x in d["blocks"]]
        tip = cls(
            int(d["height"]),
            assert_hex(d["hash"], "hash"),
            blocks,
            [assert_hex(t, "pending") for t in d.get("pending", [])],
            [assert_hex(t, "orphaned") for t in d.get("orphaned", [])],
            int(d.get("seq", 0)),
        )
        if not blocks or (blocks[-1].height, blocks[-1].hash) != (tip.height, tip.hash):
            raise ValueError("the last stored block is not the tip")
        return tip

    def hash_at(self, height: int) -> str | None:
        for d in reversed(self.blocks):
            if d.height == height:
                return d.hash
        return None


@dataclass
class _Read:
    """One block as read: its header and either its raw bytes or its txs from `/txs` pages.

    Matching waits until the block is applied: a block read while looking for a fork must be matched
    against the UTXO set as it is after the orphaned blocks are undone, not before.
    """

    header: BlockHeader
    raw: bytes | None = None
    txs: list[ChainTx] | None = None


@dataclass
class _PageMatch:
    """A match found on `/block/:hash/txs` pages (same fields `_apply` reads from rawblock.TxMatch)."""

    index: int
    txid: str
    spends: list[tuple[str, int]]
    receipts: list[tuple[int, int, str]]  # (n, value, address)


class _Stop(Exception):
    """The walk stops before the current block (a race with the server's chain); retried next poll."""


@dataclass
class _Run:
    """What one poll collected."""

    tally: RequestTally
    txs: dict[str, ChainTx] = field(default_factory=dict)
    order: dict[str, tuple[int, int]] = field(default_factory=dict)  # txid -> (height, index) for sorting
    gone: set[str] = field(default_factory=set)
    orphaned: dict[str, None] = field(default_factory=dict)
    net: dict[bytes, WatchedUtxo | None] = field(default_factory=dict)
    cursors: list[Cursor] = field(default_factory=list)
    snapshots: list[Any] = field(default_factory=list)
    touched: set[str] = field(default_factory=set)  # addresses (as given) whose watched UTXOs changed
    blocks_read: int = 0
    error: SourceError | None = None
    changed: bool = False


# --- the source -----------------------------------------------------------------------------------


class EsploraBlockSource:
    """Esplora REST in block mode: `poll` reads each new block once and returns the txs touching watched addresses."""

    def __init__(
        self,
        name: str,
        http: HttpClient,
        addresses: Sequence[str],
        *,
        clock: Clock,
        chain: str = "bitcoin",
        utxos: Iterable[WatchedUtxo] = (),
        start_height: int | None = None,
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        max_seed: int = DEFAULT_MAX_SEED,
        history: bool = False,
        max_pages: int = 40,
        network: str = "mainnet",
        mempool_checks: int = DEFAULT_MEMPOOL_CHECKS,
        log: logging.Logger | None = None,
    ):
        self.name = name
        self._network = network  # for the addresses of outputs of txs built from raw blocks
        self._mempool_checks = max(0, mempool_checks)
        self._funded: list[str] | None = None  # sorted normalised addresses holding watched UTXOs (cache)
        self.chain = chain
        self.http = http
        self._clock = clock
        self._log = log or logging.getLogger("watchers.esplora_blocks")
        self._api = EsploraSource(name, http, (), clock=clock, chain=chain)
        self._start_height = start_height
        self._max_blocks = max(1, max_blocks)
        self._max_seed = max(1, max_seed)
        self._history = history
        self._max_pages = max_pages
        self.watched_addresses: tuple[str, ...] = ()
        self._scripts: dict[bytes, str] = {}  # output script -> watched address (as given)
        self._by_norm: dict[str, str] = {}  # normalised address -> watched address (as given)
        # Seeded addresses (normalised) and, kept incrementally so a poll costs nothing per address, the
        # watched ones still to seed (normalised → as given), in watch order.
        self._seeded: set[str] = set()
        self._to_seed: dict[str, str] = {}
        self._seeded_text: Any = _MISSING
        self._seeded_dirty = False
        self.watch(addresses)
        # The stored watched UTXO set, keyed for scan_block; only addresses watched now are kept.
        self._utxos: dict[bytes, WatchedUtxo] = {
            outpoint_key(u.txid, u.vout): u for u in utxos if u.chain == chain and _norm(u.address) in self._by_norm
        }
        self._journal: list[tuple[bytes, Any]] = []  # (key, previous value) of uncommitted memory changes
        self._returned: str | None = None  # tip cursor returned last time, while its batch may be uncommitted
        self._raw_ok = True
        self._failures = FailureLog(self._log)
        self._history_now: dict[str, str] = {}  # history cursors returned by this poll's backfill
        self._seed_failures = FailureLog(self._log)  # addresses whose seeding failed (logged once)

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """The runtime's re-watch hook: the cluster only grows, so this adds what is new."""
        self.watch(addresses)

    def watch(self, addresses: Iterable[str]) -> None:
        """Watch more addresses from now on (they are seeded at the next poll that reaches the tip).

        :raises InvalidAddress: for an address that does not decode.
        """
        new = []
        for a in addresses:
            n = _norm(a)
            if n in self._by_norm:
                continue
            self._scripts[address_script(a)] = a
            self._by_norm[n] = a
            if self._seeded_text is not _MISSING and n not in self._seeded:  # else the first poll builds it
                self._to_seed[n] = a
            new.append(a)
        self.watched_addresses = self.watched_addresses + tuple(new)

    @property
    def utxo_count(self) -> int:
        """Watched UTXOs held in memory."""
        return len(self._utxos)

    # --- memory of the UTXO set -------------------------------------------------------------------

    def _put(self, run: _Run, u: WatchedUtxo) -> None:
        key = outpoint_key(u.txid, u.vout)
        self._journal.append((key, self._utxos.get(key, _MISSING)))
        self._utxos[key] = u
        run.net[key] = u
        run.touched.add(u.address)

    def _drop(self, run: _Run, key: bytes) -> None:
        old = self._utxos.pop(key, _MISSING)
        if old is _MISSING:
            return
        self._journal.append((key, old))
        run.net[key] = None
        run.touched.add(old.address)

    def _rollback(self) -> None:
        for key, old in reversed(self._journal):
            if old is _MISSING:
                self._utxos.pop(key, None)
            else:
                self._utxos[key] = old
        self._journal.clear()

    def _begin(self, cursors: Mapping[str, str]) -> None:
        if self._journal and cursors.get("tip") != self._returned:
            self._log.warning(
                "block mode: the last batch was not stored; rolling back %d in-memory UTXO changes source=%s",
                len(self._journal),
                self.name,
            )
            self._rollback()
        self._journal.clear()
        self._returned = None
        text = cursors.get("seeded")
        if text != self._seeded_text:  # first poll, or the last seeded cursor returned was not stored
            seeded: set[str] = set()
            if text is not None:
                try:
                    d = json.loads(text)
                    seeded = {_norm(a) for a in d["addresses"]} if d.get("v") == CURSOR_VERSION else set()
                except (ValueError, KeyError, TypeError, AttributeError):
                    self._log.warning("block mode: seeded cursor unreadable, re-seeding source=%s", self.name)
            self._set_seeded(seeded)
            self._seeded_text = text
            self._seeded_dirty = bool(seeded - self._by_norm.keys())  # prune addresses no longer watched

    def _set_seeded(self, seeded: set[str]) -> None:
        self._seeded = seeded
        self._to_seed = {n: a for n, a in self._by_norm.items() if n not in seeded}

    # --- polling ----------------------------------------------------------------------------------

    async def poll(self, cursors: Mapping[str, str], *, progress=None) -> Batch:
        """Txs of new blocks touching watched addresses, UTXO changes and the advanced cursor (see module docstring).

        Never raises a SourceError: a failure before any progress gives `failed=("tip",)` and no cursor; a
        failure in the middle of a walk returns what was read before it, with the cursor just after it.
        """
        self._begin(cursors)
        run = _Run(RequestTally())
        tip_state = self._load_tip(cursors.get("tip"))
        try:
            tip = await self._api.tip_hash(tally=run.tally)
            if tip_state is None:
                tip_state = await self._start(tip, run)
                run.changed = True
        except SourceError as exc:
            self._note_failure(exc)
            return Batch(source=self.name, chain=self.chain, failed=("tip",), requests=run.tally.requests)
        except Exception:  # noqa: BLE001 -- a bug must not kill the daemon's job; CancelledError passes through
            self._log.exception("block mode poll failed (bug) source=%s", self.name)
            return Batch(source=self.name, chain=self.chain, failed=("tip",), requests=run.tally.requests)

        seq = tip_state.seq
        await self._guard(run, self._advance(tip_state, tip, run))
        # Orphaned txs are remembered in the cursor until looked up, so a failure here loses none of them.
        tip_state.orphaned.extend(t for t in run.orphaned if t not in tip_state.orphaned)
        if run.error is None:
            await self._guard(run, self._after_walk(tip_state, tip, cursors, run, progress))
        if run.error is not None:
            self._note_failure(run.error)
        else:
            self._note_success()

        cursors_out = list(run.cursors)
        if run.changed or self._journal:
            tip_state.seq = seq + 1
            text = tip_state.dumps()
            cursors_out.append(Cursor(self.name, "tip", text))
            self._returned = text
        if self._seeded_dirty:
            self._seeded &= self._by_norm.keys()
            seeded_text = json.dumps({"v": CURSOR_VERSION, "addresses": sorted(self._seeded)}, separators=(",", ":"))
            cursors_out.append(Cursor(self.name, "seeded", seeded_text))
            self._seeded_text = seeded_text
            self._seeded_dirty = False
        txs = sorted(run.txs.values(), key=lambda t: run.order.get(t.txid, (float("inf"), 0)))
        # What polling again at once would continue: blocks behind the tip, addresses not seeded yet (not
        # those whose seeding fails: they wait for the next ordinary poll). None after an error.
        unfinished: tuple[str, ...] = ()
        if run.error is None:
            unfinished = (("tip",) if tip_state.hash != tip else ()) + tuple(
                a for a in self._to_seed.values() if a not in self._seed_failures
            )
        return Batch(
            source=self.name,
            chain=self.chain,
            txs=tuple(txs),
            cursors=tuple(cursors_out),
            snapshots=tuple(run.snapshots) + self._balances(run.touched),
            gone=tuple(sorted(run.gone - run.txs.keys())),
            tip_height=tip_state.height if tip_state.hash == tip else None,
            requests=run.tally.requests,
            utxos_added=tuple(u for u in run.net.values() if u is not None),
            utxos_spent=tuple(outpoint_of_key(k) for k, u in run.net.items() if u is None),
            unfinished=unfinished,
        )

    async def _guard(self, run: _Run, step) -> None:
        """Run one step of the poll; a failure stops the poll but keeps what was read before it."""
        try:
            await step
        except SourceError as exc:
            run.error = exc
        except Exception as exc:  # noqa: BLE001 -- a bug must not lose the blocks already read (CancelledError passes)
            self._log.exception("block mode poll stopped (bug) source=%s", self.name)
            run.error = SourceError(f"unexpected {type(exc).__name__}: {exc}")

    async def _after_walk(self, st: _Tip, tip: str, cursors: Mapping[str, str], run: _Run, progress) -> None:
        await self._resolve_orphans(st, run)
        await self._check_pending(st, run)
        if st.hash == tip:
            if self._history:
                await self._backfill(cursors, run, progress)
            await self._seed(tip, cursors, run)
            await self._check_mempool(cursors, run)

    def _load_tip(self, text: str | None) -> _Tip | None:
        if text is None:
            return None
        try:
            return _Tip.loads(text, self.chain)
        except (ValueError, KeyError, TypeError, IndexError, MalformedError) as exc:
            self._log.error(
                "block mode cursor unreadable; restarting from the tip and re-seeding source=%s error=%s", self.name, exc
            )
            self._set_seeded(set())
            self._seeded_dirty = True
            return None

    async def _start(self, tip: str, run: _Run, *, at_tip: bool = False) -> _Tip:
        if self._start_height is None or at_tip:
            block = await self._api.get_block(tip, tally=run.tally)
            height, h = block["height"], tip
            where = "the current tip"
        else:
            # The parent of the start block, read from the start block itself: works for height 0 and for
            # servers whose history begins at the start height.
            first = await self._api.get_block(await self._api.block_hash(self._start_height, tally=run.tally), tally=run.tally)
            height, h = self._start_height - 1, first["previousblockhash"] or "00" * 32
            where = f"height {self._start_height}"
        self._log.info("block mode starts at %s source=%s height=%d hash=%s", where, self.name, height, h)
        return _Tip(height, h, [_Delta(height, h)])

    # --- walking the chain --------------------------------------------------------------------------

    async def _hash_at(self, height: int, run: _Run) -> str | None:
        try:
            return await self._api.block_hash(height, tally=run.tally)
        except SourceError as exc:
            if http_status(exc) == 404:
                return None
            raise

    async def _advance(self, st: _Tip, tip: str, run: _Run) -> None:
        budget = self._max_blocks
        cache: dict[str, _Read] = {}
        while st.hash != tip and budget > 0:
            h = st.height + 1
            nxt = await self._hash_at(h, run)
            if nxt is not None:
                blk = cache.get(nxt)
                if blk is None:
                    try:
                        blk = cache[nxt] = await self._read(nxt, h, run)
                    except _Stop:
                        return
                if blk.header.prev_hash == st.hash:
                    try:
                        await self._apply(st, blk, h, run)
                    except _Stop:
                        return
                    budget -= 1
                    continue
            fork = await self._find_fork(st, run)
            if fork == st.height:
                return  # our tip is still on the best chain: the server's tip moved while we walked
            if fork is None:
                await self._deep_reorg(st, run)
                return
            self._undo_to(st, fork, run)

    async def _find_fork(self, st: _Tip, run: _Run) -> int | None:
        """Highest stored height whose hash the server still has there, or None (deeper than we remember)."""
        for d in reversed(st.blocks):
            if await self._hash_at(d.height, run) == d.hash:
                return d.height
        return None

    def _undo_to(self, st: _Tip, fork: int, run: _Run) -> None:
        """Undo the UTXO changes of the stored blocks above `fork`; their matching txs become orphan candidates."""
        undone = []
        while st.blocks and st.blocks[-1].height > fork:
            d = st.blocks.pop()
            for u, _ in reversed(d.spent):
                self._put(run, u)
            for u in reversed(d.added):
                self._drop(run, outpoint_key(u.txid, u.vout))
            for t in d.txids():
                run.orphaned[t] = None
                run.txs.pop(t, None)
            undone.append(d)
        self._log.warning(
            "block mode reorg source=%s depth=%d fork_height=%d orphaned=%s",
            self.name,
            len(undone),
            fork,
            ",".join(d.hash for d in reversed(undone)),
        )
        if st.blocks:
            st.height, st.hash = st.blocks[-1].height, st.blocks[-1].hash
        run.changed = True

    async def _deep_reorg(self, st: _Tip, run: _Run) -> None:
        self._log.error(
            "block mode reorg deeper than the %d blocks remembered source=%s: restarting from the tip "
            "and re-seeding every address; blocks in between are not read (use an address-mode backfill)",
            KEEP_BLOCKS,
            self.name,
        )
        self._undo_to(st, st.blocks[0].height - 1, run)
        tip = await self._api.tip_hash(tally=run.tally)
        fresh = await self._start(tip, run, at_tip=True)
        st.height, st.hash, st.blocks = fresh.height, fresh.hash, fresh.blocks
        self._set_seeded(set())
        self._seeded_dirty = True
        run.changed = True

    async def _read(self, block_hash: str, height: int, run: _Run) -> _Read:
        if self._raw_ok:
            try:
                raw = await self.http.get_bytes(f"/block/{block_hash}/raw", tally=run.tally)
            except SourceError as exc:
                if http_status(exc) not in (400, 404):
                    raise
                try:
                    await self._api.get_block(block_hash, tally=run.tally)
                except SourceError as exc2:
                    if http_status(exc2) == 404:
                        raise _Stop() from exc2  # the block itself is gone: a reorg under our feet
                    raise
                self._raw_ok = False
                self._log.warning(
                    "block mode: %s has no /block/:hash/raw (HTTP %s); reading blocks as 25-tx "
                    "pages from now on (about tx_count/25 requests per block) source=%s",
                    self.http.active_url,
                    http_status(exc),
                    self.name,
                )
            else:
                header = parse_header(raw)
                if header.hash != block_hash:
                    raise MalformedError(f"/block/{block_hash}/raw: the header hashes to {header.hash}")
                run.blocks_read += 1
                return _Read(header, raw=raw)
        return await self._read_pages(block_hash, height, run)

    async def _read_pages(self, block_hash: str, height: int, run: _Run) -> _Read:
        try:
            info = await self._api.get_block(block_hash, tally=run.tally)
        except SourceError as exc:
            if http_status(exc) == 404:
                raise _Stop() from exc
            raise
        if info["height"] != height:
            raise _Stop()
        header = BlockHeader(
            block_hash,
            info["version"],
            info["previousblockhash"] or "00" * 32,
            info["merkle_root"],
            info["timestamp"],
            info["bits"],
            info["nonce"],
        )
        txs: list[ChainTx] = []
        for start in range(0, info["tx_count"], _BLOCK_PAGE):
            path = f"/block/{block_hash}/txs/{start}"
            txs.extend(await self.http.get_json(path, parse=lambda d: parse_txs(d, chain=self.chain), tally=run.tally))
        if len(txs) != info["tx_count"]:
            raise MalformedError(f"/block/{block_hash}/txs: {len(txs)} txs, the block has {info['tx_count']}")
        run.blocks_read += 1
        return _Read(header, txs=txs)

    def _match(self, blk: _Read) -> tuple[list[Any], dict[str, ChainTx]]:
        """Matching txs of a block against the watched set now, and the ChainTx the pages already gave."""
        if blk.raw is not None:
            return scan_block(blk.raw, self._scripts, self._utxos).matches, {}
        created: set[bytes] = set()
        matches: list[Any] = []
        known: dict[str, ChainTx] = {}
        for index, tx in enumerate(blk.txs or ()):
            spends = (
                []
                if tx.is_coinbase
                else [
                    (i.prev_txid, i.prev_vout)
                    for i in tx.inputs
                    if (k := outpoint_key(i.prev_txid, i.prev_vout)) in self._utxos or k in created
                ]
            )
            receipts = [
                (o.n, o.value, self._by_norm[_norm(o.address)])
                for o in tx.outputs
                if o.address is not None and _norm(o.address) in self._by_norm
            ]
            if spends or receipts:
                matches.append(_PageMatch(index, tx.txid, spends, receipts))
                known[tx.txid] = tx
                created.update(outpoint_key(tx.txid, n) for n, _, _ in receipts)
        return matches, known

    async def _apply(self, st: _Tip, blk: _Read, height: int, run: _Run) -> None:
        """Fetch the matching txs, then update the UTXO set and the cursor (nothing changes if a fetch fails)."""
        h = blk.header
        matches, known = self._match(blk)
        fetched: list[ChainTx] = []
        for m in matches:
            tx = known.get(m.txid) or self._own_tx(blk, m, height)
            if tx is None:
                try:
                    tx = await self._api.get_tx(m.txid, tally=run.tally)
                except SourceError as exc:
                    if http_status(exc) == 404:
                        raise _Stop() from exc  # the block was orphaned between reading it and now
                    raise
                _check_same(tx, m)
            if (tx.block_height, tx.block_hash, tx.block_time) != (height, h.hash, h.time):
                tx = replace(tx, block_height=height, block_hash=h.hash, block_time=h.time)
            fetched.append(tx)
        delta = _Delta(height, h.hash)
        for m, tx in zip(matches, fetched):
            for prev_txid, prev_vout in _spends(m):
                key = outpoint_key(prev_txid, prev_vout)
                u = self._utxos.get(key)
                if u is not None:
                    delta.spent.append((u, m.txid))
                    self._drop(run, key)
            for n, value, address in _receipts(m):
                u = WatchedUtxo(self.chain, m.txid, n, address, value, height)
                delta.added.append(u)
                self._put(run, u)
            run.txs[tx.txid] = tx
            run.order[tx.txid] = (height, m.index)
            run.orphaned.pop(tx.txid, None)
            for waiting in (st.pending, st.orphaned):
                if tx.txid in waiting:
                    waiting.remove(tx.txid)
        st.blocks.append(delta)
        del st.blocks[:-KEEP_BLOCKS]
        st.height, st.hash = height, h.hash
        run.changed = True

    def _own_tx(self, blk: _Read, m: Any, height: int) -> ChainTx | None:
        """The ChainTx of a raw block's tx whose every input is a watched UTXO, built without a request.

        Its inputs' addresses and values are the stored UTXOs', its outputs' addresses come from their
        scripts (None where Esplora gives none: OP_RETURN, P2PK, bare multisig), its fee is inputs − outputs:
        the same ChainTx `/tx/:txid` would give. A tx spending any other input needs `/tx` (raw blocks carry
        no prevouts), so it returns None.
        """
        if blk.raw is None or m.is_coinbase or not m.n_inputs or len(m.spends) != m.n_inputs or not m.end:
            return None
        owned = [self._utxos.get(outpoint_key(s.prev_txid, s.prev_vout)) for s in m.spends]
        if any(u is None for u in owned):
            return None  # spends an output created earlier in this very block: its value is not stored
        raw = parse_raw_tx(blk.raw[m.start : m.end])
        if raw.txid != m.txid:
            raise MalformedError(f"block {blk.header.hash}: tx {m.index} does not hash to {m.txid}")
        by_outpoint = {(u.txid, u.vout): u for u in owned if u is not None}
        inputs = tuple(
            TxInput(_norm(u.address), u.value, i.prev_txid, i.prev_vout)
            for i in raw.inputs
            for u in (by_outpoint[(i.prev_txid, i.prev_vout)],)
        )
        outputs = tuple(TxOutput(script_to_address(o.script, self._network), o.value, n) for n, o in enumerate(raw.outputs))
        fee = sum(i.value for i in inputs) - sum(o.value for o in outputs)
        if fee < 0:
            raise MalformedError(f"tx {m.txid}: outputs exceed the stored values of its inputs")
        return ChainTx(self.chain, m.txid, height, blk.header.time, inputs, outputs, fee, block_hash=blk.header.hash)

    async def _resolve_orphans(self, st: _Tip, run: _Run) -> None:
        """Matching txs of orphaned blocks not seen again in the new branch: current state, or gone."""
        for txid in list(st.orphaned):
            try:
                tx = await self._api.get_tx(txid, tally=run.tally)
            except SourceError as exc:
                if http_status(exc) != 404:
                    raise
                run.gone.add(txid)
            else:
                run.txs[txid] = tx
                if not tx.is_confirmed and txid not in st.pending:
                    st.pending.append(txid)
            st.orphaned.remove(txid)
            run.changed = True

    async def _check_pending(self, st: _Tip, run: _Run) -> None:
        """After new blocks: a pending (orphaned, unconfirmed) tx that vanished goes to `gone`."""
        if not st.pending or not run.blocks_read:
            return
        for txid in list(st.pending):
            if txid in run.txs:
                continue
            try:
                tx = await self._api.get_tx(txid, tally=run.tally)
            except SourceError as exc:
                if http_status(exc) != 404:
                    raise
                run.gone.add(txid)
                st.pending.remove(txid)
                run.changed = True
                continue
            if tx.is_confirmed:  # in a block not read yet: matched there
                st.pending.remove(txid)
                run.changed = True

    def _balances(self, addresses: set[str]) -> tuple[BalanceSnapshot, ...]:
        """Confirmed balances of seeded `addresses` from the watched UTXO set (one pass over the set).

        After seeding, the UTXO set is the address's confirmed balance, kept by every block and reorg: the
        balance a user sees follows it, not the seeding-time answer. An unseeded address has no complete
        set yet (its older outputs are unknown), so it gets no snapshot here.
        """
        wanted = {_norm(a): a for a in addresses if _norm(a) in self._seeded}
        if not wanted:
            return ()
        sums = dict.fromkeys(wanted, 0)
        for u in self._utxos.values():
            n = _norm(u.address)
            if n in sums:
                sums[n] += u.value
        at = int(self._clock.time())
        return tuple(BalanceSnapshot(self.chain, wanted[n], at, total) for n, total in sums.items())

    # --- seeding and history ------------------------------------------------------------------------

    def _unseeded(self) -> list[str]:
        return list(self._to_seed.values())

    async def _backfill(self, cursors: Mapping[str, str], run: _Run, progress) -> None:
        todo = [a for a in self._unseeded() if not _history_done(cursors.get(f"history:{a}"))][: self._max_seed]
        if not todo:
            return
        hist = EsploraSource(self.name, self.http, todo, clock=self._clock, chain=self.chain, max_pages=self._max_pages)
        batch = await hist.poll({a: cursors[f"history:{a}"] for a in todo if f"history:{a}" in cursors}, progress=progress)
        run.tally.requests += batch.requests
        for tx in batch.txs:
            if tx.txid not in run.txs:
                run.txs[tx.txid] = tx
        run.gone |= set(batch.gone)
        run.snapshots.extend(batch.snapshots)
        for c in batch.cursors:
            run.cursors.append(Cursor(self.name, f"history:{c.key}", c.state))
        self._history_now = {c.key: c.state for c in batch.cursors}

    async def _seed(self, tip: str, cursors: Mapping[str, str], run: _Run) -> None:
        todo = self._unseeded()
        if self._history:
            fresh = self._history_now
            todo = [a for a in todo if _history_done(fresh.get(a, cursors.get(f"history:{a}")))]
            self._history_now = {}
        todo = todo[: self._max_seed]
        if not todo:
            return
        answers: dict[str, dict[bytes, WatchedUtxo]] = {}
        for a in todo:
            try:
                answers[a] = await self._seed_one(a, run)
            except SourceError as exc:
                message = "block mode: seeding failed, retried next poll source=%s address=%s error=%s"
                self._seed_failures.failed(str(exc), message, message, self.name, a, exc, key=a)
        if not answers:
            return
        if await self._api.tip_hash(tally=run.tally) != tip:
            self._log.info("block mode: a block arrived while seeding; seeding again next poll source=%s", self.name)
            return
        wanted = {_norm(a) for a in answers}
        held: dict[str, list[bytes]] = {}
        for key, u in self._utxos.items():
            n = _norm(u.address)
            if n in wanted:
                held.setdefault(n, []).append(key)
        count = 0
        for a, found in answers.items():
            for key in held.get(_norm(a), ()):
                if key not in found:
                    self._drop(run, key)  # spent while nobody watched (or stale): the server no longer lists it
            for key, u in found.items():
                if self._utxos.get(key) != u:
                    self._put(run, u)
            count += len(found)
            run.touched.add(a)
            self._seeded.add(_norm(a))
            self._to_seed.pop(_norm(a), None)
            self._seed_failures.recovered(None, key=a)  # silent: the seeding itself is logged
        if not self._to_seed:
            self._to_seed = {}  # a dict never shrinks by popping: let the big one go
        # Stored with the UTXOs it covers, batch by batch: a process that stops (a CLI `poll`) must not seed
        # the same addresses again next time.
        self._seeded_dirty = True
        run.changed = True
        self._log.info(
            "block mode seeded source=%s addresses=%d utxos=%d unseeded_left=%d",
            self.name,
            len(answers),
            count,
            len(self._to_seed),
        )

    async def _seed_one(self, address: str, run: _Run) -> dict[bytes, WatchedUtxo]:
        """The confirmed UTXO set of one address now (see the module docstring for the mempool correction)."""
        utxos = await self._api.utxos(address, tally=run.tally)
        mempool = await self._mempool_of(address, run)
        out: dict[bytes, WatchedUtxo] = {}
        for u in utxos:
            if u.block_height is not None:
                out[outpoint_key(u.txid, u.vout)] = WatchedUtxo(self.chain, u.txid, u.vout, address, u.value, u.block_height)
        unconfirmed = {t.txid for t in mempool}
        me = _norm(address)
        for t in mempool:
            for i in t.inputs:
                if i.address is not None and _norm(i.address) == me and i.prev_txid not in unconfirmed:
                    out[outpoint_key(i.prev_txid, i.prev_vout)] = WatchedUtxo(
                        self.chain, i.prev_txid, i.prev_vout, address, i.value, None
                    )
        return out

    async def _mempool_of(self, address: str, run: _Run) -> list[ChainTx]:
        """Unconfirmed txs of an address: `/address/:a/txs/mempool`, or its history's first pages without it."""
        q = quote(address, safe="")
        try:
            txs = await self.http.get_json(
                f"/address/{q}/txs/mempool", parse=lambda d: parse_txs(d, chain=self.chain), tally=run.tally
            )
        except SourceError as exc:
            if http_status(exc) != 404:
                raise
            txs = await self._mempool_from_history(q, run)
        return [t for t in txs if not t.is_confirmed]

    async def _mempool_from_history(self, q: str, run: _Run) -> list[ChainTx]:
        """Mempool txs of an address from `/address/:a/txs`, for servers without `/txs/mempool`.

        mempool.space on its electrum backend has no such route; its `/txs` lists the mempool first, 10 a
        page, continued with `?after_txid=` (watchers.esplora). Its mempool txs whose parents are unconfirmed
        sort last and are not read here; they are seen when their block is read.
        """
        parse = lambda d: parse_txs(d, chain=self.chain)  # noqa: E731
        page = await self.http.get_json(f"/address/{q}/txs", parse=parse, tally=run.tally)
        found = [t for t in page if not t.is_confirmed]
        for _ in range(_MAX_MEMPOOL_PAGES):
            if len(page) < ELECTRUM_PAGE or any(t.is_confirmed for t in page):
                break
            page = await self.http.get_json(f"/address/{q}/txs?after_txid={page[-1].txid}", parse=parse, tally=run.tally)
            found += [t for t in page if not t.is_confirmed]
        return found

    # --- mempool ------------------------------------------------------------------------------------

    def _funded_addresses(self, run: _Run) -> list[str]:
        if self._funded is None or run.touched or self._journal:
            self._funded = sorted({_norm(u.address) for u in self._utxos.values()})
        return self._funded

    async def _check_mempool(self, cursors: Mapping[str, str], run: _Run) -> None:
        """Unconfirmed txs of up to `mempool_checks` addresses per poll (see the module docstring)."""
        if not self._mempool_checks:
            return
        text = cursors.get("mempool")
        after, seen = _load_mempool(text)
        seen = {a: [t for t in ids if t not in run.txs] for a, ids in seen.items() if a in self._by_norm}
        seen = {a: ids for a, ids in seen.items() if ids}
        todo = list(seen)[: self._mempool_checks]  # addresses with pending txs first: replacements show at once
        funded = self._funded_addresses(run)
        start = bisect.bisect_right(funded, after) if after is not None else 0
        ring = funded[start:] + funded[:start]
        for n in ring:
            if len(todo) >= self._mempool_checks:
                break
            if n not in seen:
                todo.append(n)
                after = n
        for n in todo:
            address = self._by_norm[n]
            listed = await self._mempool_of(address, run)
            ids = [t.txid for t in listed]
            for tx in listed:
                if tx.txid not in run.txs and tx.txid not in seen.get(n, ()):
                    run.txs[tx.txid] = tx
            kept = []
            if len(listed) < MEMPOOL_LIMIT:  # beyond 50 shown, a tx not listed may still be there
                for txid in seen.get(n, ()):
                    if txid in ids:
                        continue
                    try:
                        tx = await self._api.get_tx(txid, tally=run.tally)
                    except SourceError as exc:
                        if http_status(exc) != 404:
                            raise
                        run.gone.add(txid)  # replaced or evicted
                        continue
                    if not tx.is_confirmed:
                        kept.append(txid)
            else:
                kept = [t for t in seen.get(n, ()) if t not in ids]
            if ids or kept:
                seen[n] = ids + kept
            else:
                seen.pop(n, None)
        out = json.dumps({"v": CURSOR_VERSION, "after": after, "seen": seen}, separators=(",", ":"), sort_keys=True)
        if out != text:
            run.cursors.append(Cursor(self.name, "mempool", out))

    # --- logs ---------------------------------------------------------------------------------------

    def _note_failure(self, exc: SourceError) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self._failures.failed(
            reason,
            "block mode poll stopped, retried next poll source=%s error=%s",
            "block mode still failing source=%s error=%s",
            self.name,
            reason,
        )

    def _note_success(self) -> None:
        self._failures.recovered("block mode recovered source=%s", self.name)


def _spends(m: Any) -> list[tuple[str, int]]:
    if isinstance(m, _PageMatch):
        return m.spends
    return [(s.prev_txid, s.prev_vout) for s in m.spends]


def _receipts(m: Any) -> list[tuple[int, int, str]]:
    if isinstance(m, _PageMatch):
        return m.receipts
    return [(r.n, r.value, r.label) for r in m.receipts]


def _check_same(tx: ChainTx, m: Any) -> None:
    """The `/tx` answer must be the tx the raw block holds: same output count and matched values."""
    if len(tx.outputs) != m.n_outputs or any(tx.outputs[r.n].value != r.value for r in m.receipts):
        raise MalformedError(f"/tx/{m.txid}: outputs differ from the raw block's")


def _load_mempool(text: str | None) -> tuple[str | None, dict[str, list[str]]]:
    """(round-robin position, address → unconfirmed txids seen) of the `mempool` cursor; empty when unreadable."""
    if text is None:
        return None, {}
    try:
        d = json.loads(text)
        if d.get("v") != CURSOR_VERSION:
            return None, {}
        after = d.get("after")
        seen = {_norm(str(a)): [assert_hex(t, "mempool.seen") for t in ids] for a, ids in d.get("seen", {}).items()}
        return (str(after) if after is not None else None), seen
    except (ValueError, AttributeError, TypeError, MalformedError):
        return None, {}


def _history_done(state: str | None) -> bool:
    if state is None:
        return False
    try:
        return json.loads(state).get("tail", "x") is None
    except (ValueError, AttributeError):
        return False
