"""Benchmark: latency from a block becoming visible at the Esplora server to its alert at a Slack receiver.

Not a test (pytest never collects bench/). Run from the repo root:

    .venv/bin/python bench/bench_latency.py                 # 50 blocks per mode, under 3 minutes on 2 cores
    .venv/bin/python bench/bench_latency.py --blocks 10     # a quick look
    .venv/bin/python bench/bench_latency.py --modes block   # one mode only
    .venv/bin/python bench/bench_latency.py --rate-limit 1 --blocks 5   # the product's default rate limit

For each mode it runs the real daemon as a user does (`python -m monitor -c cfg run`, a subprocess) against
the local Esplora server (`monitor.sim.esplora_server` over a SimChain, in this process) with
`poll_interval = 1.0`, a watched miner (config entity), an exchange (counterparty) and a Slack channel
pointing at a local receiver (`tests/fakes/receiver.py`). Then, per block: sleep a random fraction of the
poll cycle (the interval, or longer when polls take longer; measured after start-up) so blocks land at a
uniformly random phase of the poll schedule; build an outflow from the miner to the exchange and mine
it in the same synchronous step (the daemon never sees it in the mempool); t0 = `perf_counter()` right
after `chain.mine()`; t1 = when the receiver gets the Slack POST naming that txid. latency = t1 - t0.
One warm-up block per mode is not counted.

Breakdown, from the server's own request log (a middleware stamps every request with `perf_counter()`):
- wait: t0 → the start of the poll that sees the block (found as the first request that can see it,
  the miner's `/address/:a` stats in address mode or `/blocks/tip/hash` in block mode, walked back to
  that poll's first request, the first watched address's stats or the tip hash; 0 when that poll was
  already running at t0). With a 1 s interval and a random phase it is expected to be about uniform
  over [0, 1.05 s] (APScheduler adds up to 10% jitter);
- poll: → the last Esplora request before the alert (address mode reads every watched address's stats
  one after the other, pages the changed one, then reads the block and its coinbase for market context;
  block mode reads the tip hash, the block's hash by height, the raw block and the matching tx);
- decide+deliver: the last Esplora request → the Slack POST (flows, classification, the storage
  transaction, the outbox and the HTTP POST).

Modes, each on a fresh chain built the same way (same seed, same blocks) and a fresh database:
- address: `mode = "address"` (the default), the baseline;
- block: `mode = "block"`;
- push: address mode plus `push_url` at `monitor.sim.mempool_ws.MempoolWsServer`, synced right after
  each `mine()`; the push wakes the source's poll job at once, polling stays every 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/fakes/receiver.py (the Slack-compatible sink), tests/builders.py

import aiohttp
from aiohttp import web
from builders import (
    config_toml,
    entity_table,
    esplora_source,
    miner_profile,
    rule,
    slack_channel,
)
from fakes.receiver import Receiver, RecordedRequest, free_port

from monitor.config import load_config
from monitor.run.runtime import build_registry
from monitor.sim.chain import COIN, SimChain
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.mempool_ws import MempoolWsServer

MARCH_5_2026 = 1_772_668_800
MODES = ("address", "block", "push")
INTERVAL = 1.0
ALERT_TIMEOUT = 60.0  # seconds; a block whose alert takes longer is reported as lost
LOCAL_RATE = 500.0  # requests/s per URL: the local server needs no throttling; `--rate-limit 1` is the default


# --- the world ----------------------------------------------------------------------------------------


def build_chain() -> tuple[SimChain, str, str]:
    """A chain where the miner holds 500 BTC (one confirmed UTXO) and an exchange address exists."""
    chain = SimChain(start_time=MARCH_5_2026, seed=5)
    miner = chain.address("latency-miner")
    exchange = chain.address("latency-exchange")
    chain.fund(miner, 500 * COIN)
    chain.mine()
    return chain, miner, exchange


def write_config(
    path: Path, *, url: str, miner: str, exchange: str, port: int, db: Path, mode: str, push_url: str | None, rate_limit: float
) -> Path:
    path.write_text(
        config_toml(
            db=db,
            sources=[
                esplora_source(
                    "local",
                    url,
                    mode="block" if mode == "block" else "address",
                    rate_limit=rate_limit,
                    timeout=5.0,
                    retries=2,
                    poll_interval=INTERVAL,
                    push_url=push_url,
                )
            ],
            entities=[
                entity_table("Latency Miner", "miner", [miner], profile=miner_profile("bench fixture")),
                entity_table("Latency Exchange", "exchange", [exchange]),
            ],
            alerts={"max_age": 100000000},
            channels=[slack_channel("slack", "TM_SLACK_URL")],
            rules=[rule("all", ["slack"], min_severity="info")],
            daemon={"port": port, "shutdown_grace": 5, "digest_hour": -1},
        )
    )
    return path


# --- observation --------------------------------------------------------------------------------------


@dataclass
class Log:
    """Every Esplora request and every receiver POST, stamped with perf_counter()."""

    requests: list[tuple[float, str]] = field(default_factory=list)
    posts: list[tuple[float, str]] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    def middleware(self):
        @web.middleware
        async def stamp(request: web.Request, handler):
            self.requests.append((time.perf_counter(), request.path[len("/api") :]))
            return await handler(request)

        return stamp

    def on_post(self, rec: RecordedRequest) -> None:  # the receiver's hook: None = answer as scripted (200)
        self.posts.append((time.perf_counter(), rec.text))
        self.arrived.set()


@dataclass
class Sample:
    latency: float
    wait: float | None
    fetch: float | None
    deliver: float | None
    requests: int  # Esplora requests between t0 and t1


async def wait_alert(log: Log, txid: str, since: int, timeout: float) -> float | None:
    """perf_counter() of the first POST (at index >= since) naming txid, or None after timeout."""
    deadline = time.perf_counter() + timeout
    while True:
        for t, text in log.posts[since:]:
            if txid in text:
                return t
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        log.arrived.clear()
        try:
            await asyncio.wait_for(log.arrived.wait(), left)
        except TimeoutError:
            pass


def breakdown(log: Log, t0: float, t1: float, detect_path: str, start_path: str) -> Sample:
    """Split t1 - t0 at the start of the poll that saw the block and at that poll's last Esplora request.

    `detect_path` is the first request that can see the block; `start_path` the first request of every
    poll (address mode: the stats of the first watched address; block mode: the tip hash).
    """
    reqs = log.requests
    idx = next((k for k, (t, p) in enumerate(reqs) if t0 <= t <= t1 and p == detect_path), None)
    window = [(t, p) for t, p in reqs if t0 <= t <= t1]
    if idx is None or not window:
        return Sample(t1 - t0, None, None, None, len(window))
    j = idx
    while j > 0 and reqs[j][1] != start_path:
        j -= 1
    start = max(t0, reqs[j][0])  # a poll already running at t0 that reaches the miner later: no wait
    last = window[-1][0]
    return Sample(t1 - t0, start - t0, last - start, t1 - last, len(window))


def shape(path: str) -> str:
    """A request path with hashes, addresses and numbers replaced by placeholders."""
    parts = path.split("/")
    out = []
    for k, part in enumerate(parts):
        if len(part) == 64 and all(c in "0123456789abcdef" for c in part):
            out.append(":hash")
        elif k == 2 and parts[1] == "address":
            out.append(":a")
        elif part.isdigit():
            out.append(":n")
        else:
            out.append(part)
    return "/".join(out)


def describe(paths: list[str]) -> str:
    counts: dict[str, int] = {}
    for p in paths:
        counts[shape(p)] = counts.get(shape(p), 0) + 1
    return ", ".join(f"{p} ×{n}" if n > 1 else p for p, n in counts.items())


async def wait_until(pred, timeout: float, proc: subprocess.Popen, errlog: Path) -> None:
    deadline = time.perf_counter() + timeout
    while not pred():
        if proc.poll() is not None:
            raise RuntimeError(f"daemon exited ({proc.returncode}):\n{errlog.read_text()[-3000:]}")
        if time.perf_counter() > deadline:
            raise RuntimeError(f"daemon not ready in {timeout}s:\n{errlog.read_text()[-3000:]}")
        await asyncio.sleep(0.05)


async def wait_http(url: str, proc: subprocess.Popen, errlog: Path, timeout: float = 30.0) -> None:
    deadline = time.perf_counter() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited ({proc.returncode}):\n{errlog.read_text()[-3000:]}")
            try:
                async with s.get(url) as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                if time.perf_counter() > deadline:
                    raise
                await asyncio.sleep(0.1)


def start_daemon(cfg: Path, slack_url: str, errlog: Path) -> subprocess.Popen:
    """`python -m monitor -c cfg run` as a user runs it, its log to a file (a full pipe would stall it)."""
    with open(errlog, "w") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "monitor", "-c", str(cfg), "--log-level", "info", "run"],
            cwd=ROOT,
            env={**os.environ, "TM_SLACK_URL": slack_url},
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


# --- one mode -----------------------------------------------------------------------------------------


async def run_mode(mode: str, n_blocks: int, tmp: Path, seed: int, rate_limit: float = LOCAL_RATE) -> dict:
    chain, miner, exchange = build_chain()
    log = Log()
    server = EsploraServer(chain)
    server.app.middlewares.append(log.middleware())
    rng = random.Random(seed)  # the same phases in every mode
    ws = MempoolWsServer(chain) if mode == "push" else None
    detect_path = "/blocks/tip/hash" if mode == "block" else f"/address/{miner}"
    errlog = tmp / f"{mode}.log"
    async with server, Receiver(on_request=log.on_post) as slack:
        if ws is not None:
            await ws.start()
        port = free_port()
        cfg = write_config(
            tmp / f"{mode}.toml",
            url=server.url,
            miner=miner,
            exchange=exchange,
            port=port,
            db=tmp / f"{mode}.db",
            mode=mode,
            push_url=ws.url if ws else None,
            rate_limit=rate_limit,
        )
        # the daemon polls addresses in the registry's order (bundled tracked entities, then the config's)
        watched = build_registry(load_config(cfg, env={"TM_SLACK_URL": "http://unused"})).watched_addresses("bitcoin")
        start_path = "/blocks/tip/hash" if mode == "block" else f"/address/{watched[0]}"
        proc = start_daemon(cfg, slack.url("/services/T0/B0/bench"), errlog)
        started = time.perf_counter()
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz", proc, errlog)
            # ready: the source has polled a few times (backfill done), push is tracking
            await wait_until(lambda: sum(1 for _, p in log.requests if p == detect_path) >= 3, 60, proc, errlog)
            if ws is not None:
                await ws.wait_tracking(1, timeout=30)
            ready = time.perf_counter() - started
            # blocks land at a random phase of the poll cycle: the interval, or longer when polls take longer
            # (a rate-limited address-mode poll); measured over two steady-state polls after the start-up ones
            n_seen = sum(1 for _, p in log.requests if p == detect_path)
            await wait_until(lambda: sum(1 for _, p in log.requests if p == detect_path) >= n_seen + 2, 120, proc, errlog)
            seen = [t for t, p in log.requests if p == detect_path][-2:]
            cycle = max(INTERVAL, seen[1] - seen[0])
            samples: list[Sample] = []
            last_paths: list[str] = []
            lost = 0
            for i in range(n_blocks + 1):  # block 0 is a warm-up
                await asyncio.sleep(rng.uniform(0, cycle))
                since = len(log.posts)
                # pay + mine in one synchronous step: the server never shows the tx unconfirmed
                tx = chain.pay([miner], [(exchange, (1 + i % 7) * COIN)], fee=2_000 + i)
                chain.mine()
                t0 = time.perf_counter()
                if ws is not None:
                    await ws.sync()
                t1 = await wait_alert(log, tx.txid, since, ALERT_TIMEOUT)
                if t1 is None:
                    lost += 1
                    continue
                if i > 0:
                    samples.append(breakdown(log, t0, t1, detect_path, start_path))
                    last_paths = [p for t, p in log.requests if t0 <= t <= t1]
                await asyncio.sleep(0.05)  # let the tick finish (cursor commit, health) before the next block
            polls = sum(1 for _, p in log.requests if p == detect_path)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.to_thread(proc.wait, 20)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if ws is not None:
                await ws.stop()
    text = errlog.read_text()
    return {
        "mode": mode,
        "samples": samples,
        "lost": lost,
        "ready": ready,
        "cycle": cycle,
        "watched": len(watched),
        "polls": polls,
        "requests": len(log.requests),
        "skipped": text.count("maximum number of running instances"),
        "missed": text.count("was missed by"),
        "woken": text.count("woken by push"),
        "exit": proc.returncode,
        "last_paths": last_paths,
    }


# --- report ---------------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    """Percentile q (0-100), linear interpolation between closest ranks."""
    v = sorted(values)
    if len(v) == 1:
        return v[0]
    k = (len(v) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def stats(values: list[float]) -> dict[str, float]:
    return {
        "p50": pct(values, 50),
        "p90": pct(values, 90),
        "p99": pct(values, 99),
        "max": max(values),
        "mean": statistics.fmean(values),
    }


def versus(x: float, base: float) -> str:
    """`x` against the baseline: "12.3× lower", "1.08× higher", or "same (±5%)"."""
    if abs(x - base) <= 0.05 * base:
        return "same (±5%)"
    return f"{base / x:.1f}× lower" if x < base else f"{x / base:.2f}× higher"


def ms(x: float) -> str:
    return f"{x * 1000:,.0f}"


async def main(n_blocks: int, modes: list[str], rate_limit: float) -> None:
    load0 = os.getloadavg()
    print(
        f"# bench_latency  {time.strftime('%Y-%m-%d %H:%M %Z')}  python {platform.python_version()}  "
        f"{platform.system()} {platform.machine()}  cores={os.cpu_count()}  load avg at start "
        f"{load0[0]:.2f}"
    )
    print(
        f"blocks per mode: {n_blocks} (+1 warm-up), poll_interval = {INTERVAL} s (10% jitter), "
        f"rate_limit = {rate_limit:g} req/s, daemon = `python -m monitor run` subprocess\n"
    )
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as d:
        for mode in modes:
            t = time.perf_counter()
            r = await run_mode(mode, n_blocks, Path(d), seed=11, rate_limit=rate_limit)
            r["wall"] = time.perf_counter() - t
            results.append(r)
            print(
                f"{mode}: {r['watched']} watched addresses, poll cycle {r['cycle']:.2f}s, "
                f"{len(r['samples'])} blocks measured, {r['lost']} lost, daemon ready in {r['ready']:.1f}s, "
                f"{r['requests']:,} Esplora requests, {r['polls']} detecting polls, "
                f"{r['skipped']} poll runs skipped (instance still running), {r['woken']} push wakes, "
                f"exit {r['exit']}, {r['wall']:.0f}s wall",
                flush=True,
            )
            print(f"    requests between t0 and t1 of the last block: {describe(r['last_paths'])}", flush=True)
    print()
    base = next((r for r in results if r["mode"] == "address" and r["samples"]), None)
    print("## Block visible at the server → Slack POST at the receiver (ms)\n")
    print("| mode | n | p50 | p90 | p99 | max | mean | p50 vs address | p99 vs address |")
    print("|---|---:|---:|---:|---:|---:|---:|---|---|")
    for r in results:
        if not r["samples"]:
            print(f"| {r['mode']} | 0 | | | | | | | |")
            continue
        s = stats([x.latency for x in r["samples"]])
        if base is not None and r is not base:
            b = stats([x.latency for x in base["samples"]])
            vs50, vs99 = versus(s["p50"], b["p50"]), versus(s["p99"], b["p99"])
        else:
            vs50 = vs99 = "baseline"
        print(
            f"| {r['mode']} | {len(r['samples'])} | {ms(s['p50'])} | {ms(s['p90'])} | {ms(s['p99'])} | "
            f"{ms(s['max'])} | {ms(s['mean'])} | {vs50} | {vs99} |"
        )
    print("\n## Where the time goes (ms; p50 / p90 / max of each part)\n")
    print(
        "| mode | wait (t0 → the poll that sees it) | poll (→ its last Esplora request) "
        "| decide+deliver (→ Slack POST) "
        "| latency − wait, mean | Esplora requests per block, mean |"
    )
    print("|---|---|---|---|---:|---:|")
    for r in results:
        ok = [x for x in r["samples"] if x.wait is not None]
        if not ok:
            continue
        parts = []
        for key in ("wait", "fetch", "deliver"):
            s = stats([getattr(x, key) for x in ok])
            parts.append(f"{ms(s['p50'])} / {ms(s['p90'])} / {ms(s['max'])}")
        proc = statistics.fmean(x.latency - x.wait for x in ok)
        reqs = statistics.fmean(x.requests for x in r["samples"])
        print(f"| {r['mode']} | {' | '.join(parts)} | {ms(proc)} | {reqs:.1f} |")
        if len(ok) < len(r["samples"]):
            print(f"|  ({len(r['samples']) - len(ok)} blocks without a detecting request in the window) | | | | | |")
    load1 = os.getloadavg()
    print(f"\nload avg at end {load1[0]:.2f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=50, help="measured blocks per mode (default 50)")
    parser.add_argument(
        "--rate-limit",
        type=float,
        default=LOCAL_RATE,
        help=f"the source's rate_limit, requests/s (default {LOCAL_RATE:g}: unthrottled; 1 is the product default)",
    )
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    args = parser.parse_args()
    chosen = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in chosen if m not in MODES]
    if bad or args.blocks < 1 or args.rate_limit <= 0:
        parser.error(f"unknown mode(s) {bad}; blocks and rate limit must be > 0")
    asyncio.run(main(args.blocks, chosen, args.rate_limit))
