"""Benchmark: `backfill` of one address with a 10,000-tx history, the whole-history path vs the previous one.

Not a test (pytest never collects bench/). Run from the repo root:

    .venv/bin/python bench/bench_backfill.py              # 10,000 txs
    .venv/bin/python bench/bench_backfill.py --txs 2000   # a quicker smoke run

The local Esplora server (`monitor.sim.esplora_server` over a SimChain) runs in a child process, so the
client CPU measured here (`time.process_time()` of this process: the event loop and the store thread) does
not include the server's work. The history: one watched miner address with 90% receipts and 10% spends
(half to a known exchange, half to unknown addresses), mined 1,000 txs a block.

- **now**: one `treasury-monitor backfill` call. It pages the whole history, committing every 40 pages
  (1,000 txs) with its cursor, and writes each step's txs and flows with one batched upsert per table.
- **before**: the path this release replaced, run in the same process on the same server: one call read
  at most 40 pages + the first (1,025 txs) and wrote each tx and flow with its own sqlite-utils upsert; a
  user had to call it again until the history was complete. It is reproduced by calling `poll` (one tick,
  which is what `backfill` was) until no cursor is unfinished, with `Store.save_txs` / `save_flows`
  replaced by the per-row `save_tx` / `save_flow` loops the pipeline used to run, and without the
  outflow-history index (migration 011) whose absence made each classification scan every flow of the
  entity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import platform
import socket
import sqlite3
import sys
import tempfile
import time
from contextlib import closing
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from click.testing import CliRunner  # noqa: E402

from monitor.cli.main import cli  # noqa: E402
from monitor.sim.chain import COIN, SimChain  # noqa: E402
from storage import Store  # noqa: E402


def build_chain(n_txs: int) -> tuple[SimChain, str, str]:
    """One miner address with `n_txs` txs: 90% receipts, 10% spends (half to the exchange), 1,000 a block."""
    chain = SimChain(seed=7)
    hot, exchange, unknown = chain.address("bench-hot"), chain.address("bench-exchange"), chain.address("bench-unknown")
    per_block = 1000
    for b in range(0, n_txs, per_block):
        k = min(per_block, n_txs - b)
        receipts = k * 9 // 10
        for j in range(receipts):
            chain.fund(hot, COIN + j, confirmed=False)
        chain.mine()
        for j in range(k - receipts):
            chain.pay([hot], [(exchange if j % 2 else unknown, COIN // 4)], fee=1_000)
        chain.mine()
    return chain, hot, exchange


def serve(n_txs: int, port: int) -> None:
    """Child process: build the chain and serve it until killed."""
    from monitor.sim.esplora_server import EsploraServer

    chain, _, _ = build_chain(n_txs)

    async def run() -> None:
        async with EsploraServer(chain, port=port):
            await asyncio.Event().wait()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(port: int) -> None:
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise SystemExit("the local Esplora server did not start")


def write_config(path: Path, url: str, hot: str, exchange: str, db: Path) -> None:
    path.write_text(f"""
[monitor]
storage = "{db}"

[[sources]]
name = "local"
type = "esplora"
urls = ["{url}"]
rate_limit = 100000.0

[prices]
sources = ["csv"]

[[entities]]
name = "Bench Miner"
kind = "miner"
addresses = ["{hot}"]

[[entities]]
name = "Bench Exchange"
kind = "exchange"
addresses = ["{exchange}"]
""")


def cli_call(*args: str) -> tuple[str, float]:
    """Run one CLI command in process; its output and the CPU seconds this process spent on it."""
    cpu = time.process_time()
    r = CliRunner().invoke(cli, list(args))
    spent = time.process_time() - cpu
    if r.exit_code != 0:
        raise SystemExit(f"{args}: exit {r.exit_code}: {r.output} {r.exception!r}")
    return r.output, spent


def requests_of(output: str) -> int:
    return sum(int(line.split(" requests")[0].rsplit(" ", 1)[1]) for line in output.splitlines() if " requests" in line)


def stored(db: Path) -> tuple[int, int, bool]:
    """(txs, flows, every cursor finished) in the database."""
    s = Store(db)
    try:
        with closing(sqlite3.connect(db)) as conn:  # a reader beside the store: only storage/ writes SQL
            txs = conn.execute("select count(*) from transactions").fetchone()[0]
            flows = conn.execute("select count(*) from flows").fetchone()[0]
        done = all(json.loads(v).get("tail") is None for v in s.cursors("local").values())
        return txs, flows, done
    finally:
        s.close()


def without_history_index(db: Path) -> None:
    """A migrated database without the outflow-history index this release added (migration 011)."""
    Store(db).close()  # migrated
    with closing(sqlite3.connect(db)) as conn:  # the bench's own surgery on a copy, outside the product's rooms
        conn.execute("drop index idx_flows_entity_direction_at")


def per_row_writes():
    """Swap the batched writes for the per-row ones the pipeline ran before; returns the undo."""
    batched = Store.save_txs, Store.save_flows

    def save_txs(self, txs, *, now):
        return sum(self.save_tx(tx, now=now) for tx in txs)

    def save_flows(self, flows, *, now):
        return sum(self.save_flow(f, now=now) for f in flows)

    Store.save_txs, Store.save_flows = save_txs, save_flows

    def undo() -> None:
        Store.save_txs, Store.save_flows = batched

    return undo


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--txs", type=int, default=10_000)
    args = ap.parse_args()
    port = free_port()
    proc = multiprocessing.get_context("fork").Process(target=serve, args=(args.txs, port), daemon=True)
    proc.start()
    try:
        _, hot, exchange = build_chain(args.txs)  # same seed: the same addresses as the server's
        wait_ready(port)
        url = f"http://127.0.0.1:{port}/api"
        work = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
        rows = []
        # warm-up (imports, bundled data, price series) on an address without history, so neither path pays it
        write_config(work / "warm.toml", url, SimChain(seed=1).address("idle"), exchange, work / "warm.db")
        cli_call("-c", str(work / "warm.toml"), "poll")

        # before: one tick per call (at most 1,025 txs), per-row writes, called until the history is complete
        cfg, db = work / "before.toml", work / "before.db"
        write_config(cfg, url, hot, exchange, db)
        without_history_index(db)
        undo = per_row_writes()
        try:
            wall, cpu, calls, reqs, first_call_txs = time.perf_counter(), 0.0, 0, 0, None
            while True:
                out, spent = cli_call("-c", str(cfg), "poll")
                cpu, calls, reqs = cpu + spent, calls + 1, reqs + requests_of(out)
                txs, flows, done = stored(db)
                first_call_txs = txs if first_call_txs is None else first_call_txs
                if done:
                    break
            rows.append(("before", calls, first_call_txs, txs, flows, reqs, cpu, time.perf_counter() - wall))
        finally:
            undo()

        # now: one backfill call
        cfg, db = work / "now.toml", work / "now.db"
        write_config(cfg, url, hot, exchange, db)
        wall = time.perf_counter()
        out, cpu = cli_call("-c", str(cfg), "backfill", "--no-progress")
        txs, flows, done = stored(db)
        assert done, "backfill left an unfinished cursor"
        rows.append(("now", 1, txs, txs, flows, requests_of(out), cpu, time.perf_counter() - wall))
    finally:
        proc.kill()
        proc.join()

    print(
        f"backfill of one address with a {args.txs:,}-tx history (Python {platform.python_version()}, "
        f"{platform.machine()}); client CPU = this process (loop + store thread), the server runs in another"
    )
    print("| path | calls | txs after the 1st call | txs stored | flows stored | requests | client CPU s | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for name, calls, first, txs, flows, reqs, cpu, wall in rows:
        print(f"| {name} | {calls} | {first:,} | {txs:,} | {flows:,} | {reqs:,} | {cpu:.2f} | {wall:.2f} |")
    b, n = rows[0], rows[1]
    print(f"now vs before: {b[1]} calls → 1, {b[6] / n[6]:.1f}× less client CPU, {b[7] / n[7]:.1f}× less wall time")


if __name__ == "__main__":
    main()
