"""Benchmark: blocks per second scanned for the chain-wide miner view, with and without pool attribution.

Not a test (pytest never collects bench/). Run from the repo root:

    .venv/bin/python bench/bench_miners.py            # 7 days of 144 blocks (1,008 blocks), about a minute
    .venv/bin/python bench/bench_miners.py --quick    # 1 day (144 blocks)

Setup: the simulated pool episode (`monitor/sim/pool_episode.py`: several pools with pools-v2 tags and
payout addresses, one background tx per block) served by the local Esplora server in a background thread.
The same chain is scanned twice in the same run into two fresh SQLite files: `monitor.discovery.miners.scan_blocks`
with `pools=None` (measure only: header pages + one `/block/:hash/txs/0` per block, stored) and with the
bundled pools-v2 index (the same plus tag and payout-address attribution). Reported: blocks/s over the
wall clock of the scan (server and client share the machine), client CPU per block (the scanning thread's
`time.thread_time()`), requests per block, and the attribution ratio. Two more variants: the
attributed scan followed by `follow_pool_spends` (every mature pool coin checked, as a backfill does), and
the same chain read from the local Core JSON-RPC server (attribution + in-block pool spends). The local server answers at
memory speed, so this is the client's ceiling; a public Esplora is bound by its rate limit instead
(README: "Miner view").
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import platform
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from monitor.clock import FrozenClock  # noqa: E402
from monitor.discovery.miners import follow_pool_spends, measure_block, scan_blocks  # noqa: E402
from monitor.discovery.pools import load_pools  # noqa: E402
from monitor.sim.bitcoind_server import BitcoindServer  # noqa: E402
from monitor.sim.esplora_server import EsploraServer  # noqa: E402
from monitor.sim.pool_episode import build_pool_episode  # noqa: E402
from storage import AsyncStore, Store  # noqa: E402
from watchers.bitcoind.rpc import BitcoindRpc  # noqa: E402
from watchers.coinbases import BitcoindCoinbases, EsploraCoinbases  # noqa: E402
from watchers.http import HttpClient  # noqa: E402


class ServerThread:
    """A local server (Esplora by default) on its own loop in a background thread."""

    def __init__(self, chain, factory=EsploraServer):
        self.chain = chain
        self.factory = factory
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.server: EsploraServer | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = self.factory(self.chain)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self):
        self.thread.start()
        self.ready.wait()
        assert self.server is not None
        return self.server

    def __exit__(self, *exc) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


async def scan_once(
    url: str, db: Path, start: int, end: int, pools, *, spends: bool = False, core: bool = False
) -> tuple[float, float, int, int]:
    store = AsyncStore(Store(db))
    async with aiohttp.ClientSession() as session:
        if core:
            reader = BitcoindCoinbases(
                BitcoindRpc(
                    url, session, clock=FrozenClock(), user="rpcuser", password="rpcpassword", rng=random.Random(1), retries=1
                )
            )
        else:
            reader = EsploraCoinbases(
                HttpClient("esplora", [url], session, clock=FrozenClock(), rng=random.Random(1), retries=1, rate_limit=None)
            )
        wall, cpu = time.perf_counter(), time.thread_time()
        res = await scan_blocks(store, reader, start=start, end=end, now=0, pools=pools)
        requests = res.requests
        if spends:  # what a backfill does after the scan: every mature pool coin checked for a spend
            sp = await follow_pool_spends(store, reader, pools=pools, tip=end, max_checks=None)
            assert sp.error == "", sp.error
            requests += sp.requests
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    await store.close()
    assert res.error == "", res.error
    return wall, cpu, res.scanned, requests


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--rounds", type=int, default=4, help="alternating rounds of each variant; the best is kept")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    days = 1 if args.quick else 7
    t = time.perf_counter()
    ep = build_pool_episode(days=days, per_day=144, reorg_day=days - 1)
    start, end = ep.blocks[0].height, ep.chain.height
    print(
        f"episode: {end - start + 1} blocks ({days} day(s) x 144) built in {time.perf_counter() - t:.1f} s; "
        f"python {platform.python_version()}, {platform.machine()}"
    )
    pools = load_pools()
    best: dict[str, tuple[float, float, int, int]] = {}
    variants = (
        ("without attribution", None, False, False),
        ("with attribution", pools, False, False),
        ("with pool coin spends", pools, True, False),
        ("Core node, with spends", pools, False, True),
    )
    with ServerThread(ep.chain) as server, ServerThread(ep.chain, BitcoindServer) as node, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for i, (name, p, spends, core) in enumerate(variants):
                got = asyncio.run(
                    scan_once(
                        node.url if core else server.url, Path(tmp) / f"{r}-{i}.db", start, end, p, spends=spends, core=core
                    )
                )
                if name not in best or got[0] < best[name][0]:
                    best[name] = got
    print(f"{'variant':<24} {'blocks':>7} {'blocks/s':>9} {'CPU ms/block':>13} {'requests/block':>15}")
    for name, (wall, cpu, n, req) in best.items():
        print(f"{name:<24} {n:>7} {n / wall:>9.0f} {1000 * cpu / n:>13.2f} {req / n:>15.2f}")
    a, b = best["without attribution"], best["with attribution"]
    print(f"with/without blocks/s ratio {(b[2] / b[0]) / (a[2] / a[0]):.2f} (client CPU {(b[1] / a[1] - 1) * 100:+.1f}%)")
    # The attribution step alone, on the same coinbases held in memory (no I/O noise).
    coinbases = [_coinbase(ep.chain, h) for h in range(start, end + 1)]
    for name, p in (("measure only", None), ("measure + attribute", pools)):
        t = time.perf_counter()
        for _ in range(5):
            for cb in coinbases:
                measure_block(cb, p)
        dt = (time.perf_counter() - t) / (5 * len(coinbases))
        print(f"{name:<22} {dt * 1e6:>8.1f} us/block in memory ({1 / dt:,.0f} blocks/s)")


def _coinbase(chain, height: int):
    """The coinbase of a sim block as the reader returns it (through the server's JSON and the validator)."""
    from monitor.sim.chain import TxStatus
    from monitor.sim.esplora_server import block_json, tx_json
    from watchers.coinbases import BlockCoinbase, BlockHeaderInfo
    from watchers.validate import parse_block, parse_tx

    blk = chain.block_at(height)
    b = parse_block(block_json(blk))
    header = BlockHeaderInfo(
        b["height"], b["id"], b["previousblockhash"], b["timestamp"], b["bits"], float(b["difficulty"]), b["tx_count"]
    )
    cb = blk.txs[0]
    return BlockCoinbase(header, parse_tx(tx_json(chain, cb, TxStatus(blk.height, blk.hash, blk.time))), cb.vin[0].script_sig)


if __name__ == "__main__":
    main()
