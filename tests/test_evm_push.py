"""newHeads push from a real anvil node wakes the EVM source; a dropped connection reconnects."""

import asyncio

import aiohttp
import fakes.anvil as _anvil

from monitor.clock import SystemClock
from watchers.evm_push import EvmHeadsPush

anvil = _anvil.anvil


async def test_new_heads_wake_and_reconnect(anvil):
    woken: list[str] = []
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        push = EvmHeadsPush(
            anvil.url.replace("http://", "ws://"), session=session, clock=SystemClock(), backoff_base=0.05, backoff_cap=0.1
        )
        task = asyncio.create_task(push.run(woken.append, stop))
        for _ in range(100):
            if push.connections:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.1)  # the subscription is registered
        await asyncio.to_thread(anvil.rpc, "evm_mine", [])
        await asyncio.to_thread(anvil.rpc, "evm_mine", [])
        for _ in range(100):
            if len(woken) >= 2:
                break
            await asyncio.sleep(0.02)
        assert len(woken) >= 2 and all("new head" in w for w in woken)
        stop.set()
        await asyncio.wait_for(task, 5)


async def test_unreachable_node_is_retried_quietly_until_stopped():
    stop = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        push = EvmHeadsPush(
            f"ws://127.0.0.1:{_anvil.free_port()}", session=session, clock=SystemClock(), backoff_base=0.01, backoff_cap=0.02
        )
        task = asyncio.create_task(push.run(lambda r: None, stop))
        await asyncio.sleep(0.2)
        assert not task.done() and push.connections == 0
        stop.set()
        await asyncio.wait_for(task, 5)
