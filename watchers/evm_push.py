"""EVM `newHeads` push: a JSON-RPC websocket subscription that wakes an EVM source at each new block.

Same interface as `watchers.push` (`async run(wake, stop)`): it connects to the node's websocket URL
(`ws://` / `wss://`, e.g. anvil and geth serve it beside HTTP), sends
`{"jsonrpc":"2.0","id":1,"method":"eth_subscribe","params":["newHeads"]}`, and calls `wake(reason)` for
every `eth_subscription` notification. Polling stays the source of truth (confirmations, reorg checks and
log ranges are the poller's job); push only removes the wait for the next interval. It reconnects with
jittered backoff, logs the first failure and the recovery, and wakes once after a reconnection so the
next poll covers the heads it missed. Nothing here raises for network trouble.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random

import aiohttp

from monitor.model import Clock
from watchers.http import FailureLog
from watchers.push import Wake, _Backoff, _call_wake, _sleep_or_stop

__all__ = ["EvmHeadsPush"]


class EvmHeadsPush:
    """Wake on every new block head a node announces over its websocket."""

    def __init__(
        self,
        url: str,
        *,
        session: aiohttp.ClientSession,
        clock: Clock,
        name: str = "evm-heads",
        heartbeat: float = 30.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        rng: random.Random | None = None,
        log: logging.Logger | None = None,
    ):
        self.url = url
        self.name = name
        self._session = session
        self._clock = clock
        self._heartbeat = heartbeat
        self._backoff = _Backoff(backoff_base, backoff_cap, rng or random.Random())
        self._log = log or logging.getLogger("watchers.evm_push")
        self.connections = 0
        self.wakes = 0

    def set_addresses(self, addresses) -> None:
        """Heads are not per address: nothing to change (the poller filters by address)."""

    async def run(self, wake: Wake, stop: asyncio.Event) -> None:
        """Subscribe, wake, reconnect until `stop` is set."""
        failures = FailureLog(self._log)
        while not stop.is_set():
            try:
                async with self._session.ws_connect(self.url, heartbeat=self._heartbeat) as ws:
                    await ws.send_str(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_subscribe", "params": ["newHeads"]}))
                    self.connections += 1
                    self._backoff.reset()
                    failures.recovered("push %s recovered", self.name)
                    if self.connections > 1:
                        await self._wake(wake, f"{self.name} reconnected: polling covers the heads it missed")
                    reason = await self._read(ws, wake, stop)
                if stop.is_set():
                    break
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            failures.failed(
                reason, "push %s disconnected (%s); reconnecting", "push %s still disconnected (%s)", self.name, reason
            )
            await _sleep_or_stop(self._clock, self._backoff.next(), stop)

    async def _wake(self, wake: Wake, reason: str) -> None:
        self.wakes += 1
        await _call_wake(wake, reason, self._log)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, wake: Wake, stop: asyncio.Event) -> str:
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while True:
                receiver = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({receiver, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    receiver.cancel()
                    return "stopped"
                msg = receiver.result()
                if msg.type != aiohttp.WSMsgType.TEXT:
                    return f"websocket {msg.type.name.lower()}"
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    continue
                if isinstance(data, dict) and data.get("error"):
                    # a node without subscriptions (plain HTTP RPC behind a ws URL): say so once, stay idle
                    self._log.warning("push %s: the node refused eth_subscribe: %s", self.name, data["error"])
                    await stop.wait()
                    return "stopped"
                params = data.get("params") if isinstance(data, dict) else None
                if isinstance(params, dict) and isinstance(params.get("result"), dict):
                    number = params["result"].get("number")
                    await self._wake(wake, f"{self.name}: new head {number}")
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
