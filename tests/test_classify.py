"""The classifier, table-driven from the 2026 sell-off.

Seed figures (sources as in shared/data/economics.md and the ChainCatcher article of 2026-04-03):
- MARA sold 15,133 BTC from Mar 4 to Mar 25 2026 (ChainCatcher), BTC at $68,000-70,000 (ChainCatcher),
  sector cash cost $79,995 (CoinShares Q1-2026 report, Q4 2025 weighted average), monthly production 736 BTC
  (MARA Sep 2025 update, via mexc.co), ~53,000 BTC held (Feb 2026, yellow.com), sells to repurchase
  convertibles at a discount (ChainCatcher).
- CleanSpark: 629 BTC mined and 13,011 held in Sep 2025 (decrypto.news); JPMorgan fully loaded cost ~$60k.
- Hut 8: 10,096 BTC held (2024-12-19 release, via binance.com square); AI/HPC contracts (ChainCatcher).
- Cango: 7,474.67 BTC held and 496.35 mined in Jan 2026 (mining-provider.com); sold 4,451 BTC (~60%) in
  Feb 2026 (ChainCatcher); average cost $70,602 per BTC in Q1 2025 (company, via bbapi.viigoo.eu.org).
- Bhutan: ~5,400 BTC (Arkham via gadgets360, 2026-03-09); transfers of $35-45M in March 2026 and
  accelerating (ChainCatcher); routes through QCP Capital, Binance, Kraken or Cobo.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pytest

from monitor.bundled import SECTOR_CASH_COST
from monitor.core.classify import Thresholds, classify
from monitor.core.hashprice import build_context
from monitor.model import (
    SATS_PER_BTC,
    Attribution,
    Destination,
    Entity,
    EntityFlow,
    Fact,
    FlowHistory,
    Profile,
)

T = 1e12
DAY = 86_400


def fact(value, source, as_of="2026-01-01"):
    return Fact(value, source, as_of)


MARA = Entity(
    "MARA",
    "miner",
    profile=Profile(
        holdings_btc=fact(53_000, "yellow.com report on Bitdeer's zero treasury (Feb 2026)", "2026-02-28"),
        monthly_production_btc=fact(736, "MARA Sep 2025 update (via mexc.co/en-IN/news/119109)", "2025-09-30"),
        cash_cost_usd=SECTOR_CASH_COST,
        efficiency_j_th=fact(20, "MARA end-2024 statement", "2024-12-31"),
        strategy_tags=("convertible_repurchase", "ai_hpc_pivot"),
        strategy_source="ChainCatcher 2026-04-03: sells BTC to repurchase convertible bonds at a discount",
    ),
)
CLEANSPARK = Entity(
    "CleanSpark",
    "miner",
    profile=Profile(
        holdings_btc=fact(13_011, "CleanSpark Sep 2025 update", "2025-09-30"),
        monthly_production_btc=fact(629, "CleanSpark Sep 2025 update", "2025-09-30"),
        cash_cost_usd=fact(60_000, "JPMorgan Q2-2025 estimate, fully loaded cost", "2025-06-30"),
        strategy_tags=("mining_focus",),
        strategy_source="ChainCatcher 2026-04-03: sticks to mining",
    ),
)
HUT8 = Entity(
    "Hut 8",
    "miner",
    profile=Profile(
        holdings_btc=fact(10_096, "Hut 8 release of 2024-12-19", "2024-12-19"),
        cash_cost_usd=SECTOR_CASH_COST,
        strategy_tags=("ai_hpc_pivot",),
        strategy_source="ChainCatcher 2026-04-03: AI/HPC contracts (Fluidstack/Google)",
    ),
)
CANGO = Entity(
    "Cango",
    "miner",
    profile=Profile(
        holdings_btc=fact(7_474.67, "Cango Jan 2026 update", "2026-01-31"),
        monthly_production_btc=fact(496.35, "Cango Jan 2026 update", "2026-01-31"),
        cash_cost_usd=fact(70_602, "Cango Q1 2025 average cost per BTC mined", "2025-03-31"),
    ),
)
BHUTAN = Entity(
    "Bhutan",
    "sovereign",
    profile=Profile(
        holdings_btc=fact(5_400, "Arkham estimate (via gadgets360.com)", "2026-03-09"),
        strategy_tags=("sovereign",),
        strategy_source="ChainCatcher 2026-04-03",
    ),
)

BINANCE = Attribution("exchange", "Binance")
QCP = Attribution("otc", "QCP Capital")
COBO = Attribution("custodian", "Cobo")
SELF = Attribution("self")
UNKNOWN = Attribution("unknown")


def ts(date: str) -> int:
    return int(dt.datetime.fromisoformat(date).replace(tzinfo=dt.UTC).timestamp())


def sats(btc: float) -> int:
    return round(btc * SATS_PER_BTC)


def make_flow(entity: Entity, dests, *, at: int, txid="t", spent=None, change=0, fee=1_000, received=0):
    out = sum(v for _, v in dests)
    spent = out + change + fee if spent is None else spent
    return EntityFlow(
        chain="bitcoin",
        txid=txid,
        entity=entity.name,
        block_height=940_000,
        block_time=at,
        spent=spent,
        change=change,
        received=received,
        fee_share=fee,
        out=spent - change - fee,
        destinations=tuple(Destination(f"addr{i}", v, i, a) for i, (a, v) in enumerate(dests)),
    )


def make_ctx(at: int, price: float | None, *, price_age: int = 600, bound: int = 3600):
    return build_context(
        at,
        btc_usd=price,
        price_at=at - price_age if price is not None else None,
        price_source="test candles",
        staleness_bound=bound,
        difficulty=144.4 * T,
        height=940_000,
        avg_fees_sat=0,
    )


@dataclass
class Tx:
    date: str
    btc: float
    price: float | None
    to: Attribution = BINANCE


def run(entity: Entity, txs: list[Tx], thresholds: Thresholds = Thresholds()):
    """Classify a sequence of outflows, building the 30-day history from the earlier ones as storage would."""
    done: list[tuple[int, int, float | None]] = []
    results = []
    for i, tx in enumerate(txs):
        at = ts(tx.date)
        window = [d for d in done if at - d[0] <= 30 * DAY]
        history = FlowHistory(
            out_30d=sum(d[1] for d in window),
            count_30d=len(window),
            recent_usd=tuple(d[2] for d in done if d[2] is not None),
            recent_out=tuple(d[1] for d in done),
        )
        flow = make_flow(entity, [(tx.to, sats(tx.btc))], at=at, txid=f"tx{i}")
        c = classify(flow, entity, make_ctx(at, tx.price), history, thresholds, now=at + 60)
        results.append(c)
        done.append((at, sats(tx.btc), c.usd_value))
    return results


def reasons(c) -> str:
    return "\n".join(c.reasons)


# --- must-show cases ---------------------------------------------------------------------------------

# MARA, Mar 4-25 2026: seven tranches summing to the reported 15,133 BTC, at $68,100-70,000.
MARA_TRANCHES = [
    Tx("2026-03-04", 1_500, 69_800, QCP),
    Tx("2026-03-07", 2_000, 70_000),
    Tx("2026-03-10", 1_800, 69_200, QCP),
    Tx("2026-03-13", 2_500, 68_900),
    Tx("2026-03-17", 2_200, 68_100),
    Tx("2026-03-21", 2_633, 68_700),
    Tx("2026-03-25", 2_500, 68_400),
]


def test_mara_convertible_repurchase_is_a_balance_sheet_sale():
    assert sum(t.btc for t in MARA_TRANCHES) == 15_133
    results = run(MARA, MARA_TRANCHES)
    assert [c.verdict for c in results] == ["balance_sheet_sale"] * 7
    assert [c.severity for c in results] == ["critical"] * 7
    last = reasons(results[-1])
    assert "price $68,400 is 14.5% below MARA's cash cost $79,995 (CoinShares Q1-2026 mining report" in last
    assert "sector average of listed miners, not MARA's own" in last
    assert "15,133.00 BTC in 30 days is 20.6× MARA's monthly production of 736 BTC (MARA Sep 2025 update" in last
    assert "28.6% of MARA's holdings of 53,000 BTC" in last
    assert "convertible_repurchase" in last and "beyond 1.5× monthly production" in last
    # hashprice at 144.4 T and $68,400 is $29.78; a 20 J/TH fleet breaks even at $0.062/kWh.
    assert "hashprice $29.78/PH/day" in last and "$0.062/kWh" in last
    assert results[-1].attribution == "exchange:Binance" and results[0].attribution == "otc:QCP Capital"


def test_production_sized_sale_above_cost_is_routine():
    # CleanSpark sells 0.9 × its 629 BTC monthly production at $90,000, above its ~$60k cost.
    (c,) = run(CLEANSPARK, [Tx("2026-03-10", 0.9 * 629, 90_000)])
    assert (c.verdict, c.severity) == ("production_sale", "info")
    text = reasons(c)
    assert "566.10 BTC in 30 days is 0.9× CleanSpark's monthly production of 629 BTC" in text
    assert "within 1.5× monthly production over 30 days" in text
    assert "price $90,000 is 50.0% above CleanSpark's cash cost $60,000" in text


def test_ai_hpc_miner_selling_most_of_its_holdings_is_a_reallocation():
    # Hut 8 (AI/HPC contracts) sells 60% of its 10,096 BTC at $95,000, above the $79,995 sector cost.
    (c,) = run(HUT8, [Tx("2026-03-10", 0.6 * 10_096, 95_000)])
    assert (c.verdict, c.severity) == ("reallocation_sale", "critical")
    text = reasons(c)
    assert "60.0% of Hut 8's holdings of 10,096 BTC" in text
    assert "at or above cost" in text and "ai_hpc_pivot" in text


def test_bhutan_accelerating_sovereign_sales():
    # $10M, $12M, then $35M and $45M to an exchange at $70,000.
    txs = [
        Tx(d, usd / 70_000, 70_000)
        for d, usd in [("2026-03-02", 10e6), ("2026-03-05", 12e6), ("2026-03-12", 35e6), ("2026-03-19", 45e6)]
    ]
    results = run(BHUTAN, txs)
    assert [c.verdict for c in results] == ["sovereign_sale"] * 4
    accel = ["selling accelerates" in reasons(c) for c in results]
    assert accel == [False, False, True, True]
    assert "$35.0M is 3.2× the median of the previous 2 transfers ($11.0M): selling accelerates" in reasons(results[2])
    # 45/12 = 3.75, printed 3.7 because the coin amount was rounded to whole satoshis (3.7499...).
    assert "$45.0M is 3.7× the median of the previous 3 transfers ($12.0M): selling accelerates" in reasons(results[3])
    assert [c.severity for c in results] == ["warning", "warning", "critical", "critical"]
    assert all(c.usd_value == pytest.approx(u, rel=1e-6) for c, u in zip(results, [10e6, 12e6, 35e6, 45e6]))


def test_acceleration_uses_the_median_of_the_last_five_only():
    # Five $10M transfers, then $20M, $22M, ... $30M. $20M, $22M, $24M are ≥ 1.5× the median of their
    # previous five ($10M); $26M is not (previous five 10, 10, 20, 22, 24: median $20M), although the
    # median of ALL previous transfers would still be $10M.
    sizes = [10e6] * 5 + [20e6, 22e6, 24e6, 26e6, 28e6, 30e6]
    results = run(BHUTAN, [Tx(f"2026-03-{i + 1:02d}", u / 70_000, 70_000) for i, u in enumerate(sizes)])
    flagged = [i for i, c in enumerate(results) if "selling accelerates" in reasons(c)]
    assert flagged == [5, 6, 7]
    assert "median of the previous 5 transfers ($10.0M)" in reasons(results[5])


def test_change_only_move_is_internal():
    at = ts("2026-03-10")
    flow = make_flow(MARA, [], at=at, spent=sats(10), change=sats(10) - 1_000)
    c = classify(flow, MARA, make_ctx(at, 70_000), FlowHistory(), now=at)
    assert (c.verdict, c.severity, c.out) == ("internal", "info", 0)
    assert "all value stayed with MARA: 10.00 BTC spent, 9.99999 BTC came back as change, fee 0.00001 BTC" in reasons(c)


def test_own_cold_storage_is_internal():
    at = ts("2026-03-10")
    flow = make_flow(BHUTAN, [(SELF, sats(500))], at=at)
    c = classify(flow, BHUTAN, make_ctx(at, 70_000), FlowHistory(), now=at)
    assert (c.verdict, c.severity, c.attribution) == ("internal", "info", "self")
    assert "500.00 BTC went to Bhutan's own addresses" in reasons(c)


def test_to_a_custodian_is_a_custody_move_capped_at_warning():
    at = ts("2026-03-10")
    flow = make_flow(BHUTAN, [(COBO, sats(3_000))], at=at)  # $210M, 56% of holdings
    c = classify(flow, BHUTAN, make_ctx(at, 70_000), FlowHistory(), now=at)
    assert (c.verdict, c.severity, c.attribution) == ("custody_move", "warning", "custodian:Cobo")
    assert "custodian: custody, a sale is not implied" in reasons(c)


@pytest.mark.parametrize(
    "price,price_age,severity,phrase",
    [
        (70_000, 600, "notice", "(≈ $7.0M)"),  # fresh: $7.0M reaches the $1M notice step
        (70_000, 27_000, "info", "is stale: observed 7.5 h before the transaction"),
        (None, 0, "info", "no BTC price for the transaction time"),
    ],
)
def test_stale_or_missing_price_still_classifies_without_usd_severity(price, price_age, severity, phrase):
    # 100 BTC of Bhutan's 5,400 (1.9%, under the 2% share step): only the USD value could raise severity.
    at = ts("2026-03-10")
    flow = make_flow(BHUTAN, [(BINANCE, sats(100))], at=at)
    c = classify(flow, BHUTAN, make_ctx(at, price, price_age=price_age), FlowHistory(), now=at)
    assert (c.verdict, c.severity) == ("sovereign_sale", severity)
    assert phrase in reasons(c)
    if severity == "info":
        assert c.usd_value is None and c.btc_usd is None and c.hashprice_usd is None


def test_stale_price_keeps_non_usd_judgements():
    # MARA's last tranche with a 2-day-old price: still a balance-sheet sale, critical by production multiple.
    results = run(MARA, MARA_TRANCHES[:-1])
    at = ts("2026-03-25")
    history = FlowHistory(
        out_30d=sum(sats(t.btc) for t in MARA_TRANCHES[:-1]),
        count_30d=6,
        recent_usd=tuple(c.usd_value for c in results),
        recent_out=tuple(sats(t.btc) for t in MARA_TRANCHES[:-1]),
    )
    flow = make_flow(MARA, [(BINANCE, sats(2_500))], at=at)
    c = classify(flow, MARA, make_ctx(at, 68_400, price_age=2 * DAY), history, now=at)
    assert (c.verdict, c.severity, c.usd_value) == ("balance_sheet_sale", "critical", None)
    text = reasons(c)
    assert "is stale: observed 2.0 d before" in text and "below MARA's cash cost" not in text
    assert "20.6× MARA's monthly production" in text


def test_below_cost_miner_without_strategy_is_in_distress():
    # Cango sold 4,451 BTC (~60% of 7,474.67) in Feb 2026 at ~$68,000, under its $70,602 cost.
    (c,) = run(CANGO, [Tx("2026-02-15", 4_451, 68_000)])
    assert (c.verdict, c.severity) == ("distress_sale", "critical")
    text = reasons(c)
    assert "price $68,000 is 3.7% below Cango's cash cost $70,602 (Cango Q1 2025 average cost per BTC mined" in text
    assert "59.5% of Cango's holdings" in text and "9.0× Cango's monthly production" in text


def test_ai_hpc_miner_selling_large_below_cost_is_distress_not_reallocation():
    (c,) = run(HUT8, [Tx("2026-03-10", 0.6 * 10_096, 68_000)])
    assert c.verdict == "distress_sale"


def test_large_sale_above_cost_without_strategy_is_strategic():
    (c,) = run(CLEANSPARK, [Tx("2026-03-10", 3_000, 90_000)])
    assert (c.verdict, c.severity) == ("strategic_sale", "critical")  # 4.8× production, $270M


def test_production_sized_sale_below_cost_is_routine_but_noticed():
    (c,) = run(CANGO, [Tx("2026-02-15", 400, 68_000)])
    assert (c.verdict, c.severity) == ("production_sale", "notice")
    assert "below Cango's cash cost" in reasons(c)


def test_no_production_figure_small_share_is_presumed_routine():
    (c,) = run(HUT8, [Tx("2026-03-10", 200, 95_000)])
    assert c.verdict == "production_sale"
    assert "no monthly production figure; 2.0% of holdings is under the 10% large-sale bar" in reasons(c)


def test_unknown_destination_is_an_unknown_transfer():
    (c,) = run(BHUTAN, [Tx("2026-03-10", 419.5, 70_000, UNKNOWN)])
    assert (c.verdict, c.attribution) == ("unknown_transfer", "unknown")
    assert "hop tracing may attribute it" in reasons(c)


def test_transfer_to_another_tracked_entity_is_not_a_sale():
    (c,) = run(BHUTAN, [Tx("2026-03-10", 100, 70_000, Attribution("entity", "Bitdeer"))])
    assert (c.verdict, c.attribution) == ("unknown_transfer", "entity:Bitdeer")
    assert "to Bitdeer, another tracked entity: not a sale by itself" in reasons(c)


def test_the_group_with_most_value_decides_and_ties_favour_sale():
    at = ts("2026-03-10")
    ctx = make_ctx(at, 70_000)
    mixed = make_flow(BHUTAN, [(UNKNOWN, sats(40)), (BINANCE, sats(30)), (Attribution("exchange", "Kraken"), sats(30))], at=at)
    c = classify(mixed, BHUTAN, ctx, FlowHistory(), now=at)
    assert (c.verdict, c.attribution) == ("sovereign_sale", "exchange:Binance")
    assert "40% to unknown, 30% to exchange:Binance, 30% to exchange:Kraken" in reasons(c)
    tie = make_flow(BHUTAN, [(UNKNOWN, sats(50)), (BINANCE, sats(50))], at=at)
    assert classify(tie, BHUTAN, ctx, FlowHistory(), now=at).verdict == "sovereign_sale"


def test_acceleration_in_coins_when_price_missing():
    results = run(BHUTAN, [Tx("2026-03-01", 100, None), Tx("2026-03-02", 120, None), Tx("2026-03-03", 500, None)])
    assert "500.00 BTC is 4.5× the median of the previous 2 transfers (110.00 BTC)" in reasons(results[2])
    assert results[2].severity == "critical"  # 720 BTC = 13.3% of holdings → warning, +1 for acceleration


def test_acceleration_falls_back_to_coins_when_earlier_prices_are_missing():
    # Only the first of the two earlier transfers had a price: the dollar history is too short.
    results = run(BHUTAN, [Tx("2026-03-02", 100, 70_000), Tx("2026-03-05", 150, None), Tx("2026-03-07", 500, 70_000)])
    assert "500.00 BTC is 4.0× the median of the previous 2 transfers (125.00 BTC)" in reasons(results[2])


def test_classification_fields():
    at = ts("2026-03-10")
    flow = make_flow(CLEANSPARK, [(BINANCE, sats(100))], at=at, txid="abc")
    c = classify(flow, CLEANSPARK, make_ctx(at, 70_000), FlowHistory(), now=at + 5)
    assert (c.chain, c.txid, c.entity, c.out, c.asset) == ("bitcoin", "abc", "CleanSpark", sats(100), "BTC")
    assert c.usd_value == pytest.approx(7_000_000) and c.btc_usd == 70_000
    assert c.hashprice_usd == pytest.approx(30.47, abs=0.01)
    assert (c.attribution, c.created_at, c.version, c.status) == ("exchange:Binance", at + 5, 1, "active")


def test_refuses_what_is_not_an_outflow_of_a_tracked_entity():
    at = ts("2026-03-10")
    ctx = make_ctx(at, 70_000)
    inflow = make_flow(MARA, [], at=at, spent=0, change=0, fee=0, received=sats(3))
    with pytest.raises(ValueError, match="incoming"):
        classify(inflow, MARA, ctx, FlowHistory(), now=at)
    with pytest.raises(ValueError, match="counterparty"):
        binance = Entity("Binance", "exchange")
        classify(make_flow(binance, [(UNKNOWN, 1)], at=at), binance, ctx, FlowHistory(), now=at)
    with pytest.raises(ValueError, match="belongs to"):
        classify(make_flow(MARA, [(BINANCE, 1)], at=at), BHUTAN, ctx, FlowHistory(), now=at)


def test_thresholds_are_checked_and_tunable():
    with pytest.raises(ValueError):
        Thresholds(usd_notice=20e6, usd_warning=10e6)
    with pytest.raises(ValueError):
        Thresholds(acceleration_min_count=6)
    # A looser production multiple turns MARA's first 1,500 BTC tranche (2.0× production) routine.
    (c,) = run(MARA, MARA_TRANCHES[:1], Thresholds(production_multiple=2.5, large_share_of_holdings=0.5))
    assert c.verdict == "production_sale"


def test_token_flow_skips_btc_comparisons_and_uses_the_asset_price():
    from dataclasses import replace

    at = ts("2026-03-10")
    flow = replace(make_flow(CLEANSPARK, [(BINANCE, 2 * 10**18)], at=at, fee=0), asset="ETH", decimals=18)
    ctx = build_context(
        at,
        btc_usd=70_000.0,
        price_at=at,
        price_source="t",
        staleness_bound=3600,
        difficulty=144.4 * T,
        height=940_000,
        avg_fees_sat=0,
        asset_usd=3_000.0,
    )
    c = classify(flow, CLEANSPARK, ctx, FlowHistory(), now=at)
    assert c.usd_value == pytest.approx(6_000) and c.asset == "ETH"
    assert "ETH is not BTC: production and holdings comparisons are skipped" in reasons(c)
    assert "monthly production of" not in reasons(c)


# --- the article's three paths, dated facts, named price and hashprice inputs ----------------------


def _sale(entity: str, btc: int, at: int) -> EntityFlow:
    v = btc * SATS_PER_BTC
    return EntityFlow(
        "bitcoin",
        "cd" * 32,
        entity,
        940_000,
        at,
        v,
        0,
        0,
        0,
        v,
        (Destination("bc1qexchange", v, 0, Attribution("exchange", "Coinbase")),),
    )


def _miner(name: str, tags: tuple[str, ...]) -> Entity:
    return Entity(
        name,
        "miner",
        profile=Profile(
            holdings_btc=fact(10_000, f"{name} update", "2026-01-31"),
            monthly_production_btc=fact(500, f"{name} update", "2026-01-31"),
            cash_cost_usd=fact(80_000, f"{name} cost", "2025-12-31"),
            strategy_tags=tags,
            strategy_source="ChainCatcher 2026-04-03 (test)",
        ),
    )


MARCH_10 = int(dt.datetime(2026, 3, 10, 14, 2, tzinfo=dt.UTC).timestamp())


def _ctx(price: float, *, granularity: int = 3600):
    start = MARCH_10 - MARCH_10 % granularity
    return build_context(
        MARCH_10,
        btc_usd=price,
        price_at=MARCH_10,
        price_source="coinbase",
        staleness_bound=7200,
        difficulty=144.4 * T,
        height=940_000,
        avg_fees_sat=2_000_000,
        price_granularity=granularity,
        price_start=start,
    )


@pytest.mark.parametrize(
    "tags, price, verdict, severity",
    [
        # stick to mining: selling beyond production below cost is a stronger distress signal (one step more)
        (("mining_focus",), 70_000.0, "distress_sale", "critical"),
        ((), 70_000.0, "distress_sale", "warning"),
        # complete shift to AI: a large sale is an expected reallocation even below cost
        (("ai_shift",), 70_000.0, "reallocation_sale", "warning"),
        # walk on two legs: below cost it is distress, at or above cost a reallocation
        (("dual_track",), 70_000.0, "distress_sale", "warning"),
        (("dual_track",), 90_000.0, "reallocation_sale", "warning"),
        (("mining_focus",), 90_000.0, "strategic_sale", "warning"),
    ],
)
def test_the_three_paths_shape_the_verdict(tags, price, verdict, severity):
    # 1,000 BTC: 2x monthly production (large; a notice step) and 10% of holdings (a warning step); the USD
    # steps are set out of reach so that the severity shows the path's effect alone
    t = Thresholds(usd_notice=1e12, usd_warning=2e12, usd_critical=3e12)
    c = classify(_sale("X", 1_000, MARCH_10), _miner("X", tags), _ctx(price), FlowHistory(), t, now=MARCH_10)
    assert (c.verdict, c.severity) == (verdict, severity), c.reasons
    path = {"mining_focus": "'stick to mining'", "ai_shift": "'complete shift to AI'", "dual_track": "'walk on two legs'"}
    for t in tags:
        assert any(path[t] in r for r in c.reasons), c.reasons


def test_reasons_name_the_price_source_and_candle_and_the_hashprice_inputs():
    c = classify(_sale("X", 600, MARCH_10), _miner("X", ()), _ctx(68_000.0), FlowHistory(), now=MARCH_10)
    assert "BTC price $68,000: Coinbase 1-hour candle, 2026-03-10 14:00 UTC" in c.reasons
    hp = next(r for r in c.reasons if r.startswith("hashprice"))
    assert "difficulty 144.4 T" in hp and "subsidy 3.125 BTC" in hp and "fees 0.02 BTC per block" in hp
    assert "price $68,000" in hp and "452.88 BTC a day" in hp  # 144 x (3.125 + 0.02)
    daily = classify(_sale("X", 600, MARCH_10), _miner("X", ()), _ctx(68_000.0, granularity=86_400), FlowHistory(), now=MARCH_10)
    assert "BTC price $68,000: Coinbase daily close, 2026-03-10" in daily.reasons


def test_holdings_are_rolled_forward_and_stated_as_such():
    ent = Entity("M", "miner", profile=Profile(holdings_btc=fact(53_000, "M Feb update", "2026-02-28")))
    history = FlowHistory(since=(("2026-02-28", 0, 15_133 * SATS_PER_BTC),))
    c = classify(_sale("M", 600, MARCH_10), ent, _ctx(68_000.0), history, now=MARCH_10)
    held = next(r for r in c.reasons if "holdings of" in r)
    assert (
        "of M's holdings of ≈ 37,867 BTC: 53,000 BTC reported (M Feb update, as of 2026-02-28), less "
        "15,133.00 BTC seen leaving since" in held
    )
    assert "1.6%" in held  # 600 / 37,867, not 600 / 53,000
    [h] = [f for f in c.facts if f.figure == "holdings_btc"]
    assert (h.value, h.reported, h.as_of) == (37_867.0, 53_000.0, "2026-02-28")
