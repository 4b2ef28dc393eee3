"""Benchmark: blocks per second scanned for the chain-wide miner view, with and without pool attribution.

Not a test (pytest never collects bench/). Run from the repo root:

    .venv/bin/python bench/bench_miners.py            # 7 days of 144 blocks (1,008 blocks), under a minute
    .venv/bin/python bench/bench_miners.py --quick    # 1 day (144 blocks)

Setup: the simulated pool episode (`monitor/sim/pool_episode.py`: several pools with pools-v2 tags and
payout addresses, one background tx per block) served by the local Esplora server in a background thread.
The same chain is scanned twice in the same run into two fresh SQLite files: `monitor.miners.scan_blocks`
with `pools=None` (measure only: header pages + one `/block/:hash/txs/0` per block, stored) and with the
bundled pools-v2 index (the same plus tag and payout-address attribution). Reported: blocks/s over the
wall clock of the scan (server and client share the machine), client CPU per block (the scanning thread's
`time.thread_time()`), requests per block, and the attribution ratio. The local server answers at
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
from monitor.miners import measure_block, scan_blocks  # noqa: E402
from monitor.pools import load_pools  # noqa: E402
from monitor.sim.esplora_server import EsploraServer  # noqa: E402
from monitor.sim.pool_episode import build_pool_episode  # noqa: E402
from storage import AsyncStore, Store  # noqa: E402
from watchers.coinbases import EsploraCoinbases  # noqa: E402
from watchers.http import HttpClient  # noqa: E402


class ServerThread:
    """The local Esplora server on its own loop in a background thread."""

    def __init__(self, chain):
        self.chain = chain
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.server: EsploraServer | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.server = EsploraServer(self.chain)
        self.loop.run_until_complete(self.server.start())
        self.ready.set()
        self.loop.run_forever()

    def __enter__(self) -> EsploraServer:
        self.thread.start()
        self.ready.wait()
        assert self.server is not None
        return self.server

    def __exit__(self, *exc) -> None:
        assert self.server is not None
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


async def scan_once(url: str, db: Path, start: int, end: int, pools) -> tuple[float, float, int, int]:
    store = AsyncStore(Store(db))
    async with aiohttp.ClientSession() as session:
        http = HttpClient("esplora", [url], session, clock=FrozenClock(), rng=random.Random(1), retries=1,
                          rate_limit=None)
        reader = EsploraCoinbases(http)
        wall, cpu = time.perf_counter(), time.thread_time()
        res = await scan_blocks(store, reader, start=start, end=end, now=0, pools=pools)
        wall, cpu = time.perf_counter() - wall, time.thread_time() - cpu
    await store.close()
    assert res.error == "", res.error
    return wall, cpu, res.scanned, res.requests


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
    print(f"episode: {end - start + 1} blocks ({days} day(s) x 144) built in {time.perf_counter() - t:.1f} s; "
          f"python {platform.python_version()}, {platform.machine()}")
    pools = load_pools()
    best: dict[str, tuple[float, float, int, int]] = {}
    with ServerThread(ep.chain) as server, tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, p in (("without attribution", None), ("with attribution", pools)):
                got = asyncio.run(scan_once(server.url, Path(tmp) / f"{r}-{p is None}.db", start, end, p))
                if name not in best or got[0] < best[name][0]:
                    best[name] = got
    print(f"{'variant':<22} {'blocks':>7} {'blocks/s':>9} {'CPU ms/block':>13} {'requests/block':>15}")
    for name, (wall, cpu, n, req) in best.items():
        print(f"{name:<22} {n:>7} {n / wall:>9.0f} {1000 * cpu / n:>13.2f} {req / n:>15.2f}")
    a, b = best["without attribution"], best["with attribution"]
    print(f"with/without blocks/s ratio {(b[2] / b[0]) / (a[2] / a[0]):.2f} "
          f"(client CPU {(b[1] / a[1] - 1) * 100:+.1f}%)")
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
    from monitor.sim.esplora_server import block_json, tx_json
    from monitor.sim.chain import TxStatus
    from watchers.coinbases import BlockCoinbase, BlockHeaderInfo
    from watchers.validate import parse_block, parse_tx

    blk = chain.block_at(height)
    b = parse_block(block_json(blk))
    header = BlockHeaderInfo(b["height"], b["id"], b["previousblockhash"], b["timestamp"], b["bits"],
                             float(b["difficulty"]), b["tx_count"])
    cb = blk.txs[0]
    return BlockCoinbase(header, parse_tx(tx_json(chain, cb, TxStatus(blk.height, blk.hash, blk.time))),
                         cb.vin[0].script_sig)


if __name__ == "__main__":
    main()
