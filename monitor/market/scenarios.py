"""What `treasury-monitor scenarios` computes: hashprice and who is below cost at price scenarios.

The chain inputs (difficulty, height, average fees) come from the newest stored classification context
when the database has one, else from CoinShares' reference point of Q1 2026 (difficulty 144.4 T after the
+14.7% adjustment, coingeek.com; subsidy 3.125 BTC), each stated in the output. "Today's" price is the
newest stored price candle, else the last close of the bundled (simulated) series, labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from monitor.bundled import ASIC_EFFICIENCIES, SCENARIO_PRICES
from monitor.core.hashprice import default_scenario_prices, scenarios
from monitor.model import Entity

__all__ = ["ScenarioInputs", "REFERENCE_DIFFICULTY", "REFERENCE_HEIGHT", "inputs_from_store", "scenario_table", "as_json"]

#: CoinShares Q1 2026 reference point: difficulty after the +14.7% jump to 144.4 T (coingeek.com, see
#: monitor/data/README.md), a height in 2026 (post-2024 halving: 3.125 BTC subsidy).
REFERENCE_DIFFICULTY = 144.4e12
REFERENCE_HEIGHT = 940_000


@dataclass(frozen=True)
class ScenarioInputs:
    """Chain and price inputs of the scenario table, with where each came from."""

    difficulty: float
    height: int
    avg_fees_sat: int
    chain_source: str
    today: float | None
    today_source: str


def inputs_from_store(db: Path | None) -> ScenarioInputs:
    """Inputs from the newest stored classification context and price candle, else the references."""
    difficulty, height, fees = REFERENCE_DIFFICULTY, REFERENCE_HEIGHT, 0
    chain_source = "reference: difficulty 144.4 T (coingeek.com, after the +14.7% adjustment), subsidy only"
    today, today_source = None, ""
    if db is not None and db.exists():
        from storage import Store
        from storage.reads import newest_candle, newest_chain_context

        store = Store(db)
        try:
            ctx = newest_chain_context(store)
            if ctx is not None:
                difficulty, height = float(ctx["difficulty"]), int(ctx["height"])
                fees = int(ctx.get("avg_fees_sat") or 0)
                chain_source = f"newest stored block context (height {height})"
            candle = newest_candle(store)
            if candle:
                today, today_source = float(candle["close"]), f"newest stored price ({candle['source']})"
        finally:
            store.close()
    if today is None:
        from monitor.market.prices import BUNDLED_BTC_USD
        from watchers.prices import CsvPriceSource

        candles = CsvPriceSource(BUNDLED_BTC_USD).load()
        today = candles[max(candles)].close
        today_source = "last close of the bundled SIMULATED series (monitor/data/PRICES.md)"
    return ScenarioInputs(difficulty, height, fees, chain_source, today, today_source)


def scenario_table(inp: ScenarioInputs, miners: list[Entity]):
    """The scenarios at the default prices (CoinShares' cases, today, all-time high)."""
    effs = [f.value for _, f in ASIC_EFFICIENCIES]
    return scenarios(default_scenario_prices(inp.today), inp.difficulty, inp.height, inp.avg_fees_sat, effs, miners)


def as_json(inp: ScenarioInputs, table) -> dict:
    """The table as JSON, with the inputs and the quoted CoinShares hashprices where given."""
    quoted = {s.label: s.quoted_hashprice for s in SCENARIO_PRICES}
    return {
        "inputs": {
            "difficulty": inp.difficulty,
            "height": inp.height,
            "avg_fees_sat": inp.avg_fees_sat,
            "chain_source": inp.chain_source,
            "today_usd": inp.today,
            "today_source": inp.today_source,
        },
        "efficiencies": [{"name": n, "j_per_th": f.value, "source": f.source} for n, f in ASIC_EFFICIENCIES],
        "scenarios": [
            {
                "label": s.label,
                "btc_usd": s.price,
                "hashprice_usd_per_ph_day": round(s.hashprice, 2),
                "quoted_hashprice": (
                    {"value": quoted[s.label].value, "source": quoted[s.label].source} if quoted.get(s.label) else None
                ),
                "breakeven_usd_per_kwh": [{"j_per_th": e, "usd_per_kwh": round(b, 4)} for e, b in s.breakeven],
                "difficulty_cases": [
                    {"change": f"{c:+.0%}", "difficulty": d, "hashprice_usd_per_ph_day": round(h, 2)}
                    for c, d, h in s.difficulty_cases
                ],
                "below_cash_cost": [
                    {
                        "miner": b.name,
                        "cash_cost_usd": b.cash_cost.value,
                        "gap_pct": round(b.gap_pct, 1),
                        "source": b.cash_cost.source,
                    }
                    for b in s.below_cost
                ],
            }
            for s in table
        ],
    }
