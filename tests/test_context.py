"""Market context: hashrate, subsidy, fees, hashprice and breakeven against published figures.

Sources of the expected numbers (all in shared/data/economics.md, copied into comments here):
- elektronics.dev/docs/hashprice worked example: D = 1e14, P = $100,000, reward 3.125 BTC → ≈ $62.81/PH/day.
- CoinShares Q1-2026 mining report (via tokenpost.com/news/insights/19340 and t.signalplus.com): hashprice
  $28–30/PH/day in Q1 2026 (BTC ~$68–70k), $36–38 in Q4 2025; network hashrate ~1,020 EH/s early 2026.
- Difficulty levels 125.86 T (Feb 2026), 136 T (Sep 2025), 144.4 T (after +14.7 %), as reported by coingeek.
- economics.md §2 derived table (subsidy only) and §3 breakeven table (hashprice / (J/TH × 24)).
"""

from __future__ import annotations

import pytest

from monitor.core.hashprice import (
    avg_fees_sat,
    block_subsidy_sat,
    breakeven_power_usd_per_kwh,
    build_context,
    default_scenario_prices,
    hashprice_usd_per_ph_day,
    network_hashrate,
    scenarios,
)
from monitor.model import Entity, Fact, Profile

SUBSIDY_2024 = 312_500_000  # 3.125 BTC since height 840,000 (April 2024)
T = 1e12


def elektronics_form(difficulty: float, reward_btc: float, price: float) -> float:
    """The elektronics.dev derivation, written independently: blocks per PH/s per day × reward × price."""
    blocks_per_ph_day = 1e15 * 86400 / (difficulty * 2**32)
    return blocks_per_ph_day * reward_btc * price


def test_worked_example_elektronics():
    # elektronics.dev: D = 1e14, $100,000, 3.125 BTC → ≈ $62.81 (the formula gives $62.86; both "≈ $62.8").
    hp = hashprice_usd_per_ph_day(1e14, 100_000, SUBSIDY_2024)
    assert hp == pytest.approx(62.86, abs=0.01)
    assert hp == pytest.approx(62.81, rel=0.002)


@pytest.mark.parametrize("difficulty", [1e12, 1e14, 125.86 * T, 144.4 * T, 5e15])
@pytest.mark.parametrize("fees", [0, 2_000_000, 50_000_000])
def test_two_forms_of_the_formula_agree(difficulty, fees):
    # 144 × reward × price × 1e15 / (D·2^32/600) is (1e15·86400/(D·2^32)) × reward × price.
    ours = hashprice_usd_per_ph_day(difficulty, 70_000, SUBSIDY_2024, fees)
    theirs = elektronics_form(difficulty, (SUBSIDY_2024 + fees) / 1e8, 70_000)
    assert ours == pytest.approx(theirs, rel=1e-12)


def test_coinshares_q1_2026_band():
    # At 144.4 T and $70k, subsidy only: ≈ $30.5, within a few percent of CoinShares' $28–30 (Q1 2026).
    hp = hashprice_usd_per_ph_day(144.4 * T, 70_000, SUBSIDY_2024)
    assert hp == pytest.approx(30.47, abs=0.01)
    assert 28 * 0.95 <= hp <= 30 * 1.05
    # At the same difficulty and the Dec 2025 price (~$86,000): $37.44, inside the Q4 2025 $36–38 range.
    q4 = hashprice_usd_per_ph_day(144.4 * T, 86_000, SUBSIDY_2024)
    assert 36 <= q4 <= 38


# economics.md §2 derived table: difficulty × price → hashprice (subsidy only).
TABLE = [
    (125.86 * T, 70_000, 34.96),
    (125.86 * T, 86_000, 42.96),
    (125.86 * T, 100_000, 49.95),
    (136.0 * T, 70_000, 32.36),
    (136.0 * T, 86_000, 39.75),
    (136.0 * T, 100_000, 46.22),
    (144.4 * T, 70_000, 30.47),
    (144.4 * T, 86_000, 37.44),
    (144.4 * T, 100_000, 43.53),
]


@pytest.mark.parametrize("difficulty,price,expected", TABLE)
def test_derived_table_rows(difficulty, price, expected):
    assert hashprice_usd_per_ph_day(difficulty, price, SUBSIDY_2024) == pytest.approx(expected, rel=0.005)


def test_fees_raise_hashprice_in_proportion():
    base = hashprice_usd_per_ph_day(144.4 * T, 70_000, SUBSIDY_2024)
    with_fees = hashprice_usd_per_ph_day(144.4 * T, 70_000, SUBSIDY_2024, 3_125_000)  # fees = 1% of subsidy
    assert with_fees == pytest.approx(base * 1.01, rel=1e-12)


def test_network_hashrate():
    # 144.4 T → 1,033.6 EH/s, in line with "~1,020 EH/s" (tokenpost, early 2026).
    assert network_hashrate(144.4 * T) / 1e18 == pytest.approx(1033.6, abs=0.1)
    with pytest.raises(ValueError):
        network_hashrate(0)


@pytest.mark.parametrize(
    "height,subsidy",
    [
        (0, 5_000_000_000),
        (209_999, 5_000_000_000),
        (210_000, 2_500_000_000),
        (420_000, 1_250_000_000),
        (839_999, 625_000_000),
        (840_000, 312_500_000),
        (1_049_999, 312_500_000),
        (1_050_000, 156_250_000),
        (6_720_000, 1),  # 32 halvings: the last satoshi
        (6_930_000, 0),  # 33 halvings: 5e9 >> 33 == 0
        (64 * 210_000, 0),
        (10**9, 0),
    ],
)
def test_block_subsidy(height, subsidy):
    assert block_subsidy_sat(height) == subsidy


def test_total_supply_from_subsidies():
    # Known total of all subsidies: 20,999,999.9769 BTC.
    assert sum(210_000 * block_subsidy_sat(h * 210_000) for h in range(70)) == 2_099_999_997_690_000
    with pytest.raises(ValueError):
        block_subsidy_sat(-1)


def test_avg_fees_from_coinbase_totals():
    # Across the 2024 halving each block's own subsidy is subtracted.
    assert avg_fees_sat([(839_999, 625_000_000 + 10_000), (840_000, 312_500_000 + 20_000)]) == 15_000
    # A coinbase claiming less than the subsidy counts as zero fees, not negative.
    assert avg_fees_sat([(900_000, 312_000_000), (900_001, 312_500_000 + 3)]) == 1
    with pytest.raises(ValueError):
        avg_fees_sat([])


def test_breakeven_power_price():
    # economics.md §3: at HP $30 an S19 XP (21.5 J/TH) breaks even at ≈ $0.058/kWh.
    assert breakeven_power_usd_per_kwh(30, 21.5) == pytest.approx(0.058, abs=0.0005)
    with pytest.raises(ValueError):
        breakeven_power_usd_per_kwh(30, 0)


# economics.md §3 derived breakeven table: efficiency → $/kWh at hashprice $28 / $30 / $33.
BREAKEVEN = [
    (13.5, (0.086, 0.093, 0.102)),
    (15.0, (0.078, 0.083, 0.092)),
    (16.0, (0.073, 0.078, 0.086)),
    (20.0, (0.058, 0.063, 0.069)),
    (21.5, (0.054, 0.058, 0.064)),
]


@pytest.mark.parametrize("eff,expected", BREAKEVEN)
def test_breakeven_table(eff, expected):
    for hp, usd in zip((28, 30, 33), expected):
        assert breakeven_power_usd_per_kwh(hp, eff) == pytest.approx(usd, abs=0.0006)


def ctx_at(at, price_at, **kw):
    args = dict(
        btc_usd=70_000.0,
        price_at=price_at,
        price_source="test",
        staleness_bound=3600,
        difficulty=144.4 * T,
        height=940_000,
        avg_fees_sat=0,
    )
    args.update(kw)
    return build_context(at, **args)


def test_build_context_fresh_price_and_hashprice():
    ctx = ctx_at(1_000_000, 1_000_000 - 3600)  # exactly at the bound: still fresh
    assert not ctx.is_price_stale
    assert ctx.subsidy_sat == SUBSIDY_2024
    assert ctx.hashprice_usd == pytest.approx(30.47, abs=0.01)
    assert ctx.asset_usd == 70_000.0
    assert "height 940000" in ctx.context_source


def test_build_context_stale_both_ways():
    assert ctx_at(1_000_000, 1_000_000 - 3601).is_price_stale
    assert ctx_at(1_000_000, 1_000_000 + 7200).is_price_stale  # a candle long after the tx is not its price


def test_build_context_without_price_or_chain_data():
    ctx = ctx_at(1_000_000, None, btc_usd=None)
    assert ctx.btc_usd is None and not ctx.is_price_stale and ctx.hashprice_usd is None
    ctx = ctx_at(1_000_000, 1_000_000, difficulty=None, height=None, avg_fees_sat=None)
    assert ctx.hashprice_usd is None and ctx.subsidy_sat is None and ctx.context_source == ""
    with pytest.raises(ValueError):
        ctx_at(1_000_000, None)  # a price without its observation time


def test_build_context_token_price():
    ctx = ctx_at(1_000_000, 1_000_000, asset_usd=3_000.0)
    assert ctx.asset_usd == 3_000.0 and ctx.btc_usd == 70_000.0


def miner(name, cost=None, eff=None, kind="miner"):
    return Entity(
        name,
        kind,
        profile=Profile(
            cash_cost_usd=Fact(cost, "test", "2026-01-01") if cost is not None else None,
            efficiency_j_th=Fact(eff, "test", "2026-01-01") if eff is not None else None,
        ),
    )


def test_scenarios():
    miners = [miner("A", 79_995, 20), miner("B", 60_000), miner("C", 81_000), miner("D"), miner("S", 90_000, kind="sovereign")]
    out = scenarios([100_000, ("stress", 80_000), ("now", 68_400)], 144.4 * T, 940_000, 0, [16, 21.5], miners)
    assert [s.label for s in out] == ["$100,000", "stress", "now"]
    s100, s80, now = out
    assert s100.hashprice == pytest.approx(43.53, abs=0.01) and s100.below_cost == ()
    assert s100.breakeven[1] == (21.5, pytest.approx(43.53 / (21.5 * 24), rel=1e-3))
    assert [b.name for b in s80.below_cost] == ["C"]  # $80k is just above the sector average $79,995
    assert [b.name for b in now.below_cost] == ["C", "A"]  # most underwater first; sovereigns never listed
    assert now.below_cost[1].gap_pct == pytest.approx(14.49, abs=0.01)
    assert now.fleet_breakeven == (("A", 20.0, pytest.approx(now.hashprice / 480, rel=1e-9)),)
    # difficulty -10% / +10%: hashprice is inversely proportional to difficulty
    (down, d_down, hp_down), (up, d_up, hp_up) = s100.difficulty_cases
    assert (down, up) == (-0.10, 0.10) and d_down == pytest.approx(0.9 * 144.4 * T)
    assert hp_down == pytest.approx(43.53 / 0.9, abs=0.02) and hp_up == pytest.approx(43.53 / 1.1, abs=0.02)


def test_default_scenario_prices():
    # CoinShares via ChainCatcher 2026-04-03 ($100k, below $80k); ATH ~$124,500 Oct 2025 (tokenpost/signalplus).
    assert [p for _, p in default_scenario_prices()] == [100_000, 80_000, 75_000, 70_000, 65_000, 124_500]
    labels, prices = zip(*default_scenario_prices(68_400))
    assert prices == (100_000, 80_000, 68_400, 75_000, 70_000, 65_000, 124_500) and labels[2] == "today ($68,400)"
