"""CLI `poll` (a new process each time) and the daemon's poll job (one long-lived runtime) do the same work.

Two databases follow the same simulated chain through two local Esplora servers (one per side, so each
request log is one side's): the CLI polls one, the daemon's `poll_source` job the other, round after round,
with blocks carrying receipts and sales in between. Each round both sides must make exactly the same
requests and end with the same stored rows (times aside). 250 watched addresses is more than block mode
seeds per poll (200), the case where the CLI used to seed the same addresses again on every call.
"""

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from builders import COIN, MARCH_5_2026, cli_run, config_toml, entity_table, esplora_source, sql
from fakes.offloop import in_store

from monitor.clock import SystemClock
from monitor.config import DEFAULT_MEMPOOL_CHECKS, load_config
from monitor.run.daemon import Daemon, SourceState
from monitor.run.runtime import runtime
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from watchers.esplora_blocks import DEFAULT_MAX_SEED

N = DEFAULT_MAX_SEED + 50

TABLES = {
    "transactions": "chain, txid, block_height, block_hash, block_time, fee_units, inputs, outputs, status",
    "flows": "chain, txid, entity, block_height, spent_units, change_units, received_units, out_units, direction, status",
    "destinations": "chain, txid, entity, n, address, value_units, attribution",
    "classifications": "chain, txid, entity, version, verdict, severity, reasons, out_units, status, context",
    "watched_utxos": "chain, txid, vout, address, value_units, height",
    "cursors": "source, key, state",
}


def _timeless(context: str) -> str:
    # an unconfirmed flow's time is the wall-clock second it was first seen, which two processes cannot share
    return json.dumps({k: v for k, v in json.loads(context).items() if k != "at"}, sort_keys=True)


def rows(store) -> dict[str, list[tuple]]:
    out = {t: sorted(tuple(r) for r in sql(store, f"select {cols} from {t}")) for t, cols in TABLES.items()}
    out["classifications"] = sorted(r[:-1] + (_timeless(r[-1]),) for r in out["classifications"])
    out["balances"] = sorted((c, a, u) for (c, a, _), u in store.latest_balances().items())
    return out


def world() -> tuple[SimChain, list[str], str]:
    chain = SimChain(start_time=MARCH_5_2026)
    hot = [chain.address(f"par-{i}") for i in range(N)]
    exch = chain.address("par-exchange")
    chain.fund_many([(a, (i + 1) * COIN) for i, a in enumerate(hot)])
    chain.mine()
    return chain, hot, exch


def write(path: Path, url: str, db: Path, hot: list[str], exch: str, mode: str) -> Path:
    path.write_text(
        config_toml(
            db=db,
            sources=[esplora_source("local", url, rate_limit=100000.0, mode=mode)],
            prices={"sources": ["csv"]},
            entities=[entity_table("Test Miner", "miner", hot), entity_table("Test Exchange", "exchange", [exch])],
        )
    )
    return path


@pytest.mark.parametrize("mode", ["block", "address"])
async def test_cli_poll_and_a_daemon_tick_make_the_same_requests_and_store_the_same_rows(tmp_path, mode):
    chain, hot, exch = world()
    async with EsploraServer(chain) as cli_server, EsploraServer(chain) as daemon_server:
        cli_cfg = await asyncio.to_thread(write, tmp_path / "cli.toml", cli_server.url, tmp_path / "cli.db", hot, exch, mode)
        d_cfg = await asyncio.to_thread(write, tmp_path / "d.toml", daemon_server.url, tmp_path / "d.db", hot, exch, mode)
        daemon = Daemon(await asyncio.to_thread(load_config, d_cfg), clock=SystemClock())
        async with contextlib.AsyncExitStack() as stack:
            daemon.rt = await stack.enter_async_context(runtime(daemon.config, clock=daemon.clock))
            daemon.states["local"] = SourceState("local")
            requests_per_round = []
            for round_ in range(7):
                if round_ == 2:  # a block with a sale and a receipt
                    chain.pay([hot[3]], [(exch, 2 * COIN)], fee=1_000)
                    chain.fund(hot[N - 1], COIN // 2)
                if round_ == 3:  # a sale from an address seeded in the second batch, then an empty block
                    chain.pay([hot[N - 2]], [(exch, 10 * COIN)], fee=2_000)
                    chain.mine()
                    chain.mine()
                if round_ == 4:  # an unconfirmed sale (its market context uses the tip's block)
                    chain.pay([hot[5]], [(exch, 3 * COIN)], fee=1_500)
                if round_ == 5:
                    chain.mine()
                c0, d0 = len(cli_server.requests), len(daemon_server.requests)
                r = await cli_run("-c", cli_cfg, "poll")
                assert r.exit_code == 0, r.output
                await daemon.poll_source("local")
                cli_paths, daemon_paths = cli_server.requests[c0:], daemon_server.requests[d0:]
                assert cli_paths == daemon_paths, f"round {round_}"
                requests_per_round.append(len(cli_paths))
                assert await in_store(tmp_path / "cli.db", rows) == await in_store(tmp_path / "d.db", rows), f"round {round_}"
        stored = await in_store(tmp_path / "cli.db", rows)
        assert len([c for c in stored["classifications"] if c[8] == "active" and c[4] != "internal"]) == 3  # the sales
        assert chain.mempool == []
        assert sum(u for c, a, u in stored["balances"] if a in hot) == sum(u.value for a in hot for u in chain.utxos(a))
        if mode == "block":
            # seeding (history backfill + utxo set) spreads over two polls; then a quiet poll is the tip hash and
            # the mempool checks of the round robin
            assert requests_per_round[1] > 4 * (N - DEFAULT_MAX_SEED) and requests_per_round[-1] == 1 + DEFAULT_MEMPOOL_CHECKS


async def test_check_config_says_what_each_source_sees(tmp_path):
    chain, hot, exch = world()
    cfg = tmp_path / "c.toml"
    await asyncio.to_thread(
        cfg.write_text,
        config_toml(
            db=tmp_path / "c.db",
            prices={"sources": ["csv"]},
            sources=[
                esplora_source("auto-source", "http://127.0.0.1:1/api", mode="auto", mempool_checks=50),
                esplora_source("small", "http://127.0.0.1:1/api", mode="address"),
            ],
            entities=[entity_table("Test Miner", "miner", hot), entity_table("Test Exchange", "exchange", [exch])],
        ),
    )
    r = await cli_run("-c", cfg, "check-config")
    assert r.exit_code == 0, r.output
    auto = next(line for line in r.output.splitlines() if "source auto-source" in line)
    assert "mode=block (auto)" in auto and "unconfirmed txs of 50 addresses per poll" in auto
    assert "balances from the watched UTXO set" in auto
    small = next(line for line in r.output.splitlines() if "source small" in line)
    assert "confirmed and unconfirmed txs of all" in small and "Esplora's address stats" in small
