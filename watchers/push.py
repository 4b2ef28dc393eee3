"""Push notifications that wake the pipeline at once: mempool.space's websocket and Bitcoin Core's ZMQ.

Push only *wakes*; polling stays the source of truth (it normalises, stores and decides what is gone).
Both classes have the same interface:

    async run(wake: Callable[[str], Awaitable[None] | None], stop: asyncio.Event) -> None

`run` returns when `stop` is set; it never raises for network trouble (it logs the first failure and the
recovery, reconnects with jittered exponential backoff, and calls `wake("... reconnected ...")` once
after a reconnection so the next poll covers whatever was pushed while disconnected). An exception
raised by `wake` is logged and push goes on.

`MempoolPush` speaks mempool.space's websocket API (`wss://mempool.space/api/v1/ws`, backend
`websocket-handler.ts`): it sends `{"track-addresses": [...]}` and wakes on
`{"multi-address-transactions": {address: {"mempool": [tx], "confirmed": [tx], "removed": [tx]}}}` (sent
when a tracked address appears in new mempool txs, with replaced/evicted ones in `removed`, and when it
appears in a new block), and on the single-address forms (`address-transactions`,
`address-removed-transactions`, `block-transactions`). The server refuses more addresses than its
`MAX_TRACKED_ADDRESSES` with `{"track-addresses-error": "... maximum of N addresses"}`; mempool.space has
also been seen to stop pushing past about 1,500 addresses, so at most `cap` addresses are tracked (the
first ones given: put the most important first), the rest are logged once as relying on polling, and a
`track-addresses-error` naming a smaller maximum shrinks the list to it.

`ZmqPush` subscribes to Core's `zmqpubhashblock` and `zmqpubrawtx` (pyzmq, an optional dependency:
`pip install 'treasury-monitor[zmq]'`). Core sends multipart messages `[topic, body, sequence]`, the
sequence a 4-byte little-endian counter per topic. `hashblock` always wakes; `rawtx` (parsed with
`watchers.rawblock.parse_tx`) wakes only when the tx touches a watched address: an output script equal to a watched address's script, an input spending an
output seen paying a watched address (kept in memory), or an input whose scriptSig/witness reveals a
watched address (P2PKH, P2WPKH, P2SH-*, P2WSH reveal their key or script; a taproot key-path spend does
not, so such a spend of an output created before push started is found by the next poll, not woken). A
gap in the sequence numbers (messages dropped by ZMQ's high-water mark) wakes too. Disconnection and
reconnection are seen through a ZMQ socket monitor (libzmq reconnects by itself).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import random
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any

import aiohttp

from monitor.model import Clock, MalformedError, SourceError
from watchers.addresses import InvalidAddress, address_to_script
from watchers.http import FailureLog, RetryPolicy
from watchers.rawblock import RawTx, parse_tx

__all__ = [
    "Wake",
    "MempoolPush",
    "ZmqPush",
    "DEFAULT_CAP",
    "MEMPOOL_SPACE_WS",
    "input_scripts",
]

Wake = Callable[[str], "Awaitable[None] | None"]
DEFAULT_CAP = 1500
MEMPOOL_SPACE_WS = "wss://mempool.space/api/v1/ws"
_MAX_RE = re.compile(r"maximum of (\d+)")


async def _call_wake(wake: Wake, reason: str, log: logging.Logger) -> None:
    try:
        result = wake(reason)
        if inspect.isawaitable(result):
            await result
    except asyncio.CancelledError:
        raise
    except Exception:  # the pipeline's trouble must not stop push
        log.exception("push wake callback failed reason=%s", reason)


async def _sleep_or_stop(clock: Clock, seconds: float, stop: asyncio.Event) -> None:
    """Sleep on the clock, cut short when `stop` is set."""
    sleeper = asyncio.ensure_future(clock.sleep(seconds))
    stopper = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for t in (sleeper, stopper):
            t.cancel()
        await asyncio.gather(sleeper, stopper, return_exceptions=True)


class _Backoff:
    """Reconnect waits: the shared RetryPolicy with equal jitter (at least half the step), reset after a success."""

    def __init__(self, base: float, cap: float, rng: random.Random):
        self.policy, self.rng = RetryPolicy(0, base, cap), rng
        self.attempt = 0

    def next(self) -> float:
        delay = self.policy.equal_jitter(self.attempt, self.rng)
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0


# --- mempool.space websocket ---------------------------------------------------------------------------


class MempoolPush:
    """Wake on mempool.space websocket pushes for up to `cap` watched addresses (see the module docstring)."""

    def __init__(
        self,
        url: str,
        addresses: Iterable[str],
        *,
        session: aiohttp.ClientSession,
        clock: Clock,
        cap: int = DEFAULT_CAP,
        heartbeat: float = 30.0,
        backoff_base: float = 1.0,
        backoff_cap: float = 60.0,
        rng: random.Random | None = None,
        log: logging.Logger | None = None,
        name: str = "mempool.space",
    ):
        self.url = url
        self.name = name
        self._session = session
        self._clock = clock
        self.cap = max(0, cap)
        self.tracked: tuple[str, ...] = ()
        self.untracked: tuple[str, ...] = ()
        self._changed = asyncio.Event()
        self._split(addresses)
        self._heartbeat = heartbeat
        self._backoff = _Backoff(backoff_base, backoff_cap, rng or random.Random())
        self._log = log or logging.getLogger("watchers.push")
        self.connections = 0  # successful connections so far
        self.wakes = 0

    def _split(self, addresses: Iterable[str]) -> bool:
        all_addresses = list(dict.fromkeys(a.strip() for a in addresses if a.strip()))
        tracked = tuple(all_addresses[: self.cap])
        changed = tracked != self.tracked
        self.tracked, self.untracked = tracked, tuple(all_addresses[self.cap :])
        return changed

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Track another address list (e.g. a grown cluster); a live connection sends it at once."""
        if self._split(addresses):
            self._log.info(
                "push %s now tracks %d addresses (%d more rely on polling)", self.name, len(self.tracked), len(self.untracked)
            )
            self._changed.set()

    async def run(self, wake: Wake, stop: asyncio.Event) -> None:
        """Track, wake, reconnect until `stop` is set (never raises for network trouble)."""
        if self.untracked:
            self._log.warning(
                "push %s tracks %d of %d addresses (cap %d); the other %d rely on polling",
                self.name,
                len(self.tracked),
                len(self.tracked) + len(self.untracked),
                self.cap,
                len(self.untracked),
            )
        if not self.tracked:
            self._log.info("push %s has no address to track; not connecting", self.name)
            return
        failures = FailureLog(self._log)
        while not stop.is_set():
            try:
                async with self._session.ws_connect(self.url, heartbeat=self._heartbeat, autoping=True) as ws:
                    self._changed.clear()
                    await ws.send_str(json.dumps({"track-addresses": list(self.tracked)}))
                    self.connections += 1
                    self._backoff.reset()
                    failures.recovered("push %s recovered url=%s", self.name, self.url)
                    if self.connections > 1:
                        await self._wake(wake, f"{self.name} push reconnected: polling covers what was missed")
                    closed_by = await self._read(ws, wake, stop)
                if stop.is_set():
                    break
                reason = f"connection closed ({closed_by})"
            except asyncio.CancelledError:
                raise
            except (TimeoutError, aiohttp.ClientError, OSError, ValueError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            failures.failed(
                reason,
                "push %s disconnected url=%s reason=%s; reconnecting",
                "push %s still disconnected url=%s reason=%s",
                self.name,
                self.url,
                reason,
            )
            await _sleep_or_stop(self._clock, self._backoff.next(), stop)

    async def _wake(self, wake: Wake, reason: str) -> None:
        self.wakes += 1
        await _call_wake(wake, reason, self._log)

    async def _read(self, ws: aiohttp.ClientWebSocketResponse, wake: Wake, stop: asyncio.Event) -> str:
        stopper = asyncio.ensure_future(stop.wait())
        changer = asyncio.ensure_future(self._changed.wait())
        receiver: asyncio.Future | None = None
        try:
            while True:
                if receiver is None:
                    receiver = asyncio.ensure_future(ws.receive())
                done, _ = await asyncio.wait({receiver, stopper, changer}, return_when=asyncio.FIRST_COMPLETED)
                if stopper in done:
                    return "stopped"
                if changer in done:
                    self._changed.clear()
                    changer = asyncio.ensure_future(self._changed.wait())
                    await ws.send_str(json.dumps({"track-addresses": list(self.tracked)}))
                if receiver not in done:
                    continue
                msg = receiver.result()
                receiver = None
                if msg.type == aiohttp.WSMsgType.TEXT:
                    reason = self._handle(msg.data, ws)
                    if isinstance(reason, str):
                        await self._wake(wake, reason)
                    elif reason is not None:
                        await reason
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED):
                    return f"websocket closed code={ws.close_code}"
                elif msg.type == aiohttp.WSMsgType.ERROR:
                    return f"websocket error {ws.exception()!r}"
        finally:
            pending = [t for t in (stopper, changer, receiver) if t is not None]
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    def _handle(self, text: str, ws: aiohttp.ClientWebSocketResponse) -> str | Awaitable[None] | None:
        """A wake reason for a push message, a coroutine re-sending a shrunk address list, or None."""
        try:
            data = json.loads(text)
        except ValueError:
            self._log.debug("push %s ignored a message that is not JSON", self.name)
            return None
        if not isinstance(data, dict):
            return None
        if "track-addresses-error" in data:
            return self._shrink(str(data["track-addresses-error"]), ws)
        found: list[str] = []
        multi = data.get("multi-address-transactions")
        if isinstance(multi, dict):
            for address, events in multi.items():
                if not isinstance(events, dict):
                    continue
                for kind in ("mempool", "confirmed", "removed"):
                    txs = events.get(kind)
                    if isinstance(txs, list) and txs:
                        found.append(f"{len(txs)} {kind} tx for {address} ({_txid_of(txs[0])})")
        for key, kind in (
            ("address-transactions", "mempool"),
            ("block-transactions", "confirmed"),
            ("address-removed-transactions", "removed"),
        ):
            txs = data.get(key)
            if isinstance(txs, list) and txs:
                found.append(f"{len(txs)} {kind} tx ({_txid_of(txs[0])})")
        if not found:
            return None
        return f"{self.name} push: " + "; ".join(found[:3]) + (f"; +{len(found) - 3} more" if len(found) > 3 else "")

    async def _shrink(self, message: str, ws: aiohttp.ClientWebSocketResponse) -> None:
        m = _MAX_RE.search(message)
        limit = int(m.group(1)) if m else 0
        if 0 < limit < len(self.tracked):
            dropped = self.tracked[limit:]
            self.tracked = self.tracked[:limit]
            self.untracked = dropped + self.untracked
            self.cap = limit
            self._log.warning(
                "push %s refused the address list (%s): tracking the first %d, the other %d rely on polling",
                self.name,
                message,
                limit,
                len(self.untracked),
            )
            await ws.send_str(json.dumps({"track-addresses": list(self.tracked)}))
        else:
            self._log.warning(
                "push %s refused the address list (%s); push is idle, polling covers all addresses", self.name, message
            )


def _txid_of(tx: Any) -> str:
    txid = tx.get("txid") if isinstance(tx, dict) else None
    return txid if isinstance(txid, str) and len(txid) == 64 else "?"


# --- raw transactions ------------------------------------------------------------------------------------


def _hash160(data: bytes) -> bytes:
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def _pushes(script: bytes) -> list[bytes] | None:
    """The data pushes of a push-only script (a scriptSig), or None when it is not push-only."""
    out: list[bytes] = []
    i, n = 0, len(script)
    while i < n:
        op = script[i]
        i += 1
        if op == 0:
            out.append(b"")
            continue
        if op <= 0x4E:
            if op < 0x4C:
                size = op
            else:
                width = {0x4C: 1, 0x4D: 2, 0x4E: 4}[op]
                size = int.from_bytes(script[i : i + width], "little")
                i += width
            if i + size > n:
                return None
            out.append(script[i : i + size])
            i += size
        elif 0x51 <= op <= 0x60 or op == 0x4F:
            out.append(b"")
        else:
            return None
    return out


def _is_pubkey(data: bytes) -> bool:
    return (len(data) == 33 and data[0] in (2, 3)) or (len(data) == 65 and data[0] == 4)


def input_scripts(script_sig: bytes, witness: Sequence[bytes]) -> set[bytes]:
    """Output scripts an input may be spending, as revealed by its scriptSig and witness (P2TR key path: none)."""
    found: set[bytes] = set()
    pushes = _pushes(script_sig) if script_sig else []
    if pushes:
        last = pushes[-1]
        if last:
            found.add(b"\xa9\x14" + _hash160(last) + b"\x87")  # P2SH (incl. P2SH-P2WPKH/P2WSH)
        if len(pushes) == 2 and _is_pubkey(last):
            found.add(b"\x76\xa9\x14" + _hash160(last) + b"\x88\xac")  # P2PKH
    if witness:
        last = witness[-1]
        if len(witness) == 2 and _is_pubkey(last) and len(last) == 33:
            found.add(b"\x00\x14" + _hash160(last))  # P2WPKH
        if not script_sig and last:
            found.add(b"\x00\x20" + hashlib.sha256(last).digest())  # P2WSH
    return found


# --- Bitcoin Core ZMQ -----------------------------------------------------------------------------------


class ZmqPush:
    """Wake on Core's ZMQ `hashblock` (always) and `rawtx` (when it touches a watched address)."""

    TOPICS = ("hashblock", "rawtx", "rawblock")

    def __init__(
        self,
        endpoints: Mapping[str, str] | str,
        addresses: Iterable[str],
        *,
        network: str = "mainnet",
        heartbeat: float = 30.0,
        max_outpoints: int = 100_000,
        log: logging.Logger | None = None,
        name: str = "zmq",
    ):
        if isinstance(endpoints, str):
            endpoints = {"hashblock": endpoints, "rawtx": endpoints}
        unknown = set(endpoints) - set(self.TOPICS)
        if unknown:
            raise ValueError(f"unknown ZMQ topic(s) {sorted(unknown)}; use {', '.join(self.TOPICS)}")
        self.endpoints = dict(endpoints)
        self.name = name
        self.network = network
        self._heartbeat_ms = int(heartbeat * 1000)
        self._log = log or logging.getLogger("watchers.push")
        self._scripts: dict[bytes, str] = {}
        self.set_addresses(addresses)
        self._outpoints: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._max_outpoints = max_outpoints
        self._seq: dict[tuple[str, str], int] = {}
        self.wakes = 0
        self.messages = 0

    def set_addresses(self, addresses: Iterable[str]) -> None:
        """Watch another address list (takes effect with the next message)."""
        scripts: dict[bytes, str] = {}
        bad = []
        for a in addresses:
            try:
                scripts[address_to_script(a.strip(), self.network)] = a.strip()
            except InvalidAddress as exc:
                bad.append(f"{a} ({exc})")
        if bad:
            self._log.warning(
                "push %s ignores %d address(es) not valid on %s: %s", self.name, len(bad), self.network, "; ".join(bad[:5])
            )
        self._scripts = scripts

    def _match(self, tx: RawTx) -> str | None:
        for n, out in enumerate(tx.outputs):
            address = self._scripts.get(out.script)
            if address is not None:
                self._outpoints[(tx.txid, n)] = address
                if len(self._outpoints) > self._max_outpoints:
                    self._outpoints.popitem(last=False)
                return address
        for txin in tx.inputs:
            address = self._outpoints.get((txin.prev_txid, txin.prev_vout))
            if address is not None:
                return address
            for s in input_scripts(txin.script_sig, txin.witness):
                address = self._scripts.get(s)
                if address is not None:
                    return address
        return None

    def _reason(self, topic: str, body: bytes) -> str | None:
        if topic == "hashblock":
            return f"{self.name} hashblock {body.hex() if len(body) == 32 else '?'}"
        if topic == "rawblock":
            return f"{self.name} rawblock"
        if topic == "rawtx":
            try:
                tx = parse_tx(body)
            except MalformedError as exc:
                self._log.debug("push %s ignored an unparsable rawtx (%s)", self.name, exc)
                return None
            address = self._match(tx)
            return f"{self.name} rawtx {tx.txid} touches {address}" if address else None
        return None

    def _check_sequence(self, url: str, topic: str, seq_bytes: bytes) -> str | None:
        if len(seq_bytes) != 4:
            return None
        seq = int.from_bytes(seq_bytes, "little")
        key = (url, topic)
        last = self._seq.get(key)
        self._seq[key] = seq
        if last is not None and seq != (last + 1) & 0xFFFFFFFF:
            missed = (seq - last - 1) & 0xFFFFFFFF
            self._log.warning(
                "push %s missed %d %s message(s) from %s (sequence %d after %d)", self.name, missed, topic, url, seq, last
            )
            return f"{self.name} missed {missed} {topic} message(s)"
        return None

    async def run(self, wake: Wake, stop: asyncio.Event) -> None:
        """Subscribe, wake, follow reconnections until `stop` is set.

        :raises SourceError: when pyzmq is not installed (a configuration problem, not a network one).
        """
        try:
            import zmq
            import zmq.asyncio
            from zmq.utils.monitor import parse_monitor_message
        except ImportError as exc:
            raise SourceError("ZMQ push needs pyzmq: pip install 'treasury-monitor[zmq]'") from exc

        by_url: dict[str, list[str]] = {}
        for topic, url in self.endpoints.items():
            by_url.setdefault(url, []).append(topic)
        ctx = zmq.asyncio.Context()
        subs: dict[Any, str] = {}
        monitors: dict[Any, str] = {}
        connected: dict[str, bool] = {}
        ever: dict[str, bool] = {}
        stopper = asyncio.ensure_future(stop.wait())
        try:
            for url, topics in by_url.items():
                sock = ctx.socket(zmq.SUB)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, 0)  # Core's docs: do not drop on the receiving side
                sock.setsockopt(zmq.HEARTBEAT_IVL, self._heartbeat_ms)
                sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, self._heartbeat_ms * 2)
                for t in topics:
                    sock.setsockopt(zmq.SUBSCRIBE, t.encode())
                mon = sock.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
                sock.connect(url)
                subs[sock] = url
                monitors[mon] = url
                connected[url] = ever[url] = False
            poller = zmq.asyncio.Poller()
            for s in list(subs) + list(monitors):
                poller.register(s, zmq.POLLIN)
            while not stop.is_set():
                polling = asyncio.ensure_future(poller.poll())
                done, _ = await asyncio.wait({polling, stopper}, return_when=asyncio.FIRST_COMPLETED)
                if polling not in done:
                    polling.cancel()
                    await asyncio.gather(polling, return_exceptions=True)
                    break
                for sock, _ in polling.result():
                    if sock in monitors:
                        url = monitors[sock]
                        event = parse_monitor_message(await sock.recv_multipart())
                        if event["event"] == zmq.EVENT_DISCONNECTED and connected[url]:
                            connected[url] = False
                            self._log.warning("push %s disconnected from %s; libzmq reconnects", self.name, url)
                        elif event["event"] == zmq.EVENT_CONNECTED and not connected[url]:
                            connected[url] = True
                            if ever[url]:
                                self._log.info("push %s reconnected to %s", self.name, url)
                                await self._wake(wake, f"{self.name} reconnected to {url}: polling covers what was missed")
                            ever[url] = True
                        continue
                    url = subs[sock]
                    parts = await sock.recv_multipart()
                    self.messages += 1
                    if len(parts) != 3:
                        self._log.debug("push %s ignored a %d-part message", self.name, len(parts))
                        continue
                    topic = parts[0].decode("ascii", "replace")
                    gap = self._check_sequence(url, topic, parts[2])
                    reason = self._reason(topic, parts[1]) or gap
                    if reason is not None:
                        await self._wake(wake, reason)
        finally:
            stopper.cancel()
            await asyncio.gather(stopper, return_exceptions=True)
            for s in subs:
                s.disable_monitor()
            for s in list(monitors) + list(subs):
                s.close(linger=0)
            ctx.term()

    async def _wake(self, wake: Wake, reason: str) -> None:
        self.wakes += 1
        await _call_wake(wake, reason, self._log)
