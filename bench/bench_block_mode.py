"""Benchmark: requests and CPU per poll of a naive poller, address mode and block mode; raw-block matching speed.

Not a test (pytest never collects bench/). Run from the repo root:

    .venv/bin/python bench/bench_block_mode.py            # full run, about 2-3 minutes on 2 cores
    .venv/bin/python bench/bench_block_mode.py --quick    # smaller sizes, for a smoke check

Part 1, requests and client CPU per poll, one new block between polls, against the local Esplora server
(`monitor.sim.esplora_server` over a SimChain, running in a background thread; client CPU is the polling
thread's `time.thread_time()`, so the server's work is not counted):
- naive: bitcoinlib's own `Service(providers=["blockstream"], cache_uri="").gettransactions(address)` for
  every watched address every poll (`strict=False`, as bitcoinlib advises for parsing chain data; strict
  rejects the sim's dummy P2WSH witnesses), pointed at the local server through a `providers.json` in a temporary
  BCL_DATA_DIR (cache off: with its default cache, a second call returns the cached txs and no new ones);
- address: `watchers.esplora.EsploraSource` (stats first, pages only for changed addresses);
- block: `watchers.esplora_blocks.EsploraBlockSource` (tip hash, then each new block once as raw bytes).
Each watched address has a 2-tx history (a receipt, then a spend with change); the new block holds 5
receipts and 2 spends of watched addresses among 200 noise txs. At 100,000 addresses, block mode is
measured; naive and address mode are computed from their measured per-address costs at 1,000.

Part 2, matching throughput on a 4,000-tx block against 1,000,000 watched scripts and 1,000,000 watched
outpoints: `watchers.rawblock.scan_block` vs `parse_block` vs bitcoinlib's `Block.parse_bytes` (+ the same
dict lookups), and the memory of the watched sets (tracemalloc).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import platform
import random
import sys
import tempfile
import threading
import time
import tracemalloc
from pathlib import Path

_DATA_DIR = tempfile.mkdtemp(prefix="bench-bcl-")
os.environ["BCL_DATA_DIR"] = _DATA_DIR  # bitcoinlib reads providers.json from here; must precede its import
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp

from monitor.clock import SystemClock
from monitor.model import WatchedUtxo
from monitor.sim.chain import COIN, SimChain
from monitor.sim.esplora_server import EsploraServer
from watchers import esplora_blocks
from watchers.esplora import EsploraSource
from watchers.esplora_blocks import EsploraBlockSource
from watchers.http import HttpClient
from watchers.rawblock import outpoint_key, parse_block, scan_block

KINDS = ("p2wpkh", "p2pkh", "p2sh", "p2tr", "p2wsh")


# --- the local server in a thread -------------------------------------------------------------------


class ServerThread:
    """EsploraServer on its own event loop in a daemon thread, so sync clients (bitcoinlib) can call it too."""

    def __init__(self, chain: SimChain):
        self.server = EsploraServer(chain)
        self.loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        self._ready.wait()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self.server.start())
        self._ready.set()
        self.loop.run_forever()

    @property
    def count(self) -> int:
        return len(self.server.requests)


# --- the world ----------------------------------------------------------------------------------------


class World:
    """A chain with `n_active` watched addresses that each have a receipt and a spend, plus noise."""

    def __init__(self, n_active: int):
        self.chain = c = SimChain(seed=42)
        self.rng = random.Random(42)
        self.active = [c.address(f"w{i}", KINDS[i % 5]) for i in range(n_active)]
        self.noise = [c.address(f"noise{i}", KINDS[i % 5]) for i in range(400)]
        self.exchange = c.address("exchange", "p2pkh")
        c.fund_many([(n, COIN) for n in self.noise])
        for k in range(0, n_active, 200):
            for a in self.active[k : k + 200]:
                c.fund(a, 5_000_000, confirmed=False)
            c.mine()
            for a in self.active[k : k + 200]:
                c.pay([a], [(self.exchange, 1_000_000)], fee=500)
            c.mine()

    def activity_block(self) -> None:
        """One new block: 5 receipts and 2 spends of the first 10 watched addresses, 200 noise txs."""
        c, rng = self.chain, self.rng
        for a in rng.sample(self.active[:10], 5):
            c.fund(a, rng.randint(1, 9) * 100_000, confirmed=False)
        for a in rng.sample(self.active[:10], 2):
            c.pay([a], [(self.exchange, 100_000)], fee=500)
        for _ in range(200):
            c.pay([rng.choice(self.noise)], [(rng.choice(self.noise), 1_000)], fee=200)
        c.mine()


# --- the three pollers ----------------------------------------------------------------------------------


def naive_service(url: str):
    """bitcoinlib's Service pointed at the local server only, without its cache."""
    from bitcoinlib.services.services import Service

    Path(_DATA_DIR, "providers.json").write_text(
        json.dumps(
            {
                "local": {
                    "provider": "blockstream",
                    "network": "bitcoin",
                    "client_class": "BlockstreamClient",
                    "url": url + "/",
                    "api_key": "",
                    "priority": 10,
                    "denominator": 100000000,
                }
            }
        )
    )
    return Service(network="bitcoin", providers=["blockstream"], cache_uri="", strict=False)


def naive_poll(service, addresses) -> None:
    for a in addresses:
        service.gettransactions(a)


async def measure_async(srv: ServerThread, make, world: World, seeded: list[str] | None = None) -> dict:
    """Warm-up poll (backfill / start + seeding), one activity block, then the measured poll."""
    async with aiohttp.ClientSession() as session:
        http = HttpClient("bench", [srv.server.url], session, clock=SystemClock(), rate_limit=None, retries=2)
        source = make(http)
        cursors: dict[str, str] = {}
        if seeded is not None:
            cursors["seeded"] = json.dumps({"v": 1, "addresses": seeded})
        n0, t0 = srv.count, time.thread_time()
        for _ in range(10):  # warm-up until nothing is left to seed or backfill
            batch = await source.poll(cursors)
            cursors.update({c.key: c.state for c in batch.cursors})
            if not batch.cursors or isinstance(source, EsploraSource):
                break
        warm = (srv.count - n0, time.thread_time() - t0)
        world.activity_block()
        n0, t0 = srv.count, time.thread_time()
        batch = await source.poll(cursors)
        cpu = time.thread_time() - t0
        return {
            "requests": srv.count - n0,
            "cpu": cpu,
            "txs": len(batch.txs),
            "warm_requests": warm[0],
            "warm_cpu": warm[1],
            "failed": len(batch.failed),
        }


def measure_naive(srv: ServerThread, world: World, addresses) -> dict:
    service = naive_service(srv.server.url)
    naive_poll(service, addresses)  # warm-up (a naive poller has no state: it costs the same every poll)
    world.activity_block()
    n0, t0 = srv.count, time.thread_time()
    naive_poll(service, addresses)
    return {"requests": srv.count - n0, "cpu": time.thread_time() - t0}


def watched_for(world: World, n: int) -> list[str]:
    if n <= len(world.active):
        return world.active[:n]
    extra = [world.chain.address(f"idle{i}") for i in range(n - len(world.active))]
    return world.active + extra


# --- part 2: matching throughput and memory -----------------------------------------------------------


def big_block() -> tuple[bytes, list]:
    """A ~1.5 MB block of 4,000 txs, 2 inputs and 2 outputs each (plus coinbase), and its SimBlock txs."""
    c = SimChain(seed=7)
    src = [c.address(f"s{i}", KINDS[i % 5]) for i in range(4000)]
    dst = [c.address(f"d{i}", KINDS[(i + 2) % 5]) for i in range(4000)]
    c.fund_many([(a, 600_000) for a in src] + [(a, 500_000) for a in src])
    for i, a in enumerate(src):
        c.pay([a], [(dst[i], 700_000), (dst[(i + 1) % 4000], 300_000)], fee=1_000, change_address=a)
    block = c.mine()[0]
    return block.raw(), list(block.txs)


def fake_watch_set(n: int, block_txs: list, hits: int = 20) -> tuple[dict[bytes, str], dict[bytes, WatchedUtxo]]:
    """n scripts → address strings and n outpoints → WatchedUtxo; `hits` of each occur in the block.

    Scripts are P2WPKH of sha256(i); the address strings are 42-character stand-ins (the length of a real
    P2WPKH address) so memory is realistic without 1M bech32 encodings.
    """
    scripts = {b"\x00\x14" + hashlib.sha256(i.to_bytes(4, "little")).digest()[:20]: f"bc1q{i:038x}" for i in range(n - hits)}
    outpoints = {}
    for i in range(n - hits):
        txid = hashlib.sha256(b"u" + i.to_bytes(4, "little")).hexdigest()
        outpoints[outpoint_key(txid, i % 3)] = WatchedUtxo("bitcoin", txid, i % 3, f"bc1q{i:038x}", 10_000, 880_000)
    for k, tx in enumerate(block_txs[1 : hits + 1]):
        scripts[tx.vout[0].script] = f"bc1q{'hit':>35}{k:03d}"
        i = tx.vin[0]
        outpoints[outpoint_key(i.txid, i.vout)] = WatchedUtxo("bitcoin", i.txid, i.vout, "bc1qhit", 1, 1)
    return scripts, outpoints


def best_of(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def bitcoinlib_match(raw: bytes, scripts, outpoints) -> int:
    from bitcoinlib.blocks import Block

    block = Block.parse_bytes(raw, parse_transactions=True)
    hits = 0
    for tx in block.transactions:
        hits += any(o.lock_script in scripts for o in tx.outputs)
        hits += any(i.prev_txid[::-1] + int.from_bytes(i.output_n, "big").to_bytes(4, "little") in outpoints for i in tx.inputs)
    return hits


def measure_memory(n: int) -> dict:
    """tracemalloc of the watched sets as EsploraBlockSource holds them, for n addresses and n UTXOs."""
    addresses = [f"bc1q{i:038x}" for i in range(n)]
    scripts = [b"\x00\x14" + hashlib.sha256(i.to_bytes(4, "little")).digest()[:20] for i in range(n)]
    by_address = dict(zip(addresses, scripts))
    real = esplora_blocks.address_script
    esplora_blocks.address_script = by_address.__getitem__  # the stand-in addresses do not decode
    try:
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        src = EsploraBlockSource("mem", None, addresses, clock=SystemClock())  # type: ignore[arg-type]
        watch_bytes = tracemalloc.get_traced_memory()[0] - base
        tracemalloc.stop()
    finally:
        esplora_blocks.address_script = real
    del by_address
    addr_bytes = sum(sys.getsizeof(a) for a in addresses)
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    utxos = [
        WatchedUtxo(
            "bitcoin",
            hashlib.sha256(b"u" + i.to_bytes(4, "little")).hexdigest(),
            i % 3,
            addresses[i],
            10_000 + i,
            880_000 + i % 1000,
        )
        for i in range(n)
    ]
    mid = tracemalloc.get_traced_memory()[0]
    held = {outpoint_key(u.txid, u.vout): u for u in utxos}
    utxo_bytes = tracemalloc.get_traced_memory()[0] - base
    index_bytes = tracemalloc.get_traced_memory()[0] - mid
    tracemalloc.stop()
    del held, utxos, src
    return {
        "scripts_and_index": watch_bytes,
        "address_strings": addr_bytes,
        "utxo_set": utxo_bytes,
        "utxo_index_only": index_bytes,
    }


# --- report ----------------------------------------------------------------------------------------


def fmt_ratio(x: float, base: float) -> str:
    if x == 0:
        return "∞"
    r = base / x
    return f"{r:,.0f}× fewer" if r >= 10 else f"{r:,.1f}× fewer" if r >= 1 else f"{1 / r:,.1f}× more"


async def main(quick: bool) -> None:
    logging.disable(logging.WARNING)  # bitcoinlib and the sources log per request otherwise
    sizes = (10, 100) if quick else (10, 1_000)
    big = 10_000 if quick else 100_000
    n_million = 100_000 if quick else 1_000_000
    print(
        f"# bench_block_mode  {time.strftime('%Y-%m-%d')}  python {platform.python_version()}  "
        f"{platform.machine()}  cores={os.cpu_count()}  quick={quick}"
    )
    t = time.perf_counter()
    world = World(max(sizes))
    srv = ServerThread(world.chain)
    print(
        f"world: {len(world.active)} watched addresses with history, {world.chain.height - 879_999} blocks, "
        f"built in {time.perf_counter() - t:.1f}s; server {srv.server.url}\n"
    )

    rows = []
    for n in sizes:
        watched = watched_for(world, n)
        naive = measure_naive(srv, world, watched)
        addr = await measure_async(
            srv, lambda http, w=watched: EsploraSource("addr", http, w, clock=SystemClock(), max_pages=1000), world
        )
        block = await measure_async(srv, lambda http, w=watched: EsploraBlockSource("blk", http, w, clock=SystemClock()), world)
        rows.append((n, naive, addr, block, "measured"))

    # 100,000: block mode measured (seeded cursor given: seeding would cost 2 requests per address once);
    # naive and address mode from their per-address costs at the largest measured size.
    watched = watched_for(world, big)
    t = time.perf_counter()
    block = await measure_async(
        srv, lambda http: EsploraBlockSource("blk-big", http, watched, clock=SystemClock()), world, seeded=watched
    )
    startup = time.perf_counter() - t
    n_ref, naive_ref, addr_ref, _, _ = rows[-1]
    scale = big / n_ref
    naive_big = {"requests": round(naive_ref["requests"] * scale), "cpu": naive_ref["cpu"] * scale}
    addr_big = {"requests": round(big + (addr_ref["requests"] - n_ref)), "cpu": addr_ref["cpu"] * scale}
    rows.append((big, naive_big, addr_big, block, "block measured; naive, address computed"))

    print("## Requests and client CPU per poll (one new block: 5 receipts + 2 spends of watched addresses, 200 noise txs)\n")
    print(
        "| watched | naive req | address req | block req | naive CPU s | address CPU s | block CPU s | "
        "address vs naive | block vs naive | how |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---|---|---|")
    for n, nv, ad, bl, how in rows:
        print(
            f"| {n:,} | {nv['requests']:,} | {ad['requests']:,} | {bl['requests']:,} | {nv['cpu']:.3f} | "
            f"{ad['cpu']:.3f} | {bl['cpu']:.3f} | {fmt_ratio(ad['requests'], nv['requests'])} req, "
            f"{fmt_ratio(ad['cpu'], nv['cpu'])} CPU | {fmt_ratio(bl['requests'], nv['requests'])} req, "
            f"{fmt_ratio(bl['cpu'], nv['cpu'])} CPU | {how} |"
        )
    print()
    for n, _, ad, bl, _how in rows[:-1]:
        print(
            f"one-time start at {n:,}: address-mode backfill {ad['warm_requests']:,} requests; "
            f"block-mode start + seeding {bl['warm_requests']:,} requests (2 per address, plus tip checks)"
        )
    print(
        f"block mode at {big:,} addresses, seeded cursor given: start {rows[-1][3]['warm_requests']} requests; "
        f"construction + start + measured poll {startup:.1f}s wall (mostly decoding {big:,} addresses)\n"
    )

    print(f"## Matching a 4,000-tx block against {n_million:,} watched scripts and {n_million:,} watched outpoints\n")
    raw, txs = big_block()
    scripts, outpoints = fake_watch_set(n_million, txs)
    n_tx = len(txs)
    scan_t = best_of(lambda: scan_block(raw, scripts, outpoints), 5)
    hits = len(scan_block(raw, scripts, outpoints).matches)
    parse_t = best_of(lambda: parse_block(raw), 3)
    bcl_t = best_of(lambda: bitcoinlib_match(raw, scripts, outpoints), 2)
    print(f"block: {len(raw) / 1e6:.2f} MB, {n_tx:,} txs; scan_block found {hits} matching txs\n")
    print("| parser | seconds per block | tx/s | vs bitcoinlib |")
    print("|---|---:|---:|---|")
    for name, s in (
        ("rawblock.scan_block (match only)", scan_t),
        ("rawblock.parse_block (every tx, txids)", parse_t),
        ("bitcoinlib Block.parse_bytes + lookups", bcl_t),
    ):
        print(f"| {name} | {s:.3f} | {n_tx / s:,.0f} | {'baseline' if s is bcl_t else f'{bcl_t / s:,.0f}× faster'} |")
    print()
    mem = measure_memory(n_million)
    print("| watched set (tracemalloc) | MB |")
    print("|---|---:|")
    print(f"| {n_million:,} address scripts + address index (EsploraBlockSource) | {mem['scripts_and_index'] / 1e6:,.0f} |")
    print(f"| {n_million:,} address strings themselves (held by the registry anyway) | {mem['address_strings'] / 1e6:,.0f} |")
    print(f"| {n_million:,} watched UTXOs (WatchedUtxo objects + outpoint index) | {mem['utxo_set'] / 1e6:,.0f} |")
    print(f"|   of which the outpoint index alone | {mem['utxo_index_only'] / 1e6:,.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke check)")
    asyncio.run(main(parser.parse_args().quick))
