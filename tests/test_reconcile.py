"""Balance reconciliation: scripted balances on the local Esplora server against reported holdings, in the
`entities` table, `entities show` and the library function."""

import asyncio
import json

from builders import addr, entity
from fakes.discovery import COIN, MARCH_5_2026, cli_run, entity_toml, write_config
from fakes.offloop import in_store

from monitor.config import load_config
from monitor.discovery.reconcile import format_btc_amount, reconcile, reconcile_store
from monitor.model import Fact, Profile
from monitor.run.runtime import build_registry
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer


def test_reconcile_is_arithmetic_on_snapshots():
    a, b, c = addr("r1"), addr("r2"), addr("r3")
    e = entity("R", "miner", [a, b, c], profile=Profile(holdings_btc=Fact(100.0, "filing (via x)", "2026-01-31")))
    r = reconcile(e, {a: (30 * COIN, 5), b: (12 * COIN + 50_000_000, 9)})
    assert (r.addresses, r.addresses_seen, r.seen_sat, r.seen_at) == (3, 2, 4_250_000_000, 9)
    assert r.share == 0.425 and r.gap_sat == 5_750_000_000
    assert r.sentence() == "we see 42% of R's reported 100 BTC (as of 2026-01-31, filing): 42.50 BTC on 2 of 3 known address(es)"
    none = reconcile(entity("N", "miner", [a]), {a: (COIN, 1)})
    assert (
        none.share is None
        and none.sentence() == "we see 1.00 BTC on 1 of 1 known address(es); no reported holdings figure to compare"
    )
    assert format_btc_amount(1_638_350_000_000) == "16,383.50" and format_btc_amount(12_345) == "0.00012345"


async def test_scripted_balances_against_reported_holdings(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    wallets = [chain.address(f"recon-{k}") for k in range(3)]
    exch, cand = chain.address("recon-exchange"), chain.address("recon-candidate")
    for w, btc in zip(wallets, (10_000, 6_000, 383.5)):
        chain.fund(w, int(btc * COIN))
    chain.fund(cand, 500 * COIN)
    async with EsploraServer(chain) as server:
        cfg = await asyncio.to_thread(
            write_config,
            tmp_path,
            server.url,
            entity_toml("Recon Miner", "miner", wallets, holdings=52850)
            + entity_toml("Recon Exchange", "exchange", [exch], watch=False),
        )
        assert (await cli_run("-c", cfg, "backfill", "--no-progress")).exit_code == 0
        from monitor.model import EntityAddress

        def reconcile_with_a_candidate(store):
            # a candidate's balance does not count until it is accepted
            store.add_addresses(
                "Recon Miner", [EntityAddress("bitcoin", cand, "test", learned_by="pool_payout")], now=1, status="candidate"
            )
            return reconcile_store(store, build_registry(load_config(cfg), store), ["Recon Miner"])

        [r] = await in_store(tmp_path / "tm.db", reconcile_with_a_candidate)
        assert (r.seen_sat, r.reported_sat, r.addresses, r.addresses_seen) == (1_638_350_000_000, 5_285_000_000_000, 3, 3)
        assert round(r.share, 4) == 0.31
        expected = (
            "we see 31% of Recon Miner's reported 52,850 BTC (as of 2026-03-01, test fixture holdings): "
            "16,383.50 BTC on 3 of 3 known address(es)"
        )
        assert r.sentence() == expected

        r = await cli_run("-c", cfg, "entities")
        assert r.exit_code == 0, r.output
        line = next(x for x in r.output.splitlines() if x.startswith("Recon Miner"))
        assert "16383.50000000" in line and "52,850" in line and " 31% " in line and "    1 " in line  # 1 candidate
        assert expected in r.output

        sale = chain.pay([wallets[0]], [(exch, 1_000 * COIN)], fee=10_000)
        chain.mine()
        assert (await cli_run("-c", cfg, "poll")).exit_code == 0
        r = await cli_run("-c", cfg, "entities", "--json")
        rec = next(x for x in json.loads(r.output) if x["name"] == "Recon Miner")["reconciliation"]
        assert rec["seen_units"] == 1_638_350_000_000 - 1_000 * COIN - 10_000
        assert rec["gap_units"] == 5_285_000_000_000 - rec["seen_units"] and rec["reported_btc"] == 52850
        assert rec["text"].startswith("we see 29% of Recon Miner's reported 52,850 BTC")
        r = await cli_run("-c", cfg, "entities", "show", "Recon Miner")
        assert "reconciliation: we see 29% of Recon Miner's reported 52,850 BTC" in r.output
        assert "holdings: 52,850 BTC (as of 2026-03-01; source: test fixture holdings)" in r.output
        assert sale.txid  # the sale itself is classified elsewhere; here only balances matter
