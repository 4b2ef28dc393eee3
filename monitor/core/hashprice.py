"""Market context from chain data and a price: hashrate, subsidy, fees, hashprice, breakeven, scenarios.

Pure functions; prices and blocks are fetched elsewhere (watchers) and passed in.

Formulas (elektronics.dev/docs/hashprice; T. Blummer, "Bitcoin mining calculations"; economics.md §2):
- a block at difficulty D takes D·2^32 hashes on average, one block per 600 s, so the network hashrate is
  D·2^32/600 H/s;
- 144 blocks a day share the reward (subsidy + average fees), so one PH/s earns
  144 · reward · 1e15 / hashrate = (1e15 · 86400 / (D · 2^32)) · reward BTC a day; times the price, that
  is the hashprice in USD per PH/s per day;
- one PH/s at e J/TH draws e kW, i.e. e·24 kWh a day, so it breaks even at hashprice / (e·24) USD/kWh.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from monitor.bundled import SCENARIO_PRICES
from monitor.model import SATS_PER_BTC, Entity, Fact, MarketContext

__all__ = [
    "HALVING_INTERVAL",
    "network_hashrate",
    "block_subsidy_sat",
    "avg_fees_sat",
    "hashprice_usd_per_ph_day",
    "breakeven_power_usd_per_kwh",
    "build_context",
    "MinerBelowCost",
    "Scenario",
    "scenarios",
    "default_scenario_prices",
    "DIFFICULTY_CHANGES",
]

HALVING_INTERVAL = 210_000
#: Difficulty cases of the scenario view: a 10% drop (as after the -7.7% of 2026-03-20 and the -11% of
#: Feb 2026, coingeek via economics.md §2) and a 10% rise (as the +14.7% jump to 144.4 T).
DIFFICULTY_CHANGES = (-0.10, 0.10)
_INITIAL_SUBSIDY_SAT = 50 * SATS_PER_BTC
_BLOCKS_PER_DAY = 144  # 86,400 s / 600 s target spacing
_HASHES_PER_DIFFICULTY = 2**32


def network_hashrate(difficulty: float) -> float:
    """Network hashrate in H/s implied by a difficulty (difficulty × 2^32 / 600).

    :raises ValueError: when difficulty is not positive.
    """
    if not difficulty > 0:
        raise ValueError(f"difficulty must be positive, got {difficulty!r}")
    return difficulty * _HASHES_PER_DIFFICULTY / 600


def block_subsidy_sat(height: int) -> int:
    """Block subsidy at a height in satoshis: 50 BTC halved every 210,000 blocks, 0 after 64 halvings.

    :raises ValueError: for a negative height.
    """
    if height < 0:
        raise ValueError(f"height must be >= 0, got {height}")
    halvings = height // HALVING_INTERVAL
    # Bitcoin Core's GetBlockSubsidy guards the shift the same way (a shift >= 64 is undefined in C++).
    if halvings >= 64:
        return 0
    return _INITIAL_SUBSIDY_SAT >> halvings


def avg_fees_sat(coinbase_totals: Sequence[tuple[int, int]]) -> int:
    """Average fees per block: each coinbase's output total minus its height's subsidy, averaged (floor).

    A coinbase may claim less than it could, so a negative difference counts as zero fees.

    :raises ValueError: when no blocks are given (pass 0 fees explicitly for a subsidy-only figure).
    """
    if not coinbase_totals:
        raise ValueError("no coinbase totals to average")
    fees = [max(0, total - block_subsidy_sat(height)) for height, total in coinbase_totals]
    return sum(fees) // len(fees)


def hashprice_usd_per_ph_day(difficulty: float, btc_usd: float, subsidy_sat: int, avg_fees_sat: int = 0) -> float:
    """Hashprice in USD per PH/s per day: 144 × (subsidy + fees, BTC) × price × 1e15 / hashrate.

    :raises ValueError: when difficulty is not positive.
    """
    reward_btc = (subsidy_sat + avg_fees_sat) / SATS_PER_BTC
    return _BLOCKS_PER_DAY * reward_btc * btc_usd * 1e15 / network_hashrate(difficulty)


def breakeven_power_usd_per_kwh(hashprice: float, j_per_th: float) -> float:
    """Power price (USD/kWh) at which a fleet of `j_per_th` J/TH earns exactly its power bill.

    :raises ValueError: when the efficiency is not positive.
    """
    if not j_per_th > 0:
        raise ValueError(f"efficiency must be positive, got {j_per_th!r}")
    return hashprice / (j_per_th * 24)


def build_context(
    at: int,
    *,
    btc_usd: float | None,
    price_at: int | None,
    price_source: str,
    staleness_bound: int,
    difficulty: float | None,
    height: int | None,
    avg_fees_sat: int | None,
    asset_usd: float | None = None,
    price_granularity: int | None = None,
    price_start: int | None = None,
) -> MarketContext:
    """MarketContext at `at`: the price marked stale when it was observed more than `staleness_bound`
    seconds away from `at` (before or after), and the hashprice when price, difficulty and height are known.

    :raises ValueError: when a price comes without its observation time.
    """
    if btc_usd is not None and price_at is None:
        raise ValueError("a price needs the time it was observed (price_at)")
    is_stale = btc_usd is not None and price_at is not None and abs(at - price_at) > staleness_bound
    subsidy = block_subsidy_sat(height) if height is not None else None
    hashprice = None
    if btc_usd is not None and difficulty and subsidy is not None:
        hashprice = hashprice_usd_per_ph_day(difficulty, btc_usd, subsidy, avg_fees_sat or 0)
    parts = []
    if height is not None:
        parts.append(f"height {height}")
    if difficulty:
        parts.append(f"difficulty {difficulty:.6g}")
    if avg_fees_sat is not None:
        parts.append(f"avg fees {avg_fees_sat} sat/block")
    return MarketContext(
        at=at,
        btc_usd=btc_usd,
        price_at=price_at if btc_usd is not None else None,
        price_source=price_source if btc_usd is not None else "",
        is_price_stale=is_stale,
        asset_usd=asset_usd if asset_usd is not None else btc_usd,
        difficulty=difficulty,
        height=height,
        subsidy_sat=subsidy,
        avg_fees_sat=avg_fees_sat,
        hashprice_usd=hashprice,
        context_source=("chain: " + ", ".join(parts)) if parts else "",
        price_granularity=price_granularity if btc_usd is not None else None,
        price_start=price_start if btc_usd is not None else None,
    )


@dataclass(frozen=True)
class MinerBelowCost:
    """A tracked miner whose cash cost per BTC is above a scenario price."""

    name: str
    cash_cost: Fact
    gap_pct: float  # how far the price is below the cost, in percent of the cost


@dataclass(frozen=True)
class Scenario:
    """One BTC price scenario: hashprice, breakeven power price per efficiency, miners below cost."""

    label: str
    price: float
    hashprice: float  # USD per PH/s per day
    breakeven: tuple[tuple[float, float], ...]  # (J/TH, USD/kWh), in the order given
    below_cost: tuple[MinerBelowCost, ...]  # most underwater first
    fleet_breakeven: tuple[tuple[str, float, float], ...] = ()  # (miner, its J/TH, USD/kWh)
    #: Hashprice at this price with the difficulty changed: (change, e.g. -0.10, difficulty, USD/PH/day).
    difficulty_cases: tuple[tuple[float, float, float], ...] = ()


def scenarios(
    prices: Sequence[float | tuple[str, float]],
    difficulty: float,
    height: int,
    avg_fees_sat: int,
    efficiencies: Sequence[float],
    miners: Sequence[Entity],
    difficulty_changes: Sequence[float] = DIFFICULTY_CHANGES,
) -> list[Scenario]:
    """Hashprice, breakeven power prices and below-cost miners for each price (a float or (label, price)),
    and the hashprice at each `difficulty_changes` step (-10% and +10% by default).

    Miners without a cash-cost fact are left out of `below_cost`; those without an efficiency fact are
    left out of `fleet_breakeven`.
    """
    subsidy = block_subsidy_sat(height)
    out = []
    for item in prices:
        label, price = item if isinstance(item, tuple) else (f"${item:,.0f}", item)
        hp = hashprice_usd_per_ph_day(difficulty, price, subsidy, avg_fees_sat)
        below = [
            MinerBelowCost(
                m.name, m.profile.cash_cost_usd, (m.profile.cash_cost_usd.value - price) / m.profile.cash_cost_usd.value * 100
            )
            for m in miners
            if m.kind == "miner" and m.profile.cash_cost_usd is not None and price < m.profile.cash_cost_usd.value
        ]
        below.sort(key=lambda b: (-b.gap_pct, b.name))
        fleets = tuple(
            (m.name, m.profile.efficiency_j_th.value, breakeven_power_usd_per_kwh(hp, m.profile.efficiency_j_th.value))
            for m in miners
            if m.kind == "miner" and m.profile.efficiency_j_th is not None and m.profile.efficiency_j_th.value > 0
        )
        out.append(
            Scenario(
                label=label,
                price=price,
                hashprice=hp,
                breakeven=tuple((e, breakeven_power_usd_per_kwh(hp, e)) for e in efficiencies),
                below_cost=tuple(below),
                fleet_breakeven=fleets,
                difficulty_cases=tuple(
                    (c, difficulty * (1 + c), hashprice_usd_per_ph_day(difficulty * (1 + c), price, subsidy, avg_fees_sat))
                    for c in difficulty_changes
                ),
            )
        )
    return out


def default_scenario_prices(today: float | None = None) -> list[tuple[str, float]]:
    """The default scenarios as (label, price): CoinShares' $100k and $80k cases, today's price when
    known, and the all-time high (`monitor.bundled.SCENARIO_PRICES`, each with its source)."""
    fixed = [(s.label, s.price.value) for s in SCENARIO_PRICES]
    if today is None:
        return fixed
    return fixed[:2] + [(f"today (${today:,.0f})", today)] + fixed[2:]
