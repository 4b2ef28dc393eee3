"""Mining pools: attribute blocks to pools (pools-v2.json) and follow pool payouts one hop to miners' wallets.

`monitor/data/pools-v2.json` is mempool/mining-pools at commit 6abbdc8b (MIT, see pools-v2.LICENSE):
per pool, its coinbase payout addresses and coinbase tags. A block is attributed like mempool.space and
0xB10C's pool identification do: a coinbase output paying a pool's address first (harder to fake), then
a pool tag found in the coinbase scriptSig (UTF-8, lossy); when both are known and disagree, the
address wins and the disagreement is recorded.

Payout following (Coin Metrics' "1-hop" view): for a pool whose miner is known (`owners`, e.g. MARA Pool
→ MARA, MARA's own pool), the pool's payout addresses are read like watched addresses (an Esplora
address-mode source with its own cursors, `<source>:pools`). Coinbases paying them are pool blocks;
confirmed txs spending from them are payouts, and each output that is not a pool address is a
recipient. Every payout is stored as evidence of its recipient (height, txid, amount); a recipient paid
at least `min_payouts` times is proposed as a candidate address of the miner (`entities candidates`),
or accepted at once when it reaches `auto_accept_payouts`. Recipients already owned by another entity
(an exchange deposit) are never proposed; rejected addresses never come back.

For a pool shared by many miners (Foundry USA, Luxor), the recipients are all its members: map such a
pool to a miner only with care, keep auto-accept off, and review candidates by hand.

On-chain production (`production_check`) is then the coinbase rewards of the miner's pool blocks and
the payouts its accepted wallets received over a window, next to the reported monthly figure.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from monitor.bundled import short_source
from monitor.clock import iso
from monitor.core.registry import Registry, normalise_address
from monitor.discovery.addressbook import propose
from monitor.discovery.reconcile import format_btc_amount
from monitor.model import SATS_PER_BTC, ChainTx, EntityAddress, Fact, MalformedError, SourceError
from storage import AsyncStore, Store
from storage.discovery import (
    Evidence,
    add_evidence,
    address_row,
    evidence_rows,
    pool_block_rows,
    pool_blocks_known,
    save_pool_block,
)
from watchers.addresses import InvalidAddress, validate_address

__all__ = [
    "POOLS_SOURCE",
    "DEFAULT_POOL_OWNERS",
    "PROPOSE_MIN_PAYOUTS",
    "Pool",
    "PoolIndex",
    "BlockAttribution",
    "Payout",
    "Proposal",
    "FollowResult",
    "ProductionCheck",
    "load_pools",
    "coinbase_text",
    "attribute_block",
    "payouts_of",
    "proposals",
    "coinbase_scriptsig",
    "follow_pool_payouts",
    "production_check",
]

log = logging.getLogger("treasury_monitor.pools")

POOLS_SOURCE = "mempool/mining-pools pools-v2.json at commit 6abbdc8b98 (2026-02-24, MIT)"
#: Pools whose coinbase payouts are followed to a miner's wallets: pools-v2 name → registry entity.
#: MARA Pool is MARA's own pool, so its payouts are MARA's.
DEFAULT_POOL_OWNERS: Mapping[str, str] = {"MARA Pool": "MARA"}
#: A recipient paid this many times by the pool is proposed ("repeated pool payouts").
PROPOSE_MIN_PAYOUTS = 2
#: Coinbase scriptSigs fetched per run to confirm pool tags (one request each).
MAX_TAG_LOOKUPS = 100


@dataclass(frozen=True)
class Pool:
    """One pools-v2 entry: name, payout addresses valid on the network, coinbase tags."""

    id: int
    name: str
    addresses: tuple[str, ...]
    tags: tuple[str, ...]
    link: str = ""


@dataclass(frozen=True)
class PoolIndex:
    """Pools by name, by payout address and by tag (longest tags first)."""

    pools: tuple[Pool, ...]
    network: str = "mainnet"
    by_name: dict[str, Pool] = field(default_factory=dict, compare=False)
    by_address: dict[str, Pool] = field(default_factory=dict, compare=False)
    tags: tuple[tuple[str, Pool], ...] = ()

    def pool_of_address(self, address: str | None) -> Pool | None:
        """The pool a payout address belongs to, or None."""
        return self.by_address.get(normalise_address("bitcoin", address)) if address else None

    def pool_of_tag(self, text: str) -> tuple[Pool, str] | None:
        """(pool, tag) of the longest pool tag found in a coinbase text, or None."""
        for tag, pool in self.tags:
            if tag in text:
                return pool, tag
        return None


def _index(pools: list[Pool], network: str) -> PoolIndex:
    by_address = {normalise_address("bitcoin", a): p for p in pools for a in p.addresses}
    tags = tuple(sorted(((t, p) for p in pools for t in p.tags if t), key=lambda tp: (-len(tp[0]), tp[0])))
    return PoolIndex(tuple(pools), network, {p.name: p for p in pools}, by_address, tags)


def load_pools(network: str = "mainnet", path: str | Path | None = None) -> PoolIndex:
    """The bundled pools-v2.json (or `path`); addresses not valid on `network` are left out (signet pools)."""
    if path is None:
        text = resources.files("monitor.data").joinpath("pools-v2.json").read_text(encoding="utf-8")
    else:
        text = Path(path).read_text(encoding="utf-8")
    out = []
    for d in json.loads(text):
        addrs = []
        for a in d.get("addresses", []):
            try:
                addrs.append(validate_address(a, network).address)
            except InvalidAddress:
                continue
        out.append(Pool(int(d["id"]), str(d["name"]), tuple(addrs), tuple(d.get("tags", [])), str(d.get("link", ""))))
    return _index(out, network)


def coinbase_text(scriptsig: bytes) -> str:
    """A coinbase scriptSig as text (UTF-8, invalid bytes replaced), where pool tags are searched."""
    return scriptsig.decode("utf-8", errors="replace")


@dataclass(frozen=True)
class BlockAttribution:
    """Which pool mined a block and how that was decided."""

    pool: Pool
    matched_by: str  # address | tag | address+tag
    pool_address: str = ""
    reward: int = 0  # what the coinbase paid the pool's addresses (all outputs when matched by tag only)
    tag: str = ""
    tag_pool: str = ""  # the pool the tag names when it disagrees with the address


def attribute_block(coinbase: ChainTx, pools: PoolIndex, scriptsig: bytes | None = None) -> BlockAttribution | None:
    """The pool of a block from its coinbase: payout address first, then the scriptSig tag (pure)."""
    if not coinbase.is_coinbase:
        return None
    tagged = pools.pool_of_tag(coinbase_text(scriptsig)) if scriptsig else None
    paid: dict[str, int] = {}
    first: dict[str, str] = {}
    for o in coinbase.outputs:
        p = pools.pool_of_address(o.address)
        if p is not None and o.address:
            paid[p.name] = paid.get(p.name, 0) + o.value
            first.setdefault(p.name, o.address)
    if paid:
        name = max(paid, key=lambda n: paid[n])
        pool = pools.by_name[name]
        if tagged is None:
            return BlockAttribution(pool, "address", first[name], paid[name])
        tpool, tag = tagged
        if tpool.name == name:
            return BlockAttribution(pool, "address+tag", first[name], paid[name], tag)
        return BlockAttribution(pool, "address", first[name], paid[name], tag, tag_pool=tpool.name)
    if tagged is not None:
        tpool, tag = tagged
        return BlockAttribution(tpool, "tag", "", coinbase.total_out, tag)
    return None


@dataclass(frozen=True)
class Payout:
    """One output of a pool payout tx to a non-pool address."""

    pool: str
    txid: str
    n: int
    address: str
    value: int
    block_height: int | None
    block_time: int | None
    spent_from: tuple[str, ...] = ()  # the txids whose outputs the payout spent (coinbases, usually)


def payouts_of(tx: ChainTx, pools: PoolIndex, followed: Iterable[str] | None = None) -> list[Payout]:
    """The recipients of a tx that spends from a pool's payout address (pure); [] for any other tx.

    Outputs to any pool address (change, consolidation, another pool) are not recipients.
    """
    if tx.is_coinbase:
        return []
    names = set(followed) if followed is not None else None
    spending = [pools.pool_of_address(i.address) for i in tx.inputs]
    pool = next((p for p in spending if p is not None and (names is None or p.name in names)), None)
    if pool is None:
        return []
    spent_from = tuple(dict.fromkeys(i.prev_txid for i, p in zip(tx.inputs, spending) if p is pool and i.prev_txid))
    return [
        Payout(
            pool.name, tx.txid, o.n, normalise_address("bitcoin", o.address), o.value, tx.block_height, tx.block_time, spent_from
        )
        for o in tx.outputs
        if o.address and o.value > 0 and pools.pool_of_address(o.address) is None
    ]


@dataclass(frozen=True)
class Proposal:
    """A recipient proposed (or auto-accepted) as a miner's address, with its payout evidence."""

    entity: str
    address: str
    payouts: int
    total: int
    first_height: int | None
    last_height: int | None
    status: str  # candidate | active
    outcome: str = ""  # added | known | rejected | conflict:<owner> (after storing)

    def summary(self, pool: str) -> str:
        span = f"blocks {self.first_height}-{self.last_height}" if self.first_height is not None else "unconfirmed"
        return f"{self.payouts} {pool} payouts, {format_btc_amount(self.total)} BTC, {span}"


def proposals(
    evidence: Mapping[str, list[dict[str, Any]]],
    *,
    entity: str,
    min_payouts: int = PROPOSE_MIN_PAYOUTS,
    auto_accept_payouts: int | None = None,
) -> list[Proposal]:
    """Recipients with enough payouts, from their stored payout evidence (address → rows) (pure)."""
    out = []
    for address, rows in sorted(evidence.items()):
        n = len({(r["txid"]) for r in rows})
        if n < min_payouts:
            continue
        heights = [r["block_height"] for r in rows if r["block_height"] is not None]
        status = "active" if auto_accept_payouts is not None and n >= auto_accept_payouts else "candidate"
        out.append(
            Proposal(
                entity,
                address,
                n,
                sum(r["value_units"] or 0 for r in rows),
                min(heights, default=None),
                max(heights, default=None),
                status,
            )
        )
    return out


async def coinbase_scriptsig(source: Any, txid: str) -> bytes | None:
    """The coinbase scriptSig of `txid` from an Esplora source (`/tx/:txid` → vin[0].scriptsig), or None.

    ChainTx does not keep scriptSigs; this is one request per coinbase. None when the source cannot
    answer (no HTTP client, or an error: the block stays attributed by address).
    """
    own = getattr(source, "coinbase_scriptsig", None)
    if own is not None:  # a source that knows how (the natural home of this request is watchers/)
        try:
            return await own(txid)
        except SourceError as exc:
            log.warning("coinbase scriptsig lookup failed txid=%s error=%s", txid, exc)
            return None
    http = getattr(source, "http", None)
    if http is None:
        return None

    def parse(data: Any) -> bytes:
        try:
            vin = data["vin"][0]
            if vin.get("is_coinbase") is not True:
                raise MalformedError(f"tx {txid} is not a coinbase")
            return bytes.fromhex(vin["scriptsig"])
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise MalformedError(f"tx {txid}: no coinbase scriptsig ({exc})") from exc

    try:
        return await http.get_json(f"/tx/{txid}", parse=parse)
    except SourceError as exc:
        log.warning("coinbase scriptsig lookup failed txid=%s error=%s", txid, exc)
        return None


@dataclass(frozen=True)
class FollowResult:
    """What one pass of payout following did."""

    pools: tuple[str, ...] = ()
    txs: int = 0
    new_blocks: int = 0
    tag_mismatches: int = 0
    payouts: int = 0
    proposals: tuple[Proposal, ...] = ()
    failed: tuple[str, ...] = ()
    requests: int = 0

    @property
    def proposed(self) -> list[Proposal]:
        return [p for p in self.proposals if p.outcome == "added" and p.status == "candidate"]

    @property
    def accepted(self) -> list[Proposal]:
        return [p for p in self.proposals if p.outcome == "added" and p.status == "active"]


def _commit_follow(
    store: Store,
    blocks: list[tuple[ChainTx, BlockAttribution]],
    payouts: list[Payout],
    owner_of: Mapping[str, str],
    registry: Registry,
    cursors,
    *,
    now: int,
    min_payouts: int,
    auto_accept_payouts: int | None,
) -> list[Proposal]:
    out: list[Proposal] = []
    with store.batch():
        for cb, att in blocks:
            save_pool_block(
                store,
                {
                    "chain": cb.chain,
                    "txid": cb.txid,
                    "pool": att.pool.name,
                    "pool_address": att.pool_address,
                    "block_height": cb.block_height,
                    "block_hash": cb.block_hash,
                    "block_time": cb.block_time,
                    "reward_units": att.reward,
                    "matched_by": att.matched_by,
                    "tag": att.tag,
                    "tag_pool": att.tag_pool,
                },
                now=now,
            )
        touched: dict[str, set[str]] = {}
        for p in payouts:
            entity = owner_of[p.pool]
            owner = registry.entity_of("bitcoin", p.address)
            if owner is not None and owner.name != entity:
                continue  # paid straight to an exchange (or another entity): not the miner's wallet
            row = address_row(store, "bitcoin", p.address)
            if row is not None and row["entity"] != entity and row["status"] != "rejected":
                continue
            add_evidence(
                store,
                [
                    Evidence(
                        "bitcoin",
                        p.address,
                        entity,
                        "pool_payout",
                        p.txid,
                        p.block_height,
                        p.block_time,
                        p.value,
                        {"pool": p.pool, "n": p.n, "spent_from": list(p.spent_from)},
                    )
                ],
                now=now,
            )
            touched.setdefault(entity, set()).add(p.address)
        for entity, addrs in touched.items():
            ev = {a: evidence_rows(store, chain="bitcoin", address=a, kind="pool_payout") for a in sorted(addrs)}
            pool_names = sorted({r["detail"].get("pool", "") for rows in ev.values() for r in rows})
            for prop in proposals(ev, entity=entity, min_payouts=min_payouts, auto_accept_payouts=auto_accept_payouts):
                summary = prop.summary("/".join(pool_names))
                a = EntityAddress(
                    "bitcoin",
                    prop.address,
                    source=f"recipient of {summary} (1-hop from coinbase; pools from {POOLS_SOURCE})",
                    learned_by="pool_payout",
                    as_of=(iso(max(r["block_time"] or 0 for r in ev[prop.address])) or "")[:10],
                    evidence=summary,
                )
                outcome = propose(store, entity, a, status=prop.status, now=now, refresh_origin=True)
                out.append(replace(prop, outcome=outcome))
        store.set_cursors(cursors, now=now)
    return out


async def follow_pool_payouts(
    store: AsyncStore,
    source: Any,
    registry: Registry,
    *,
    now: int,
    pools: PoolIndex | None = None,
    owners: Mapping[str, str] = DEFAULT_POOL_OWNERS,
    min_payouts: int = PROPOSE_MIN_PAYOUTS,
    auto_accept_payouts: int | None = None,
    fetch_tags: bool = True,
    max_tag_lookups: int = MAX_TAG_LOOKUPS,
) -> FollowResult:
    """One pass: read new txs of the followed pools' payout addresses, store pool blocks, payout evidence
    and proposals, and the advanced cursors, in one transaction.

    `source` is an Esplora source (its `http`, `name`, `chain` are reused with the pool addresses and
    cursors stored as `<source.name>:pools`).
    """
    from watchers.esplora import EsploraSource

    pools = pools or await asyncio.to_thread(load_pools)  # a file read: off the loop
    owner_of = {p: e for p, e in owners.items() if p in pools.by_name and e in registry}
    for p, e in owners.items():
        if p not in owner_of:
            log.warning("pool payouts not followed: pool %r or entity %r unknown", p, e)
    addresses = [a for p in owner_of for a in pools.by_name[p].addresses]
    if not addresses:
        return FollowResult()
    name = f"{source.name}:pools"
    src = EsploraSource(name, source.http, addresses, clock=_FixedClock(now), chain=getattr(source, "chain", "bitcoin"))
    cursors = await store.run(Store.cursors, name)
    batch = await src.poll(cursors)
    requests = batch.requests

    coinbases = [t for t in batch.txs if t.is_coinbase and t.is_confirmed]
    known = await store.run(pool_blocks_known, "bitcoin", [t.txid for t in coinbases])
    blocks: list[tuple[ChainTx, BlockAttribution]] = []
    lookups = 0
    mismatches = 0
    for cb in coinbases:
        if cb.txid in known:
            continue
        scriptsig = None
        if fetch_tags and lookups < max_tag_lookups:
            scriptsig = await coinbase_scriptsig(source, cb.txid)
            lookups += 1
            requests += 1
        att = attribute_block(cb, pools, scriptsig)
        if att is None:
            continue
        if att.tag_pool:
            mismatches += 1
            log.warning(
                "coinbase %s pays %s but its tag %r names %s; attributed by address",
                cb.txid,
                att.pool.name,
                att.tag,
                att.tag_pool,
            )
        blocks.append((cb, att))
    payouts = [p for t in batch.txs if t.is_confirmed for p in payouts_of(t, pools, owner_of)]
    props = await store.run(
        _commit_follow,
        blocks,
        payouts,
        owner_of,
        registry,
        batch.cursors,
        now=now,
        min_payouts=min_payouts,
        auto_accept_payouts=auto_accept_payouts,
    )
    return FollowResult(
        tuple(owner_of), len(batch.txs), len(blocks), mismatches, len(payouts), tuple(props), batch.failed, requests
    )


class _FixedClock:
    """The pass's `now` for the snapshot times of the pool source (no sleeping happens in a poll)."""

    def __init__(self, now: int):
        self._now = now

    def time(self) -> float:
        return float(self._now)

    async def sleep(self, seconds: float) -> None:  # pragma: no cover - polls do not sleep
        return None


# --- production -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProductionCheck:
    """On-chain production of a miner over a window next to its reported monthly figure."""

    entity: str
    pools: tuple[str, ...]
    since: int
    until: int
    blocks: int
    block_reward_sat: int
    payouts: int
    payout_sat: int
    wallets: int  # accepted wallets that received payouts in the window
    reported: Fact | None
    source: str = ""

    @property
    def days(self) -> float:
        return (self.until - self.since) / 86400

    @property
    def observed_sat(self) -> int:
        """Payouts to accepted wallets when there are any, else the pool blocks' coinbase rewards."""
        return self.payout_sat if self.wallets else self.block_reward_sat

    @property
    def reported_window_sat(self) -> int | None:
        """The reported monthly figure scaled to the window (30-day months)."""
        if self.reported is None:
            return None
        return round(self.reported.value * SATS_PER_BTC * self.days / 30)

    @property
    def ratio(self) -> float | None:
        rep = self.reported_window_sat
        return None if not rep else self.observed_sat / rep

    def sentence(self) -> str:
        """One line with both figures and their sources."""
        window = f"{self.days:.0f} days to {(iso(self.until) or '')[:10]}"
        seen = (
            f"{self.blocks} {'/'.join(self.pools)} blocks ({format_btc_amount(self.block_reward_sat)} BTC in coinbases), "
            f"{self.payouts} payouts ({format_btc_amount(self.payout_sat)} BTC) to {self.wallets} accepted wallet(s)"
        )
        if self.reported is None:
            return f"on-chain production, {window}: {seen}; no reported monthly figure"
        rep = f"{self.reported.value:,.0f} BTC/month ({short_source(self.reported)}, as of {self.reported.as_of})"
        share = f": {self.ratio:.0%} of the reported rate" if self.ratio is not None else ""
        return f"on-chain production, {window}: {seen}; reported {rep}{share}"


def production_check(
    store: Store,
    registry: Registry,
    entity: str,
    *,
    owners: Mapping[str, str] = DEFAULT_POOL_OWNERS,
    days: int = 30,
    until: int | None = None,
) -> ProductionCheck | None:
    """A miner's on-chain production from its pool blocks and payouts over `days` (store thread).

    The window ends at `until`, default just after the newest pool block or accepted-wallet payout seen
    (so an old chain or a paused follower still gives a full window). None when no pool of the entity is followed or seen.
    """
    pools = tuple(p for p, e in owners.items() if e == entity)
    if not pools:
        return None
    all_blocks = pool_block_rows(store, pools=pools)
    active = {r["address"] for r in store.address_rows(entity=entity, status="active")}
    all_pays = [e for e in evidence_rows(store, entity=entity, kind="pool_payout") if e["address"] in active]
    if until is None:
        times = [b["block_time"] for b in all_blocks if b["block_time"] is not None]
        times += [e["block_time"] for e in all_pays if e["block_time"] is not None]
        if not times:
            return None
        until = max(times) + 1
    since = until - days * 86400
    blocks = [b for b in all_blocks if b["block_time"] is not None and since <= b["block_time"] < until]
    pays = [e for e in all_pays if e["block_time"] is not None and since <= e["block_time"] < until]
    return ProductionCheck(
        entity=entity,
        pools=pools,
        since=since,
        until=until,
        blocks=len(blocks),
        block_reward_sat=sum(b["reward_units"] for b in blocks),
        payouts=len(pays),
        payout_sat=sum(e["value_units"] or 0 for e in pays),
        wallets=len({e["address"] for e in pays}),
        reported=registry.get(entity).profile.monthly_production_btc if entity in registry else None,
        source=f"pool blocks and payouts seen on chain; pools from {POOLS_SOURCE}",
    )
