"""Push wake-ups: MempoolPush against a local mempool.space-protocol websocket server over SimChain, and
ZmqPush against a real ZMQ publisher sending Core's multipart frames (topic, body, 4-byte LE sequence)."""

from __future__ import annotations

import asyncio
import logging
import sys

import aiohttp
import pytest
import zmq
import zmq.asyncio

from monitor.clock import FrozenClock
from monitor.model import SourceError
from monitor.sim.chain import COIN, SimChain
from monitor.sim.mempool_ws import MempoolWsServer, valid_address
from watchers.push import MempoolPush, ZmqPush, input_scripts
from watchers.rawblock import parse_tx

WAIT = 5.0  # a safety timeout only: every wait below ends as soon as the awaited event happens


class Wakes:
    """Collects wake reasons; `next()` waits for the next one."""

    def __init__(self):
        self.reasons: list[str] = []
        self._queue: asyncio.Queue[str] = asyncio.Queue()

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)
        self._queue.put_nowait(reason)

    async def next(self) -> str:
        return await asyncio.wait_for(self._queue.get(), WAIT)

    def pending(self) -> int:
        return self._queue.qsize()


class Running:
    """A push's `run` as a task, stopped (and awaited) on exit."""

    def __init__(self, push, wake):
        self.push, self.wake = push, wake
        self.stop = asyncio.Event()
        self.task: asyncio.Task | None = None

    async def __aenter__(self):
        self.task = asyncio.create_task(self.push.run(self.wake, self.stop))
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        await asyncio.wait_for(self.task, WAIT)


async def until(predicate, what: str) -> None:
    async def loop():
        while not predicate():
            await asyncio.sleep(0.005)

    try:
        await asyncio.wait_for(loop(), WAIT)
    except TimeoutError:
        raise AssertionError(f"timed out waiting for {what}") from None


@pytest.fixture
def chain():
    return SimChain(seed=21)


# --- mempool.space websocket ---------------------------------------------------------------------------


async def test_mempool_push_wakes_on_mempool_and_block_txs_of_tracked_addresses(chain):
    a, b, stranger = chain.address("tracked-a"), chain.address("tracked-b", "p2pkh"), chain.address("stranger")
    chain.fund_many([(a, COIN), (stranger, COIN)])
    wakes = Wakes()
    async with MempoolWsServer(chain) as srv, aiohttp.ClientSession() as session:
        push = MempoolPush(srv.url, [a, b], session=session, clock=FrozenClock())
        async with Running(push, wakes):
            await srv.wait_tracking()
            assert srv.received == [{"track-addresses": [a, b]}]
            chain.pay([stranger], [(chain.address("other"), 1_000)], fee=200)  # touches no tracked address
            await srv.sync()
            tx = chain.pay([a], [(stranger, 5_000)], fee=300)  # spends from a tracked address
            await srv.sync()
            reason = await wakes.next()
            assert f"1 mempool tx for {a} ({tx.txid})" in reason
            block = chain.mine()[0]
            await srv.sync()
            reason = await wakes.next()
            assert f"confirmed tx for {a}" in reason and tx.txid in reason
            assert block.txids[-1] in (tx.txid, block.txids[-1])
            # RBF: the replacement is pushed with the replaced tx under "removed"
            first = chain.pay([a], [(stranger, 7_000)], fee=300)
            await srv.sync()
            await wakes.next()
            second = chain.replace(first.txid)
            await srv.sync()
            reason = await wakes.next()
            assert f"mempool tx for {a} ({second.txid})" in reason and f"removed tx for {a} ({first.txid})" in reason
        assert len(wakes.reasons) == 4 and push.connections == 1


async def test_mempool_push_reconnects_after_a_drop_and_wakes_once(chain, caplog):
    caplog.set_level(logging.INFO)
    a = chain.address("drop")
    chain.fund(a, COIN)
    wakes = Wakes()
    clock = FrozenClock()
    async with MempoolWsServer(chain) as srv, aiohttp.ClientSession() as session:
        push = MempoolPush(srv.url, [a], session=session, clock=clock)
        async with Running(push, wakes):
            await srv.wait_tracking()
            assert await srv.drop() == 1
            reason = await wakes.next()
            assert "reconnected" in reason and "polling covers what was missed" in reason
            await srv.wait_tracking()
            assert srv.connections == 2 and push.connections == 2
            chain.pay([a], [(chain.address("d2"), 1_000)], fee=100)
            await srv.sync()
            assert "mempool tx" in await wakes.next()
        assert wakes.reasons[0].startswith("mempool.space push reconnected") and len(wakes.reasons) == 2
    assert caplog.text.count("push mempool.space disconnected") == 1
    assert "push mempool.space recovered" in caplog.text
    assert len(clock.sleeps) == 1 and 0.5 <= clock.sleeps[0] <= 1.0  # one backoff step with jitter


async def test_mempool_push_backs_off_while_the_server_is_down(chain, caplog):
    a = chain.address("down")
    clock = FrozenClock()
    wakes = Wakes()
    srv = await MempoolWsServer(chain).start()
    port = srv.port
    async with aiohttp.ClientSession() as session:
        push = MempoolPush(srv.url, [a], session=session, clock=clock, backoff_cap=8.0)
        async with Running(push, wakes):
            await srv.wait_tracking()
            await srv.stop()
            await until(lambda: len(clock.sleeps) >= 6, "six backoff sleeps")
            srv = await MempoolWsServer(chain, port=port).start()
            try:
                assert "reconnected" in await wakes.next()
            finally:
                await srv.stop()
    steps = clock.sleeps[:6]
    assert all(lo / 2 <= s <= lo for s, lo in zip(steps, [1, 2, 4, 8, 8, 8], strict=True))  # capped exponential, jittered
    assert caplog.text.count("disconnected") == 1  # the first failure only; the rest at debug level


async def test_mempool_push_caps_the_address_list_and_says_so(chain, caplog):
    addresses = [chain.address(f"cap-{i}") for i in range(1_600)]
    async with MempoolWsServer(chain) as srv, aiohttp.ClientSession() as session:
        push = MempoolPush(srv.url, addresses, session=session, clock=FrozenClock(), cap=1_500)
        async with Running(push, Wakes()):
            await srv.wait_tracking()
        assert srv.received == [{"track-addresses": addresses[:1_500]}]
    assert push.untracked == tuple(addresses[1_500:])
    assert "tracks 1500 of 1600 addresses (cap 1500); the other 100 rely on polling" in caplog.text


async def test_mempool_push_shrinks_to_the_servers_maximum(chain, caplog):
    addresses = [chain.address(f"max-{i}") for i in range(30)]
    chain.fund(addresses[3], COIN)
    wakes = Wakes()
    async with MempoolWsServer(chain, max_tracked=10) as srv, aiohttp.ClientSession() as session:
        push = MempoolPush(srv.url, addresses, session=session, clock=FrozenClock())
        async with Running(push, wakes):
            await srv.wait_tracking()
            assert [len(m["track-addresses"]) for m in srv.received] == [30, 10]
            chain.pay([addresses[3]], [(addresses[20], 1_000)], fee=100)
            await srv.sync()
            assert addresses[3] in await wakes.next()
    assert push.tracked == tuple(addresses[:10]) and len(push.untracked) == 20
    assert "tracking the first 10, the other 20 rely on polling" in caplog.text


async def test_mempool_push_sends_a_grown_address_list_on_the_live_connection(chain):
    a, b = chain.address("grow-a"), chain.address("grow-b")
    chain.fund(chain.address("payer"), COIN)
    wakes = Wakes()
    async with MempoolWsServer(chain) as srv, aiohttp.ClientSession() as session:
        push = MempoolPush(srv.url, [a], session=session, clock=FrozenClock())
        async with Running(push, wakes):
            await srv.wait_tracking()
            push.set_addresses([a, b])
            await until(lambda: len(srv.received) == 2, "the new address list")
            assert srv.received[1] == {"track-addresses": [a, b]}
            chain.pay([chain.address("payer")], [(b, 1_000)], fee=100)
            await srv.sync()
            assert b in await wakes.next()
            push.set_addresses([b, a])  # same addresses, other order: the list changes, so it is sent
            push.set_addresses([b, a])  # unchanged: nothing sent
            await until(lambda: len(srv.received) == 3, "the reordered list")
        assert push.connections == 1 and len(srv.received) == 3


def test_valid_address_follows_the_backend_pattern(chain):
    assert valid_address(chain.address("x")) == chain.address("x")
    assert valid_address(chain.address("x").upper()) == chain.address("x")
    assert valid_address("not an address") is None and valid_address(42) is None


# --- raw transactions -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["p2wpkh", "p2pkh", "p2sh", "p2wsh", "p2tr"])
def test_what_an_input_reveals_of_the_address_it_spends(chain, kind):
    spender = chain.address(f"spender-{kind}", kind)
    chain.fund(spender, COIN)
    tx = chain.pay([spender], [(chain.address("dest", "p2tr"), 10_000), (None, 0)], fee=500)
    parsed = parse_tx(tx.raw)
    assert parsed.txid == tx.txid
    revealed = set().union(*(input_scripts(i.script_sig, i.witness) for i in parsed.inputs))
    # Every spend reveals its address except a taproot key-path spend.
    assert (chain.script_for(spender) in revealed) == (kind != "p2tr")


# --- ZMQ ------------------------------------------------------------------------------------------------


class Publisher:
    """A real ZMQ publisher (XPUB, so the test sees subscriptions arrive) sending Core's frames."""

    def __init__(self, port: int = 0):
        self.ctx = zmq.asyncio.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        if port:
            self.sock.bind(f"tcp://127.0.0.1:{port}")
            self.port = port
        else:
            self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.seq: dict[bytes, int] = {}

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    async def subscribed(self, n: int = 2) -> set[bytes]:
        topics = set()
        for _ in range(n):
            frame = await asyncio.wait_for(self.sock.recv(), WAIT)
            assert frame[:1] == b"\x01"
            topics.add(frame[1:])
        return topics

    async def send(self, topic: str, body: bytes, *, skip: int = 0) -> None:
        t = topic.encode()
        seq = self.seq.get(t, -1) + 1 + skip
        self.seq[t] = seq
        await self.sock.send_multipart([t, body, seq.to_bytes(4, "little")])

    def close(self) -> None:
        self.sock.close(linger=0)
        self.ctx.term()


@pytest.fixture
def pub():
    p = Publisher()
    yield p
    if not p.sock.closed:
        p.close()


async def test_zmq_wakes_on_hashblock_and_on_rawtx_touching_a_watched_address(chain, pub):
    watched, stranger = chain.address("zmq-w"), chain.address("zmq-s")
    chain.fund_many([(stranger, COIN), (watched, COIN)])
    unrelated = chain.pay([stranger], [(chain.address("zmq-o"), 1_000)], fee=100)
    paying = chain.pay([stranger], [(watched, 2_000)], fee=100)
    funded = chain.utxos(watched)[0]
    sweep = chain.pay([watched], [(stranger, COIN - 500)], fee=500, inputs=[(funded.txid, funded.vout)])
    block = chain.mine()[0]
    wakes = Wakes()
    push = ZmqPush({"rawtx": pub.url, "hashblock": pub.url}, [watched])
    async with Running(push, wakes):
        assert await pub.subscribed() == {b"rawtx", b"hashblock"}
        await pub.send("rawtx", unrelated.raw)
        await pub.send("rawtx", b"\x02\x00\x00\x00garbage")  # unparsable: ignored
        await pub.send("rawtx", paying.raw)
        await pub.send("rawtx", sweep.raw)  # no output to the watched address: found through its input
        await pub.send("hashblock", bytes.fromhex(block.hash))
        reasons = [await wakes.next() for _ in range(3)]
    assert reasons == [
        f"zmq rawtx {paying.txid} touches {watched}",
        f"zmq rawtx {sweep.txid} touches {watched}",
        f"zmq hashblock {block.hash}",
    ]
    assert wakes.pending() == 0 and push.messages == 5


async def test_zmq_set_addresses_takes_effect_with_the_next_message(chain, pub):
    old, new, payer = chain.address("z-old"), chain.address("z-new"), chain.address("z-payer")
    chain.fund(payer, COIN)
    first = chain.pay([payer], [(new, 1_000)], fee=100)
    second = chain.pay([payer], [(new, 2_000)], fee=100)
    wakes = Wakes()
    push = ZmqPush(pub.url, [old])
    async with Running(push, wakes):
        await pub.subscribed()
        await pub.send("rawtx", first.raw)  # `new` is not watched yet: no wake
        await until(lambda: push.messages == 1, "the first message")
        push.set_addresses([old, new])
        await pub.send("rawtx", second.raw)
        assert await wakes.next() == f"zmq rawtx {second.txid} touches {new}"
    assert wakes.reasons == [f"zmq rawtx {second.txid} touches {new}"]


async def test_zmq_taproot_spend_is_caught_only_through_a_seen_output(chain, pub):
    tr, stranger = chain.address("zmq-tr", "p2tr"), chain.address("zmq-s2")
    chain.fund(stranger, COIN)
    old = chain.fund(tr, COIN)  # created before push started: its key-path spend reveals nothing
    seen = chain.pay([stranger], [(tr, 50_000)], fee=100)
    spend_old = chain.pay([tr], [(stranger, COIN - 100)], fee=100, inputs=[old])
    spend_seen = chain.pay([tr], [(stranger, 49_000)], fee=1_000, inputs=[(seen.txid, 0)])
    wakes = Wakes()
    async with Running(ZmqPush(pub.url, [tr]), wakes):
        await pub.subscribed()
        for tx in (spend_old, seen, spend_seen):
            await pub.send("rawtx", tx.raw)
        reasons = [await wakes.next() for _ in range(2)]
    assert [r.split()[2] for r in reasons] == [seen.txid, spend_seen.txid]


async def test_zmq_sequence_gap_wakes_and_is_logged(chain, pub, caplog):
    wakes = Wakes()
    async with Running(ZmqPush(pub.url, [chain.address("g")]), wakes):
        await pub.subscribed()
        unrelated = chain.fund(chain.address("g2"), COIN, confirmed=False)
        await pub.send("rawtx", chain.tx(unrelated.txid).raw)
        await pub.send("rawtx", chain.tx(unrelated.txid).raw, skip=3)
        assert await wakes.next() == "zmq missed 3 rawtx message(s)"
    assert "missed 3 rawtx message(s)" in caplog.text


async def test_zmq_reconnect_wakes_once(chain, pub, caplog):
    caplog.set_level(logging.INFO)
    wakes = Wakes()
    push = ZmqPush({"hashblock": pub.url}, [chain.address("r")])
    async with Running(push, wakes):
        await pub.subscribed(1)
        port = pub.port
        pub.close()
        again = Publisher(port)
        try:
            assert "reconnected" in await wakes.next()
            await again.subscribed(1)
            await again.send("hashblock", b"\x11" * 32)
            assert await wakes.next() == "zmq hashblock " + "11" * 32
        finally:
            again.close()
    assert "disconnected from" in caplog.text and "reconnected to" in caplog.text


async def test_zmq_without_pyzmq_is_a_clear_error(monkeypatch, chain):
    monkeypatch.setitem(sys.modules, "zmq", None)
    with pytest.raises(SourceError, match=r"ZMQ push needs pyzmq: pip install 'treasury-monitor\[zmq\]'"):
        await ZmqPush("tcp://127.0.0.1:1", [chain.address("z")]).run(lambda r: None, asyncio.Event())


def test_zmq_rejects_unknown_topics_and_skips_bad_addresses(chain, caplog):
    with pytest.raises(ValueError, match="unknown ZMQ topic"):
        ZmqPush({"rawtxx": "tcp://127.0.0.1:1"}, [])
    ZmqPush("tcp://127.0.0.1:1", [chain.address("ok"), "tb1qnotmainnet"], network="mainnet")
    assert "ignores 1 address(es) not valid on mainnet" in caplog.text
