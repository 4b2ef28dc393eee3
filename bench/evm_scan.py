"""Blocks per second that watchers.evm scans on a local anvil node (not part of the test command).

    .venv/bin/python bench/evm_scan.py [--blocks 300] [--txs-per-block 50]

Builds a chain of `--blocks` blocks with `--txs-per-block` plain ETH transfers each (between
unwatched dev accounts, plus one transfer per block from the watched account) and `--blocks` empty
blocks, then times one `EvmSource.poll` over each part with 1 and 20 blocks per JSON-RPC batch.
Prints anvil's start time too. Figures depend on the machine; a remote provider adds network latency
per request, which is what the batching saves.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the anvil helper lives in tests/fakes

import fakes.anvil as anvil  # noqa: E402
from web3 import AsyncHTTPProvider, AsyncWeb3  # noqa: E402

from monitor.clock import SystemClock  # noqa: E402
from watchers.evm import EvmSource  # noqa: E402


async def build_chain(w3: AsyncWeb3, blocks: int, per_block: int, watched: str, others: list[str]) -> None:
    await w3.provider.make_request("evm_setAutomine", [False])
    nonces = {a: await w3.eth.get_transaction_count(a) for a in [watched, *others]}

    def tx(sender: str, value: int):
        nonces[sender] += 1
        return w3.eth.send_transaction(
            {"from": sender, "to": others[0], "value": value, "gas": 21_000, "nonce": nonces[sender] - 1}
        )

    for b in range(blocks):
        pending = [tx(watched, 1 + b)]
        pending += [tx(others[1 + i % (len(others) - 1)], 1) for i in range(per_block - 1)]
        await asyncio.gather(*pending)
        await w3.provider.make_request("evm_mine", [])
    await w3.provider.make_request("evm_setAutomine", [True])


async def timed_poll(url: str, watched: str, first: int, last: int, per_request: int) -> tuple[float, int, int]:
    source = EvmSource(
        "bench",
        url,
        chain_id=31337,
        watched=[watched],
        tokens=(),
        confirmations=0,
        start_block=first,
        max_blocks_per_poll=last - first + 1,
        blocks_per_request=per_request,
        clock=SystemClock(),
    )
    await source.start()
    started = time.perf_counter()
    batch = await source.poll({})
    elapsed = time.perf_counter() - started
    await source.close()
    assert batch.failed == (), source.last_error
    return elapsed, len(batch.txs), batch.requests


async def main(blocks: int, per_block: int) -> None:
    node = anvil.start_anvil()
    print(f"anvil ready in {node.started_in_s * 1000:.0f} ms")
    w3 = AsyncWeb3(AsyncHTTPProvider(node.url))
    try:
        accounts = await w3.eth.accounts
        watched, others = accounts[0], accounts[1:]
        t = time.perf_counter()
        await build_chain(w3, blocks, per_block, watched, others)
        full_last = await w3.eth.block_number
        await w3.provider.make_request("anvil_mine", [hex(blocks)])
        empty_last = await w3.eth.block_number
        print(f"built {blocks} blocks x {per_block} txs + {blocks} empty blocks in {time.perf_counter() - t:.1f} s")
        for per_request in (1, 20):
            for label, first, last in (("full", 1, full_last), ("empty", full_last + 1, empty_last)):
                elapsed, found, requests = await timed_poll(node.url, watched, first, last, per_request)
                n = last - first + 1
                print(
                    f"{label:5} blocks, {per_request:2} per request: {n} blocks in {elapsed:.2f} s = "
                    f"{n / elapsed:,.0f} blocks/s ({n * (per_block if label == 'full' else 0) / elapsed:,.0f} "
                    f"tx/s), {found} transfers found, {requests} requests"
                )
    finally:
        await w3.provider.disconnect()
        node.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=300)
    parser.add_argument("--txs-per-block", type=int, default=50)
    args = parser.parse_args()
    asyncio.run(main(args.blocks, args.txs_per_block))
