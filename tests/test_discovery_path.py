"""One discovery path: `entities discover` and the daemon's discovery job run the same `discover_once` with the
`[discovery]` config (pool owners, thresholds, tracing bounds), in address and block mode alike; with only a
source that cannot follow coins (Bitcoin Core) the CLI says so and exits non-zero."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from builders import (
    COIN,
    MARCH_5_2026,
    bitcoind_source,
    cli_run,
    config_toml,
    entity_table,
    esplora_source,
    fact,
    sourced,
)
from fakes.offloop import in_store
from fakes.receiver import free_port

from monitor.clock import FrozenClock
from monitor.config import load_config
from monitor.run.daemon import Daemon, SourceState
from monitor.run.runtime import runtime
from monitor.sim.chain import Outpoint, SimChain
from monitor.sim.esplora_server import EsploraServer
from storage.discovery import candidate_rows
from storage.reads import flow_row

MARA_POOL = "15MdAHnkxt9TMC2Rj595hsg8Hnv693pPBB"  # pools-v2.json id 115 (bundled pool list)
DISCOVERY = '\n[discovery]\npool_owners = { "MARA Pool" = "Test Miner" }\npool_min_payouts = 5\n'


def write(path: Path, db: Path, sources: list[dict], entities: list[dict], extra: str = DISCOVERY) -> Path:
    path.write_text(config_toml(db=db, sources=sources, entities=entities, extra=extra))
    return path


def pool_chain() -> tuple[SimChain, list[str], str]:
    """12 MARA Pool blocks, their coinbases paid on: 8 payouts to one wallet, 4 to another."""
    chain = SimChain(start_time=MARCH_5_2026 - 86_400)
    wallets = [chain.address("path-wallet-0"), chain.address("path-wallet-1")]
    hot = chain.address("path-miner-hot")
    chain.fund(hot, 10 * COIN)
    blocks = chain.mine(12, coinbase_tag="MARA Pool", coinbase_to=MARA_POOL)
    for i, b in enumerate(blocks):
        value = b.coinbase.vout[0].value
        chain.pay([], [(wallets[0] if i < 8 else wallets[1], value - 1_000)], fee=1_000, inputs=[Outpoint(b.coinbase.txid, 0)])
    chain.mine()
    return chain, wallets, hot


def miner(hot: str) -> dict:
    return entity_table("Test Miner", "miner", sourced([hot]), profile={"holdings_btc": fact(100)})


async def test_cli_and_daemon_discover_the_same_with_the_discovery_config_in_block_mode(tmp_path):
    chain, wallets, hot = pool_chain()
    async with EsploraServer(chain) as server:
        src = [esplora_source("local", server.url, rate_limit=500.0, timeout=5.0, mode="block")]
        cli_cfg = await asyncio.to_thread(write, tmp_path / "cli.toml", tmp_path / "cli.db", src, [miner(hot)])
        r = await cli_run("-c", cli_cfg, "entities", "discover")
        assert r.exit_code == 0, r.output
        # [discovery] is honoured: the pool's payouts go to Test Miner, proposed from 5 payouts (not the defaults)
        assert "pools (MARA Pool): " in r.output and "1 candidate(s) proposed, 0 accepted" in r.output, r.output
        assert "tracing: 0 flow(s) re-attributed" in r.output
        cli_rows = await in_store(tmp_path / "cli.db", candidate_rows)
        assert [(c["address"], c["entity"], c["payouts"]) for c in cli_rows] == [(wallets[0], "Test Miner", 8)]

        # the daemon's discovery job, same config, its own database: the same candidates
        d_cfg = await asyncio.to_thread(write, tmp_path / "d.toml", tmp_path / "d.db", src, [miner(hot)])
        config = await asyncio.to_thread(load_config, d_cfg)
        clock = FrozenClock(MARCH_5_2026 + 86_400)
        daemon = Daemon(config, clock=clock)
        async with runtime(config, clock=clock) as rt:
            daemon.rt = rt
            daemon.states = {s.name: SourceState(s.name) for s in rt.sources}
            await daemon.discover()
        d_rows = await in_store(tmp_path / "d.db", candidate_rows)

        def key(rows):
            return [
                (
                    c["address"],
                    c["entity"],
                    c["status"],
                    c["learned_by"],
                    c["payouts"],
                    c["payout_units"],
                    sorted(e["txid"] for e in c["evidence"]),
                )
                for c in rows
            ]

        assert key(d_rows) == key(cli_rows)


async def test_block_mode_cli_discover_traces_a_transfer_to_an_exchange(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    main, fresh, exch = chain.address("bm-trace-main"), chain.address("bm-trace-fresh"), chain.address("bm-trace-exch")
    chain.fund(main, 400 * COIN)
    chain.mine()
    async with EsploraServer(chain) as server:
        cfg = await asyncio.to_thread(
            write,
            tmp_path / "c.toml",
            tmp_path / "tm.db",
            [esplora_source("local", server.url, rate_limit=500.0, timeout=5.0, mode="block")],
            [
                entity_table("Test Sovereign", "sovereign", sourced([main]), profile={"holdings_btc": fact(5_000)}),
                entity_table("Test Exchange", "exchange", sourced([exch]), watch=False),
            ],
            "\n[discovery]\npools = false\n",
        )
        assert (await cli_run("-c", cfg, "poll")).exit_code == 0
        hop1 = chain.pay([main], [(fresh, 250 * COIN)], fee=2_000)  # change back to main: not a sweep
        chain.mine()
        chain.pay([fresh], [(exch, 250 * COIN - 1_000)], fee=1_000)
        chain.mine()
        r = await cli_run("-c", cfg, "poll")
        assert r.exit_code == 0, r.output
        row = await in_store(tmp_path / "tm.db", flow_row, "bitcoin", hop1.txid, "Test Sovereign")
        assert row["classification"]["verdict"] == "unknown_transfer"
        r = await cli_run("-c", cfg, "entities", "discover")
        assert r.exit_code == 0, r.output
        assert "tracing: 1 flow(s) re-attributed" in r.output and "pools" not in r.output
        row = await in_store(tmp_path / "tm.db", flow_row, "bitcoin", hop1.txid, "Test Sovereign")
        assert (row["classification"]["verdict"], row["classification"]["attribution"]) == (
            "sovereign_sale",
            "exchange:Test Exchange",
        )


async def test_without_a_source_that_can_follow_coins_discover_says_so_and_exits_non_zero(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    hot = chain.address("core-only-hot")
    cfg = await asyncio.to_thread(
        write, tmp_path / "c.toml", tmp_path / "tm.db", [bitcoind_source("core", f"http://127.0.0.1:{free_port()}")], [miner(hot)]
    )
    r = await cli_run("-c", cfg, "entities", "discover")
    assert r.exit_code == 1
    assert "no configured source can follow coins" in r.output and "Bitcoin Core has no spent-output index" in r.output
    r = await cli_run("-c", cfg, "entities", "discover", "--no-pools", "--no-trace")
    assert r.exit_code == 0 and "co-spend: 0 address(es) learned" in r.output, r.output
    assert json.loads((await cli_run("-c", cfg, "entities", "candidates", "--json")).output or "[]") == []


def test_tracing_and_provisional_keys_are_bounded_and_every_problem_is_reported(tmp_path):
    from monitor.config import ConfigError

    cfg = write(
        tmp_path / "c.toml",
        tmp_path / "tm.db",
        [],
        [],
        "\n[discovery]\ntrace_max_hops = 500\n"
        "trace_max_branches = 0\ntrace_floor_share = 1.5\ntrace_significant_share = 0\n"
        'trace_max_age_days = -1\nprovisional = "yes"\nprovisional_settle_days = 0\n',
    )
    try:
        load_config(cfg)
    except ConfigError as exc:
        problems = "\n".join(exc.problems)
    else:
        raise AssertionError("accepted")
    for key in (
        "trace_max_hops: must be at most 200",
        "trace_max_branches",
        "trace_floor_share: must be at most 1",
        "trace_significant_share",
        "trace_max_age_days",
        "discovery.provisional:",
        "provisional_settle_days",
    ):
        assert f"discovery.{key}" in problems if not key.startswith("discovery.") else key in problems, problems
    d = load_config(write(tmp_path / "ok.toml", tmp_path / "tm.db", [], [], "")).discovery
    assert (
        d.trace_max_hops,
        d.trace_value_floor_btc,
        d.trace_floor_share,
        d.trace_max_branches,
        d.trace_max_age_days,
        d.trace_significant_share,
        d.provisional,
        d.provisional_settle_days,
    ) == (20, 0.1, 0.01, 16, 180.0, 0.10, True, 30.0)
