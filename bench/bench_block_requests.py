"""Benchmark: requests per new block in block mode at 10 / 1,000 / 100,000 watched addresses, now vs before.

Not a test (pytest never collects bench/). Run from the repo root:

    .venv/bin/python bench/bench_block_requests.py            # 10, 1,000 and 100,000 addresses (~1 minute)
    .venv/bin/python bench/bench_block_requests.py --quick    # 10 and 1,000

Setup: a SimChain served by the local Esplora server in a background thread. Every watched address holds
one confirmed output, and the block-mode source starts from a stored state (seeded cursor + the watched
UTXO set, as `storage.utxos.load_utxos` gives it after seeding), so only the per-block cost is measured.
Then one block is mined holding 200 noise txs, 5 receipts paid to watched addresses by strangers (a
foreign input each) and 3 sales that spend only watched outputs (one of them two outputs of two
addresses), and the source polls once.

- **now**: a matching tx whose every input is a watched UTXO is built from the raw block with the stored
  values (`EsploraBlockSource._own_tx`); only txs with a foreign input cost a `/tx/:txid`.
- **before**: the same source with that step switched off, i.e. one `/tx/:txid` per matching tx, as the
  previous release did.

Goal: at most 3 requests per block (tip hash, block height, raw block) plus 1 per tx that spends a
foreign input, whatever the number of watched addresses.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp  # noqa: E402

from monitor.clock import SystemClock  # noqa: E402
from monitor.model import WatchedUtxo  # noqa: E402
from monitor.sim.chain import COIN, SimChain  # noqa: E402
from monitor.sim.esplora_server import EsploraServer  # noqa: E402
from watchers.esplora_blocks import EsploraBlockSource  # noqa: E402
from watchers.http import HttpClient  # noqa: E402


class ServerThread:
    """EsploraServer on its own event loop in a daemon thread."""

    def __init__(self, chain: SimChain):
        self.server = EsploraServer(chain)
        self.loop = asyncio.new_event_loop()
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(self.server.start())
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait()


def world(n: int) -> tuple[SimChain, list[str], list[WatchedUtxo]]:
    chain = SimChain(seed=11)
    watched = [chain.address(f"w{i}") for i in range(n)]
    outs = chain.fund_many([(a, COIN + i) for i, a in enumerate(watched)])
    height = chain.height
    utxos = [WatchedUtxo("bitcoin", o.txid, o.vout, a, COIN + i, height) for i, (a, o) in enumerate(zip(watched, outs))]
    return chain, watched, utxos


def activity(chain: SimChain, watched: list[str]) -> tuple[int, int]:
    """One block: 200 noise txs, 5 receipts from strangers, 3 sales of watched outputs. (foreign, own) counts."""
    strangers = [chain.address(f"s{i}") for i in range(20)]
    chain.fund_many([(s, 10 * COIN) for s in strangers], confirmed=False)  # in the same block
    exchange = chain.address("exchange")
    for i in range(200):
        chain.pay([strangers[i % 20]], [(chain.address(f"noise{i}"), 1_000)], fee=200)
    for i in range(5):
        chain.pay([strangers[i]], [(watched[(i * 7) % len(watched)], COIN // 10)], fee=300)
    sellers = watched[-3:] if len(watched) >= 4 else watched[:3]
    chain.pay([sellers[0]], [(exchange, COIN // 2)], fee=500)
    chain.pay([sellers[1]], [(exchange, COIN // 3)], fee=500)
    chain.pay([sellers[2], watched[0]], [(exchange, COIN + COIN // 2)], fee=800)
    chain.mine()
    return 5, 3


async def measure(n: int, own_from_raw: bool) -> dict:
    chain, watched, utxos = world(n)
    srv = ServerThread(chain)
    async with aiohttp.ClientSession() as session:
        http = HttpClient("bench", [srv.server.url], session, clock=SystemClock(), rate_limit=None, retries=2)
        t = time.thread_time()
        src = EsploraBlockSource("blocks", http, watched, clock=SystemClock(), utxos=utxos)
        build = time.thread_time() - t
        if not own_from_raw:
            src._own_tx = lambda *a: None  # the previous release: /tx for every matching tx
        cursors = {"seeded": json.dumps({"v": 1, "addresses": watched})}
        batch = await src.poll(cursors)  # starts at the tip (2 requests)
        cursors.update({c.key: c.state for c in batch.cursors})
        foreign, own = activity(chain, watched)
        before = len(srv.server.requests)
        t = time.thread_time()
        batch = await src.poll(cursors)
        cpu = time.thread_time() - t
        served = srv.server.requests[before:]
    asyncio.run_coroutine_threadsafe(srv.server.stop(), srv.loop).result()
    srv.loop.call_soon_threadsafe(srv.loop.stop)
    return {
        "n": n,
        "requests": batch.requests,
        "tx_requests": sum(p.startswith("/tx/") for p in served),
        "matching": len(batch.txs),
        "foreign": foreign,
        "own": own,
        "cpu": cpu,
        "build": build,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    sizes = [10, 1_000] if ap.parse_args().quick else [10, 1_000, 100_000]
    print(
        "| watched | matching txs (foreign input / own inputs only) | before: requests | now: requests | goal (3 + foreign) | now: poll CPU s |"
    )
    print("|---:|---|---:|---:|---:|---:|")
    for n in sizes:
        before = asyncio.run(measure(n, own_from_raw=False))
        now = asyncio.run(measure(n, own_from_raw=True))
        assert before["matching"] == now["matching"] == before["foreign"] + before["own"]
        print(
            f"| {n:,} | {now['matching']} ({now['foreign']} / {now['own']}) | {before['requests']} | {now['requests']} | "
            f"{3 + now['foreign']} | {now['cpu']:.3f} |"
        )


if __name__ == "__main__":
    main()
