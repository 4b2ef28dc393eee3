"""Esplora REST source, address mode: new and changed txs of watched addresses, paged from a cursor.

Per address and poll (Esplora paging rules, see tests/data/esplora/README.md):

1. `GET /address/:a` (stats). When chain and mempool tx counts and funded/spent sums equal the cursor's,
   nothing changed: the poll costs exactly this one request.
2. Otherwise `GET /address/:a/txs` (up to 50 mempool txs + the newest 25 confirmed), then
   `GET /address/:a/txs/chain/:last_seen_txid` (25 per page, newest first) until a known confirmed tx
   is reached *in the same block as before* (the boundary), or the end of the history.
3. Returned: confirmed txs above the boundary (new, or re-mined in another block after a reorg) and
   mempool txs not seen before (block fields None). A mempool tx that confirms is returned again with
   its block fields; the store upserts by txid.
4. A tx the cursor knew (in the mempool, or confirmed above the boundary) that is now in neither list
   is looked up with `GET /tx/:txid`: 404 → `Batch.gone` (replaced, evicted or reorged out; retraction
   is decided elsewhere); found → returned in its current state. This costs a request only when
   something disappeared.

Reorgs: a tx_count that goes down (or any stats change) re-reads from the first page. Because the
boundary must match (txid, block hash), txs whose block was orphaned are returned with their new block
fields (or as unconfirmed), vanished ones go to `gone`, and the caller sees the current state. A
re-mine that leaves every count and sum unchanged is not visible from address stats; tip tracking
(block mode) covers it.

Backfill is a poll without a cursor: it pages through the whole history, at most `max_pages`
`/txs/chain` pages per address per poll (the per-tick cap); an unfinished backfill stores where it
stopped (`tail`), lists the address in `Batch.unfinished`, and the next poll continues there (the
`backfill` command polls again at once until no address is unfinished, committing each step, so an
interrupted backfill resumes where it stopped). `progress(address, fetched, total)` is called per page
while backfilling.

One malformed tx does not cost the page: a tx whose txid and status can be read but whose other
fields are malformed (see `watchers.validate`) is skipped with a logged reason, the rest of the page is
used and paging goes on past it; its txid goes into the cursor's `retry` list and is read again with
`GET /tx/:txid` on every later poll (even when the address's stats did not change) until it parses
(returned then), answers 404 (`Batch.gone`) or is listed well-formed again. An element whose txid or
status is unreadable fails the whole page: without them the paging and the boundary cannot be kept honest.

A mempool.space server on its electrum backend (its `/address/:a` answer carries `"electrum": true`;
backend/src/api/bitcoin/electrum-api.ts) has no `/txs/chain` route: its `/address/:a/txs` pages the whole
history, mempool first, 10 at a time, continued with `?after_txid=<last txid of the page>`; a page shorter
than 10 is the end. Its sums are the balance (funded = balance, spent = 0), which keeps the snapshot right.
Such an answer is paged that way, with the same boundary, cursor and per-tx skipping.

Failure isolation: any `SourceError` for one address (after the HTTP client's retries and failover)
puts it in `Batch.failed`, its cursor and its partial data are not returned (never advance past data
not returned), and the other addresses go on. The first failure and the recovery are logged per address.

Cursor state (JSON, per address), version 1:

    {"v": 1,
     "chain_tx_count": 120, "chain_funded": 5000, "chain_spent": 1200,       # /address chain_stats
     "mempool_tx_count": 3, "mempool_funded": 30, "mempool_spent": 0,        # /address mempool_stats
     "top": [["<txid>", "<block hash>"], ...],   # newest confirmed txs (≤ 25), newest first
     "mempool": ["<txid>", ...],                 # mempool txs seen last time
     "tail": null,                               # unfinished backfill: continue after this txid
     "fetched": 120,                             # confirmed txs read by the backfill (progress)
     "retry": ["<txid>", ...]}                   # malformed txs skipped, read again with /tx/:txid

Costs (requests per address per poll, retries included in `Batch.requests`): unchanged 1; new mempool
tx or new block with ≤ 25 new txs 2; each further 25 new confirmed txs +1; each vanished tx +1; a
backfill of N confirmed txs 2 + ceil((N - 25) / 25) (+1 when N is a positive multiple of 25). `fetch_tip=True`
adds one `/blocks/tip/height` per poll and fills `Batch.tip_height`.

Limits: Esplora shows at most 50 mempool txs per address; when the mempool count is larger, txs not
shown are not declared gone (they are kept in the cursor until seen again or confirmed). A replacement
that leaves the address's stats unchanged (an RBF fee bump that only touches another party's change)
is seen when one of them confirms.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from monitor.model import BalanceSnapshot, Batch, ChainTx, Clock, Cursor, MalformedError, SourceError
from monitor.model import normalise_bitcoin_address as _norm
from watchers.http import FailureLog, HttpClient, RequestTally, http_status
from watchers.validate import (
    AddressStats,
    Outspend,
    PageEntry,
    Utxo,
    assert_hex,
    assert_list,
    parse_address_stats,
    parse_block,
    parse_hash,
    parse_height,
    parse_outspends,
    parse_tx,
    parse_tx_page,
    parse_utxos,
)

__all__ = ["EsploraSource", "CHAIN_PAGE", "ELECTRUM_PAGE", "MEMPOOL_LIMIT", "DEFAULT_MAX_PAGES", "CURSOR_VERSION"]

#: Confirmed txs per `/address/:a/txs[/chain/:last]` page (electrs CHAIN_TXS_PER_PAGE).
CHAIN_PAGE = 25
#: History txs per `/address/:a/txs?after_txid=` page of mempool.space's electrum backend.
ELECTRUM_PAGE = 10
#: Mempool txs `/address/:a/txs` shows at most (electrs MAX_MEMPOOL_TXS).
MEMPOOL_LIMIT = 50
#: `/txs/chain` pages read per address per poll during a backfill (25 txs each).
DEFAULT_MAX_PAGES = 40
#: A head walk from a cursor that reads this many pages without reaching its boundary is malformed.
_HARD_PAGE_LIMIT = 10_000
_TOP_KEEP = 25
CURSOR_VERSION = 1

_STATS_KEYS = ("chain_tx_count", "chain_funded", "chain_spent", "mempool_tx_count", "mempool_funded", "mempool_spent")


@dataclass
class _State:
    """The decoded cursor state of one address (see the module docstring for the JSON)."""

    stats: tuple[int, ...]
    top: list[tuple[str, str]] = field(default_factory=list)
    mempool: list[str] = field(default_factory=list)
    tail: str | None = None
    fetched: int = 0
    retry: list[str] = field(default_factory=list)

    def dumps(self) -> str:
        out: dict[str, Any] = {"v": CURSOR_VERSION}
        out.update(zip(_STATS_KEYS, self.stats))
        out.update(top=[list(p) for p in self.top], mempool=self.mempool, tail=self.tail, fetched=self.fetched)
        if self.retry:
            out["retry"] = self.retry
        return json.dumps(out, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str) -> _State:
        """Decode a stored state. :raises ValueError: when it is not a version-1 state."""
        d = json.loads(text)
        if not isinstance(d, dict) or d.get("v") != CURSOR_VERSION:
            raise ValueError("unknown cursor version")
        stats = tuple(d[k] for k in _STATS_KEYS)
        if not all(isinstance(x, int) for x in stats):
            raise ValueError("cursor stats are not integers")
        top = [(assert_hex(t, "top"), assert_hex(h, "top")) for t, h in d["top"]]
        mempool = [assert_hex(t, "mempool") for t in d["mempool"]]
        tail = None if d["tail"] is None else assert_hex(d["tail"], "tail")
        retry = [assert_hex(t, "retry") for t in d.get("retry", [])]  # absent in cursors written before it
        return cls(stats, top, mempool, tail, int(d["fetched"]), retry)


def _stats_key(s: AddressStats) -> tuple[int, ...]:
    return (s.chain_tx_count, s.chain_funded, s.chain_spent, s.mempool_tx_count, s.mempool_funded, s.mempool_spent)


def _touches(tx: ChainTx, address: str) -> bool:
    a = _norm(address)
    return any(i.address is not None and _norm(i.address) == a for i in tx.inputs) or any(
        o.address is not None and _norm(o.address) == a for o in tx.outputs
    )


@dataclass
class _Result:
    """What one address contributed to a poll: txs newest first, its snapshot, gone txids, new state."""

    txs: list[ChainTx]
    snapshot: BalanceSnapshot
    gone: set[str]
    state: _State


class EsploraSource:
    """Esplora REST in address mode: `poll` returns what is new for each watched address since its cursor."""

    def __init__(
        self,
        name: str,
        http: HttpClient,
        addresses: Sequence[str],
        *,
        clock: Clock,
        chain: str = "bitcoin",
        max_pages: int = DEFAULT_MAX_PAGES,
        fetch_tip: bool = False,
        log: logging.Logger | None = None,
    ):
        self.name = name
        self.chain = chain
        self.http = http
        self.addresses = tuple(dict.fromkeys(addresses))  # keep order, drop duplicates
        self._clock = clock
        self._max_pages = max(1, max_pages)
        self._fetch_tip = fetch_tip
        self._log = log or logging.getLogger("watchers.esplora")
        self._failures = FailureLog(self._log)  # per address, while it fails

    def set_addresses(self, addresses: Sequence[str]) -> None:
        """Watch this address list from the next poll on (e.g. after co-spend learned new ones)."""
        self.addresses = tuple(dict.fromkeys(addresses))

    # --- polling ----------------------------------------------------------------------------------

    async def poll(self, cursors: Mapping[str, str], *, progress=None) -> Batch:
        """New and changed txs, cursors and balances for every watched address (see module docstring).

        Never raises for one address: it goes into `Batch.failed` and keeps its old cursor.
        """
        tally = RequestTally()
        by_txid: dict[str, ChainTx] = {}
        cursors_out: list[Cursor] = []
        snapshots: list[BalanceSnapshot] = []
        failed: list[str] = []
        unfinished: list[str] = []
        gone: set[str] = set()
        for address in self.addresses:
            try:
                result = await self._poll_address(address, cursors.get(address), tally, progress)
            except SourceError as exc:
                failed.append(address)
                self._note_failure(address, exc)
                continue
            except Exception:  # a bug must not stop the other addresses; CancelledError passes through
                failed.append(address)
                self._failures.failed(
                    "unexpected error",
                    "esplora address skipped (bug) source=%s address=%s",
                    "esplora address still failing (bug) source=%s address=%s",
                    self.name,
                    address,
                    key=address,
                    level=logging.ERROR,
                    exc_info=True,
                )
                continue
            self._note_success(address)
            for tx in reversed(result.txs):  # oldest first
                known = by_txid.get(tx.txid)
                if known is None or (tx.is_confirmed and not known.is_confirmed):
                    by_txid[tx.txid] = tx
            gone |= result.gone
            snapshots.append(result.snapshot)
            if result.state.tail is not None:
                unfinished.append(address)
            cursors_out.append(Cursor(source=self.name, key=address, state=result.state.dumps()))
        tip = None
        if self._fetch_tip:
            try:
                tip = await self.tip_height(tally=tally)
            except SourceError as exc:
                self._log.warning("esplora tip failed source=%s error=%s", self.name, exc)
        # Confirmed oldest first by height (stable within a block), then unconfirmed.
        txs = sorted(by_txid.values(), key=lambda t: t.block_height if t.block_height is not None else float("inf"))
        return Batch(
            source=self.name,
            txs=tuple(txs),
            cursors=tuple(cursors_out),
            snapshots=tuple(snapshots),
            failed=tuple(failed),
            gone=tuple(sorted(gone - by_txid.keys())),
            tip_height=tip,
            requests=tally.requests,
            unfinished=tuple(unfinished),
        )

    def _load_state(self, address: str, text: str | None) -> _State | None:
        if text is None:
            return None
        try:
            return _State.loads(text)
        except (ValueError, KeyError, TypeError, MalformedError) as exc:
            self._log.warning(
                "esplora cursor unreadable, re-reading history source=%s address=%s error=%s", self.name, address, exc
            )
            return None

    async def _poll_address(self, address: str, cursor: str | None, tally: RequestTally, progress) -> _Result:
        old = self._load_state(address, cursor)
        q = quote(address, safe="")
        stats = await self.http.get_json(f"/address/{q}", parse=lambda d: parse_address_stats(d, address), tally=tally)
        snapshot = stats.snapshot(chain=self.chain, at=int(self._clock.time()))
        key = _stats_key(stats)
        if old is not None and old.stats == key and old.tail is None and not old.retry:
            return _Result([], snapshot, set(), old)

        backfilling = old is None or old.tail is not None
        total = stats.chain_tx_count
        state = _State(
            key,
            list(old.top) if old else [],
            list(old.mempool) if old else [],
            old.tail if old else None,
            old.fetched if old else 0,
        )
        skipped: dict[str, str] = {}  # txid → why, this poll

        def report(fetched: int) -> None:
            if progress is not None and backfilling:
                progress(address, fetched, total)

        new_txs: list[ChainTx] = []  # newest first
        gone: set[str] = set()
        if old is None or old.stats != key:
            base = state.fetched
            head = await self._walk_head(address, q, old, tally, lambda n: report(base + n), stats.electrum)
            new_txs.extend(head.txs)
            skipped.update(head.skipped)
            gone |= head.gone
            state.top, state.mempool = head.top, head.mempool
            state.fetched = base + head.fetched
            if old is None:
                state.tail = head.tail
        if old is not None and old.tail is not None:
            older, state.tail, older_skipped = await self._walk_tail(
                address, q, old.tail, tally, state.fetched, report, stats.electrum
            )
            new_txs.extend(older)
            skipped.update(older_skipped)
            state.fetched += len(older) + len(older_skipped)
        if state.tail is None:
            if backfilling:
                state.fetched = max(state.fetched, total)
                report(state.fetched)
        for txid, reason in skipped.items():
            self._log.warning(
                "esplora tx skipped, retried next poll source=%s address=%s txid=%s reason=%s", self.name, address, txid, reason
            )
        seen_now = {t.txid for t in new_txs} | skipped.keys()
        still = [t for t in (old.retry if old else []) if t not in seen_now]
        kept = await self._retry(address, still, tally, new_txs, gone)
        state.retry = sorted(set(kept) | skipped.keys())
        return _Result(new_txs, snapshot, gone, state)

    async def _retry(self, address: str, txids: list[str], tally: RequestTally, txs: list[ChainTx], gone: set[str]) -> list[str]:
        """Read skipped txs again by id: parsed → appended to `txs`; 404 → `gone`; still malformed → kept."""
        kept: list[str] = []
        for txid in txids:
            try:
                tx = await self.get_tx(txid, tally=tally)
            except MalformedError as exc:
                self._log.debug("esplora tx still malformed source=%s address=%s txid=%s error=%s", self.name, address, txid, exc)
                kept.append(txid)
                continue
            except SourceError as exc:
                if http_status(exc) == 404:
                    gone.add(txid)
                    continue
                raise
            if _touches(tx, address):
                self._log.info("esplora skipped tx now read source=%s address=%s txid=%s", self.name, address, txid)
                txs.append(tx)
            else:
                self._log.warning(
                    "esplora skipped tx does not touch the address, dropped source=%s address=%s txid=%s",
                    self.name,
                    address,
                    txid,
                )
        return kept

    async def _page(self, address: str, path: str, tally: RequestTally, prefix: str) -> list[PageEntry]:
        def parse(data: Any) -> list[PageEntry]:
            entries = parse_tx_page(data, chain=self.chain, prefix=prefix)
            for i, e in enumerate(entries):
                if e.tx is not None and not _touches(e.tx, address):
                    raise MalformedError(f"{prefix}[{i}]: tx {e.txid} does not touch address {address}")
            return entries

        return await self.http.get_json(path, parse=parse, tally=tally)

    async def _next_page(self, address: str, q: str, last: str, tally: RequestTally, electrum: bool) -> list[PageEntry]:
        if electrum:
            return await self._page(address, f"/address/{q}/txs?after_txid={last}", tally, "txs")
        return await self._page(address, f"/address/{q}/txs/chain/{last}", tally, "txs/chain")

    async def _walk_head(
        self, address: str, q: str, old: _State | None, tally: RequestTally, report, electrum: bool = False
    ) -> _Head:
        first = await self._page(address, f"/address/{q}/txs", tally, "txs")
        mempool_entries = [e for e in first if not e.status.confirmed]
        page = [e for e in first if e.status.confirmed]
        raw = first  # the page as listed: electrum pages mix mempool and confirmed txs
        known = dict(old.top) if old else {}
        walked: list[PageEntry] = []
        seen: set[str] = set()
        boundary: str | None = None
        tail: str | None = None
        pages = 0
        while True:
            for e in page:
                if e.txid in seen:
                    raise MalformedError(f"txs/chain: tx {e.txid} listed twice (paging does not advance)")
                seen.add(e.txid)
                if known.get(e.txid) == e.status.block_hash:
                    boundary = e.txid
                    break
                walked.append(e)
            report(len(walked))
            if boundary is not None or (len(raw) < ELECTRUM_PAGE if electrum else len(page) < CHAIN_PAGE):
                break
            last = raw[-1].txid if electrum else page[-1].txid
            if old is None and pages >= self._max_pages:
                tail = last  # per-tick cap reached: the next poll continues from here
                break
            if pages >= _HARD_PAGE_LIMIT:
                raise MalformedError(f"txs/chain: no end after {pages} pages")
            pages += 1
            raw = await self._next_page(address, q, last, tally, electrum)
            mempool_entries += [e for e in raw if not e.status.confirmed]
            page = [e for e in raw if e.status.confirmed]
        mempool_txs = [e.tx for e in mempool_entries if e.tx is not None]

        top = [(e.txid, e.status.block_hash or "") for e in walked]
        old_top_rest: list[tuple[str, str]] = []
        candidates: set[str] = set()
        if old is not None:
            if boundary is not None:
                cut = next(i for i, (t, _) in enumerate(old.top) if t == boundary)
                old_top_rest = old.top[cut:]
                above = {t for t, _ in old.top[:cut]}
            else:
                above = {t for t, _ in old.top}
            candidates = above
        top = (top + old_top_rest)[:_TOP_KEEP]

        shown = {e.txid for e in mempool_entries}
        old_mempool = set(old.mempool) if old else set()
        mempool_ids = [t.txid for t in mempool_txs]
        if len(mempool_entries) >= MEMPOOL_LIMIT:
            # Txs beyond the 50 shown may still be in the mempool: keep them, never call them gone.
            mempool_ids += [t for t in old.mempool if t not in shown and t not in seen] if old else []
        else:
            candidates |= old_mempool
        candidates -= shown | {e.txid for e in walked} | ({boundary} if boundary else set())
        skipped = {e.txid: e.reason or "" for e in walked + mempool_entries if e.tx is None}
        candidates -= skipped.keys()

        txs = [e.tx for e in walked if e.tx is not None] + [t for t in mempool_txs if t.txid not in old_mempool]
        gone: set[str] = set()
        for txid in sorted(candidates):
            try:
                tx = await self.get_tx(txid, tally=tally)
            except SourceError as exc:
                if http_status(exc) == 404:
                    gone.add(txid)
                    continue
                raise
            txs.append(tx)
            if not tx.is_confirmed:
                mempool_ids.append(txid)
        return _Head(txs, gone, top, mempool_ids, tail, len(walked), skipped)

    async def _walk_tail(
        self, address: str, q: str, after: str, tally: RequestTally, fetched: int, report, electrum: bool = False
    ) -> tuple[list[ChainTx], str | None, dict[str, str]]:
        older: list[ChainTx] = []
        skipped: dict[str, str] = {}
        seen: set[str] = set()
        for _ in range(self._max_pages):
            page = await self._next_page(address, q, after, tally, electrum)
            for e in page:
                if e.txid in seen:
                    raise MalformedError(f"txs/chain: tx {e.txid} listed twice (paging does not advance)")
                seen.add(e.txid)
                if e.tx is None:
                    skipped[e.txid] = e.reason or ""
                else:
                    older.append(e.tx)
            report(fetched + len(older) + len(skipped))
            if len(page) < (ELECTRUM_PAGE if electrum else CHAIN_PAGE):
                return older, None, skipped
            after = page[-1].txid
        return older, after, skipped

    def _note_failure(self, address: str, exc: SourceError) -> None:
        reason = f"{type(exc).__name__}: {exc}"
        self._failures.failed(
            reason,
            "esplora address skipped source=%s address=%s error=%s",
            "esplora address still failing source=%s address=%s error=%s",
            self.name,
            address,
            reason,
            key=address,
        )

    def _note_success(self, address: str) -> None:
        self._failures.recovered("esplora address recovered source=%s address=%s", self.name, address, key=address)

    # --- single lookups the rest of the product needs ---------------------------------------------

    async def tip_height(self, *, tally: RequestTally | None = None) -> int:
        """Height of the chain tip (`/blocks/tip/height`). :raises SourceError:"""
        return await self.http.get_text("/blocks/tip/height", parse=lambda t: parse_height(t, "tip height"), tally=tally)

    async def tip_hash(self, *, tally: RequestTally | None = None) -> str:
        """Hash of the chain tip (`/blocks/tip/hash`). :raises SourceError:"""
        return await self.http.get_text("/blocks/tip/hash", parse=lambda t: parse_hash(t, "tip hash"), tally=tally)

    async def block_hash(self, height: int, *, tally: RequestTally | None = None) -> str:
        """Hash of the block at `height` on the current chain (`/block-height/:h`). :raises SourceError:"""
        return await self.http.get_text(f"/block-height/{int(height)}", parse=lambda t: parse_hash(t, "block hash"), tally=tally)

    async def get_tx(self, txid: str, *, tally: RequestTally | None = None) -> ChainTx:
        """One tx by txid (`/tx/:txid`); a 404 means unknown to the chain and the mempool. :raises SourceError:"""
        _check_hex(txid)

        def parse(data: Any) -> ChainTx:
            tx = parse_tx(data, chain=self.chain)
            if tx.txid != txid:
                raise MalformedError(f"txid: expected {txid}, got {tx.txid}")
            return tx

        return await self.http.get_json(f"/tx/{txid}", parse=parse, tally=tally)

    async def get_block(self, block_hash: str, *, tally: RequestTally | None = None) -> dict[str, Any]:
        """Validated header fields of a block (`/block/:hash`): id, height, timestamp, difficulty, ... :raises SourceError:"""
        _check_hex(block_hash)

        def parse(data: Any) -> dict[str, Any]:
            block = parse_block(data)
            if block["id"] != block_hash:
                raise MalformedError(f"id: expected {block_hash}, got {block['id']}")
            return block

        return await self.http.get_json(f"/block/{block_hash}", parse=parse, tally=tally)

    async def coinbase_total(self, block_hash: str, *, tally: RequestTally | None = None) -> int:
        """Total output value of a block's coinbase (first tx of `/block/:hash/txs/0`). :raises SourceError:"""
        _check_hex(block_hash)

        def parse(data: Any) -> int:
            # Only the coinbase is read: another tx of the page being malformed does not matter here.
            first = assert_list(data, "txs", non_empty=True)[0]
            tx = parse_tx(first, chain=self.chain, prefix="txs[0]")
            if not tx.is_coinbase:
                raise MalformedError("[0]: the first transaction of a block must be its coinbase")
            return tx.total_out

        return await self.http.get_json(f"/block/{block_hash}/txs/0", parse=parse, tally=tally)

    async def utxos(self, address: str, *, tally: RequestTally | None = None) -> list[Utxo]:
        """Unspent outputs of an address (`/address/:a/utxo`). :raises SourceError:"""
        return await self.http.get_json(f"/address/{quote(address, safe='')}/utxo", parse=parse_utxos, tally=tally)

    async def outspends(self, txid: str, *, tally: RequestTally | None = None) -> list[Outspend]:
        """Spending status of each output of a tx (`/tx/:txid/outspends`). :raises SourceError:"""
        _check_hex(txid)
        return await self.http.get_json(f"/tx/{txid}/outspends", parse=parse_outspends, tally=tally)


@dataclass
class _Head:
    txs: list[ChainTx]
    gone: set[str]
    top: list[tuple[str, str]]
    mempool: list[str]
    tail: str | None
    fetched: int
    skipped: dict[str, str] = field(default_factory=dict)  # txid → why it could not be read


def _check_hex(value: str) -> None:
    # Caller input, not remote data: a bad txid is a programming error, and must never reach a URL path.
    if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise ValueError(f"expected 64 lower-case hex digits, got {value!r}")
