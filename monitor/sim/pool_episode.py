"""A scripted month of blocks mined by several pools, for the chain-wide miner view (tests, bench, demo).

EVERYTHING HERE IS SIMULATED, except the pools' coinbase tags and payout addresses, which are the bundled
pools-v2 data's (mempool/mining-pools, see monitor/data/pools-v2.LICENSE): those are real pools'
published identifiers, used here only to write simulated coinbases. Who mines which block is drawn from
made-up weights (not measured shares). The script states, for every block, which pool the episode means
it to be (`ScriptedBlock.pool`), so totals can be checked against the script itself.

What the script contains on purpose:
- pools found by tag and address (Foundry USA, AntPool, MARA Pool), by address only (F2Pool, no tag),
  and blocks of no known pool (a simulated address, no tag);
- a pool whose tag changes mid-window: Luxor writes `/LUXOR/` and pays its pools-v2 address in the first
  half, then writes `Luxor Tech` and pays a new (simulated) address;
- a payout address shared by two pools' eras: BTC.com's pools-v2 address is paid with the `/BTC.COM/` tag
  in the first half and, in the second half, with Poolin's `/poolin/` tag (as if Poolin had taken the
  address over): the second era is Poolin's;
- a reorg: `reorg_day`'s last two blocks are orphaned by three AntPool blocks (their txs, and fees, move
  into the new branch).

Every block carries one background payment whose fee the script sets, so a block's reward is the subsidy
plus the fees of the scripted txs it confirms.
"""

from __future__ import annotations

import calendar
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from monitor.sim.chain import SimChain

__all__ = ["ScriptedBlock", "PoolEpisode", "build_pool_episode", "PRE_REORG_BLOCKS"]

COIN = 100_000_000
DAY = 86_400
#: Blocks of `reorg_day` orphaned by the reorg.
PRE_REORG_BLOCKS = 2
#: Fee of each scripted transfer (`transfers`).
TRANSFER_FEE = 5_000
_HALVING = 210_000

# (pool as the episode means it, coinbase tag, payout address or a simulated label, weight) per era.
_FIRST_HALF: tuple[tuple[str, str, str, int], ...] = (
    ("Foundry USA", "Foundry USA Pool", "bc1qxhmdufsvnuaaaer4ynz88fspdsxq2h9e9cetdj", 30),
    ("AntPool", "/AntPool/", "12dRugNcdxK39288NjcDV4GX7rMsKCGn6B", 20),
    ("F2Pool", "", "1KFHE7w8BhaENAswwryaoccDb6qcT6DbYY", 10),
    ("MARA Pool", "MARA Pool", "15MdAHnkxt9TMC2Rj595hsg8Hnv693pPBB", 5),
    ("Luxor", "/LUXOR/", "1MkCDCzHpBsYQivp8MxjY5AkTGG1f2baoe", 5),
    ("BTC.com", "/BTC.COM/", "1Bf9sZvBHPFGVPX71WX2njhd1NXKv5y7v5", 5),
    ("unknown", "", "sim:solo miner", 5),
)
_SECOND_HALF: tuple[tuple[str, str, str, int], ...] = tuple(
    ("Luxor", "Luxor Tech", "sim:luxor new payout", w)
    if p == "Luxor"
    else ("Poolin", "/poolin/", addr, w)
    if p == "BTC.com"
    else (p, tag, addr, w)
    for p, tag, addr, w in _FIRST_HALF
)
_REORG_POOL = ("AntPool", "/AntPool/", "12dRugNcdxK39288NjcDV4GX7rMsKCGn6B")


@dataclass(frozen=True)
class ScriptedBlock:
    """One block as the script means it: whose it is, and the fees of the scripted txs it confirms."""

    height: int
    time: int
    pool: str
    tag: str
    payout: str
    fees: int
    orphaned: bool = False

    @property
    def subsidy(self) -> int:
        return (50 * COIN) >> (self.height // _HALVING)

    @property
    def reward(self) -> int:
        return self.subsidy + self.fees


@dataclass
class PoolEpisode:
    """The chain, the script, and the reorg still to apply (`apply_reorg`)."""

    chain: SimChain
    blocks: list[ScriptedBlock]
    reorg_day: int
    start_time: int
    days: int
    per_day: int
    transfers: dict[int, list[tuple[str, tuple[tuple[str, int], ...]]]] = field(default_factory=dict)
    transfer_txids: list[str] = field(default_factory=list)
    _reorg_done: bool = field(default=False, repr=False)

    def best_blocks(self) -> list[ScriptedBlock]:
        """The scripted blocks of the best chain (orphaned ones left out)."""
        return [b for b in self.blocks if not b.orphaned]

    def expected_by_pool(self) -> dict[str, tuple[int, int]]:
        """Pool → (blocks, reward in sats) of the best chain, from the script."""
        out: dict[str, tuple[int, int]] = {}
        for b in self.best_blocks():
            n, r = out.get(b.pool, (0, 0))
            out[b.pool] = (n + 1, r + b.reward)
        return out

    def apply_reorg(self) -> None:
        """Orphan the last PRE_REORG_BLOCKS blocks of `reorg_day` (they must be the tip) with 3 AntPool blocks."""
        if self._reorg_done:
            return
        tip = self.chain.tip
        assert tip is not None
        orphaned = [b for b in self.blocks if b.height > tip.height - PRE_REORG_BLOCKS]
        fees = sum(b.fees for b in orphaned)
        self.blocks = [b if b not in orphaned else _orphan(b) for b in self.blocks]
        pool, tag, addr = _REORG_POOL
        new = self.chain.reorg(PRE_REORG_BLOCKS, coinbase_to=addr, coinbase_tag=tag, time=orphaned[0].time)
        for i, blk in enumerate(new):
            self.blocks.append(ScriptedBlock(blk.height, blk.time, pool, tag, addr, fees if i == 0 else 0))
        self._reorg_done = True

    def mine_rest(self) -> None:
        """Mine the days after the reorg."""
        _mine_days(self, self.reorg_day + 1, self.days)


def _orphan(b: ScriptedBlock) -> ScriptedBlock:
    return ScriptedBlock(b.height, b.time, b.pool, b.tag, b.payout, b.fees, orphaned=True)


def _mine_days(ep: PoolEpisode, first: int, last: int) -> None:
    chain, rng = ep.chain, ep._rng  # type: ignore[attr-defined]
    payer, payee = ep._payer, ep._payee  # type: ignore[attr-defined]
    for day in range(first, last):
        era = _FIRST_HALF if day < ep.days // 2 else _SECOND_HALF
        names = [e for e in era]
        weights = [e[3] for e in era]
        for k in range(ep.per_day):
            pool, tag, addr, _ = rng.choices(names, weights)[0]
            if addr.startswith("sim:"):
                addr = chain.address(addr[4:])
            fee = rng.randrange(1_000_000, 3_000_000, 1_000)
            chain.pay([payer], [(payee, rng.randrange(COIN // 10, COIN, 1_000))], fee=fee, change_address=payer)
            if k == 0:
                for source, outputs in ep.transfers.get(day, ()):
                    tx = chain.pay([source], list(outputs), fee=TRANSFER_FEE, change_address=source)
                    ep.transfer_txids.append(tx.txid)
                    fee += TRANSFER_FEE
            t = ep.start_time + day * DAY + (k * DAY) // ep.per_day + 300
            blk = chain.mine(time=t, coinbase_to=addr, coinbase_tag=tag)[0]
            ep.blocks.append(ScriptedBlock(blk.height, blk.time, pool, tag, addr, fee))


def build_pool_episode(
    *,
    days: int = 10,
    per_day: int = 12,
    reorg_day: int | None = None,
    seed: int = 7,
    start: tuple[int, int, int] = (2026, 3, 1),
    start_height: int = 938_000,
    difficulty: float = 150.5e12,
    wallets: Mapping[str, int] | None = None,
    transfers: Mapping[int, Sequence[tuple[str, Sequence[tuple[str, int]]]]] | None = None,
) -> PoolEpisode:
    """Mine days 0..reorg_day of the episode (the reorg and the rest wait for `apply_reorg`, `mine_rest`).

    `wallets` (address → sats) are funded in the opening block; `transfers` (day → [(source address,
    [(destination, sats), ...])]) are paid in the first block of their day, each with a TRANSFER_FEE fee.
    """
    reorg_day = days // 2 - 1 if reorg_day is None else reorg_day
    start_time = calendar.timegm((*start, 0, 0, 0))
    chain = SimChain(start_height=start_height - 1, start_time=start_time - DAY, difficulty=difficulty, seed=seed)
    payer, payee = chain.address("episode payer"), chain.address("episode payee")
    chain.fund(payer, 10_000 * COIN, confirmed=False)
    chain.fund(payee, COIN, confirmed=False)
    for address, value in (wallets or {}).items():
        chain.fund(address, value, confirmed=False)
    # One opening block (the day before) confirms the funding; it belongs to no pool and is not scanned.
    chain.mine(time=start_time - 600, coinbase_to=chain.address("opening miner"))
    ep = PoolEpisode(
        chain,
        [],
        reorg_day,
        start_time,
        days,
        per_day,
        {d: [(src, tuple(outs)) for src, outs in ts] for d, ts in (transfers or {}).items()},
    )
    ep._rng = random.Random(seed)  # type: ignore[attr-defined]
    ep._payer, ep._payee = payer, payee  # type: ignore[attr-defined]
    _mine_days(ep, 0, reorg_day + 1)
    return ep


def totals(blocks: list[ScriptedBlock]) -> Mapping[str, int]:
    """Reward per pool of the given blocks (helper for the report)."""
    out: dict[str, int] = {}
    for b in blocks:
        out[b.pool] = out.get(b.pool, 0) + b.reward
    return out
