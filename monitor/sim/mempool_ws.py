"""Local websocket server speaking mempool.space's address-tracking protocol over a SimChain (aiohttp).

Follows mempool/mempool `backend/src/api/websocket-handler.ts`:
- the client sends `{"track-addresses": [addr, ...]}` (a list; each address checked with the backend's
  `testAddress` pattern, bech32 keys lower-cased) or `{"track-address": addr}`; more than `max_tracked`
  addresses (the backend's MAX_TRACKED_ADDRESSES) answers
  `{"track-addresses-error": "too many addresses requested, this connection supports tracking a maximum of N addresses"}`
  and clears the list; `{"action": "ping"}` answers `{"pong": true}`; a message that is not JSON closes
  the connection;
- on a mempool change (`sync()` finds new or removed mempool txs) each tracked address that appears in a
  *new* tx gets `{"multi-address-transactions": {addr: {"mempool": [tx...], "confirmed": [], "removed":
  [tx...]}}}` (removed txs are only sent along with new ones, as the backend does); the single form sends
  `address-transactions` and `address-removed-transactions`;
- on each new block, tracked addresses in its txs get `{"mempool": [], "confirmed": [tx...], "removed": []}`
  (single form: `block-transactions`, with block status).
Transactions are Esplora tx objects (`monitor.sim.esplora_server.tx_json`), as mempool.space pushes them.

The test drives it: change the SimChain, then `await server.sync()` pushes what changed since the last
sync. `drop()` aborts every open connection (to test reconnects); `received` records client messages.
"""

from __future__ import annotations

import asyncio
import json
import re
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web

from monitor.sim.chain import SimBlock, SimChain, SimTx
from monitor.sim.esplora_server import tx_json

__all__ = ["MempoolWsServer", "WS_PATH", "valid_address"]

WS_PATH = "/api/v1/ws"
# websocket-handler.ts testAddress: base58, bech32 (one case), or a raw public key.
_ADDRESS_RE = re.compile(
    r"^([a-km-zA-HJ-NP-Z1-9]{26,35}|[a-km-zA-HJ-NP-Z1-9]{80}|[a-z]{2,5}1[ac-hj-np-z02-9]{8,100}|"
    r"[A-Z]{2,5}1[AC-HJ-NP-Z02-9]{8,100}|04[a-fA-F0-9]{128}|(02|03)[a-fA-F0-9]{64})$"
)


def valid_address(address: Any) -> str | None:
    """The backend's canonical key for an address (bech32 lower-cased), or None when it is rejected."""
    if not isinstance(address, str) or not _ADDRESS_RE.match(address):
        return None
    if re.match(r"^[A-Z]{2,5}1", address):
        return address.lower()
    return address


@dataclass
class _Client:
    ws: web.WebSocketResponse
    request: web.Request
    tracked: dict[str, str] | None = None  # address as sent → canonical key
    single: str | None = None
    messages: list[Any] = field(default_factory=list)


class MempoolWsServer:
    """`async with MempoolWsServer(chain) as srv:` — `srv.url` is ws://127.0.0.1:PORT/api/v1/ws."""

    def __init__(self, chain: SimChain, *, host: str = "127.0.0.1", port: int = 0, max_tracked: int | None = None):
        self.chain = chain
        self.host = host
        self.port = port
        self.max_tracked = max_tracked
        self.clients: list[_Client] = []
        self.received: list[Any] = []
        self.connections = 0
        self._mempool: dict[str, SimTx] = {t.txid: t for t in chain.mempool}
        self._tip: SimBlock | None = chain.tip
        self._runner: web.AppRunner | None = None
        self.app = web.Application()
        self.app.router.add_get(WS_PATH, self._handle)

    @property
    def url(self) -> str:
        return f"ws://{self.host}:{self.port}{WS_PATH}"

    async def start(self) -> MempoolWsServer:
        self._runner = web.AppRunner(self.app, handle_signals=False, shutdown_timeout=1.0, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = self._runner.addresses[0][1]
        return self

    async def stop(self) -> None:
        for c in list(self.clients):
            await c.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> MempoolWsServer:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    async def wait_tracking(self, n: int = 1, timeout: float = 5.0) -> None:
        """Wait until `n` connected clients have sent their address list (test helper)."""

        async def ready() -> None:
            while sum(1 for c in self.clients if c.tracked or c.single) < n:
                await asyncio.sleep(0.005)

        await asyncio.wait_for(ready(), timeout)

    async def drop(self) -> int:
        """Abort every open connection without a close handshake; returns how many were dropped."""
        dropped = 0
        for c in list(self.clients):
            transport = c.request.transport
            if transport is not None:
                transport.abort()
                dropped += 1
        self.clients.clear()
        return dropped

    # --- protocol ---------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        client = _Client(ws, request)
        self.clients.append(client)
        self.connections += 1
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    await ws.close()
                    break
                self.received.append(data)
                client.messages.append(data)
                response = self._on_message(client, data)
                if response:
                    await ws.send_str(json.dumps(response))
        finally:
            if client in self.clients:
                self.clients.remove(client)
        return ws

    def _on_message(self, client: _Client, data: Any) -> dict[str, Any]:
        response: dict[str, Any] = {}
        if not isinstance(data, dict):
            return response
        if "track-address" in data:
            client.single = valid_address(data["track-address"])
        if isinstance(data.get("track-addresses"), list):
            mapping = {}
            for a in data["track-addresses"]:
                key = valid_address(a)
                if key is not None:
                    mapping[a] = key
            if self.max_tracked is not None and len(mapping) > self.max_tracked:
                response["track-addresses-error"] = (
                    f"too many addresses requested, this connection supports tracking a maximum of {self.max_tracked} addresses"
                )
                client.tracked = None
            else:
                client.tracked = mapping or None
        if data.get("action") == "ping":
            response["pong"] = True
        return response

    # --- pushes -------------------------------------------------------------------------------------

    def _addresses(self, tx: SimTx) -> set[str]:
        found = {o.address for o in tx.vout if o.address}
        for i in tx.vin:
            if not i.is_coinbase:
                prev = self.chain.prevout(i.txid, i.vout)
                if prev is not None and prev.address:
                    found.add(prev.address)
        return found

    def _cache(self, txs: list[SimTx]) -> dict[str, list[SimTx]]:
        cache: dict[str, list[SimTx]] = {}
        for tx in txs:
            for a in self._addresses(tx):
                cache.setdefault(a, []).append(tx)
        return cache

    async def sync(self) -> int:
        """Push what changed in the chain since the last sync (mempool change, then each new block); returns messages sent."""
        chain = self.chain
        now = {t.txid: t for t in chain.mempool}
        new_blocks: list[SimBlock] = []
        if chain.tip is not None and chain.tip is not self._tip:
            fork = self._tip
            while fork is not None and not chain.is_best(fork):
                fork = chain.block_by_hash(fork.prev_hash)
            start = fork.height + 1 if fork is not None else chain.start_height
            new_blocks = [b for b in chain.blocks if b.height >= start]
        confirmed = {t for b in new_blocks for t in b.txids}
        added = [t for txid, t in now.items() if txid not in self._mempool]
        removed = [t for txid, t in self._mempool.items() if txid not in now and txid not in confirmed]
        sent = 0
        if added or removed:
            sent += await self._push_mempool(added, removed)
        for block in new_blocks:
            sent += await self._push_block(block)
        self._mempool, self._tip = now, chain.tip
        return sent

    async def _push_mempool(self, added: list[SimTx], removed: list[SimTx]) -> int:
        new_cache, removed_cache = self._cache(added), self._cache(removed)
        sent = 0
        for c in list(self.clients):
            response: dict[str, Any] = {}
            if c.single:
                new = [tx_json(self.chain, t, None) for t in new_cache.get(c.single, [])]
                gone = [tx_json(self.chain, t, None) for t in removed_cache.get(c.single, [])]
                if gone:
                    response["address-removed-transactions"] = gone
                if new:
                    response["address-transactions"] = new
            if c.tracked:
                amap = {}
                for address, key in c.tracked.items():
                    new = [tx_json(self.chain, t, None) for t in new_cache.get(key, [])]
                    if new:
                        amap[address] = {
                            "mempool": new,
                            "confirmed": [],
                            "removed": [tx_json(self.chain, t, None) for t in removed_cache.get(key, [])],
                        }
                if amap:
                    response["multi-address-transactions"] = amap
            if response:
                sent += await self._send(c, response)
        return sent

    async def _push_block(self, block: SimBlock) -> int:
        cache = self._cache(list(block.txs))
        status = self.chain.tx_status(block.txids[0])
        sent = 0
        for c in list(self.clients):
            response: dict[str, Any] = {}
            if c.single and cache.get(c.single):
                response["block-transactions"] = [tx_json(self.chain, t, status) for t in cache[c.single]]
            if c.tracked:
                amap = {
                    address: {"mempool": [], "confirmed": [tx_json(self.chain, t, status) for t in cache[key]], "removed": []}
                    for address, key in c.tracked.items()
                    if cache.get(key)
                }
                if amap:
                    response["multi-address-transactions"] = amap
            if response:
                sent += await self._send(c, response)
        return sent

    async def _send(self, c: _Client, response: dict[str, Any]) -> int:
        if c.ws.closed:
            return 0
        try:
            await c.ws.send_str(json.dumps(response))
        except ConnectionError:
            return 0
        return 1
