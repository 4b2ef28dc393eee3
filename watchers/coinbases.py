"""Every block's header and coinbase from an Esplora server, for the chain-wide miner view.

Why a reader of its own: the miner view needs the coinbase of *every* block (who mined it, what it paid),
whatever the watch mode, and nothing else of the block. Per block it costs one `/block/:hash/txs/0`
(the first page of 25 txs, whose first is the coinbase, with its scriptSig where pools write their tag),
plus one `/blocks/:height` per 10 blocks for the headers (hash, time, bits, difficulty, parent). That is
1.1 requests per block, about 160 a day of chain; `/block/:hash/raw` would cost as many requests but move
~1.5 MB per block instead of ~30 kB.

Answers pass through `watchers.validate` (headers with `parse_block`, the coinbase with `parse_tx`);
only the coinbase of the page is parsed, so another malformed tx of the page does not matter here.

Bitcoin Core (`BitcoindCoinbases`, same interface): per 10 blocks one JSON-RPC batch of `getblockhash`
and one of `getblock <hash> 1` (header fields and the txids, whose first is the coinbase's), then per
block `getrawtransaction <coinbase> 1 <blockhash>` (with the block hash no `txindex` is needed) for the
coinbase's outputs and its scriptSig (`vin[0].coinbase`). Amounts are converted exactly
(`watchers.bitcoind.parse.parse_core_tx`). Spends of pool payout coins: Esplora answers per coin
(`/tx/:txid/outspends`, then `/tx/:txid`); Core has no spender index, so `BitcoindCoinbases.spends` reads
a block with `getblock <hash> 3` (prevouts: Core 23+) and returns its txs spending the given outpoints.
"""

from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from monitor.model import ChainTx, MalformedError, SourceError
from watchers.bitcoind.parse import parse_core_tx
from watchers.bitcoind.rpc import BitcoindRpc
from watchers.http import HttpClient, RequestTally
from watchers.validate import (
    Outspend,
    assert_dict,
    assert_hex,
    assert_int,
    assert_list,
    assert_number,
    parse_block,
    parse_height,
    parse_outspends,
    parse_tx,
    require,
)

__all__ = ["BlockHeaderInfo", "BlockCoinbase", "EsploraCoinbases", "BitcoindCoinbases", "HEADERS_PER_PAGE"]

#: electrs `/blocks/:start_height` answers this many blocks, walking down from the start height.
HEADERS_PER_PAGE = 10


@dataclass(frozen=True)
class BlockHeaderInfo:
    """What the miner view needs of a block header."""

    height: int
    hash: str
    prev_hash: str | None
    time: int
    bits: int
    difficulty: float
    tx_count: int


@dataclass(frozen=True)
class BlockCoinbase:
    """One block's header and its coinbase (outputs as a ChainTx, and the raw scriptSig)."""

    header: BlockHeaderInfo
    coinbase: ChainTx
    scriptsig: bytes


class EsploraCoinbases:
    """Reads block headers and coinbases over an Esplora REST `HttpClient`."""

    def __init__(self, http: HttpClient, *, chain: str = "bitcoin"):
        self.http = http
        self.chain = chain

    async def tip_height(self, *, tally: RequestTally | None = None) -> int:
        """Height of the chain tip (`/blocks/tip/height`). :raises SourceError:"""
        return await self.http.get_text("/blocks/tip/height", parse=lambda t: parse_height(t, "tip height"), tally=tally)

    async def headers(self, top: int, *, tally: RequestTally | None = None) -> list[BlockHeaderInfo]:
        """Headers of the blocks `top`, `top-1`, ... (up to 10, as `/blocks/:top` answers), highest first."""

        def parse(data: Any) -> list[BlockHeaderInfo]:
            out = []
            for i, item in enumerate(assert_list(data, "blocks", non_empty=True)):
                try:
                    b = parse_block(item)
                except MalformedError as exc:
                    raise MalformedError(f"blocks[{i}].{exc}") from exc
                out.append(
                    BlockHeaderInfo(
                        b["height"],
                        b["id"],
                        b["previousblockhash"],
                        b["timestamp"],
                        b["bits"],
                        float(b["difficulty"]),
                        b["tx_count"],
                    )
                )
            if out[0].height != top:
                raise MalformedError(f"blocks[0].height: expected {top}, got {out[0].height}")
            for a, b2 in zip(out, out[1:]):
                if b2.height != a.height - 1 or a.prev_hash != b2.hash:
                    raise MalformedError(f"blocks: block {a.height} does not follow block {b2.height}")
            return out

        return await self.http.get_json(f"/blocks/{int(top)}", parse=parse, tally=tally)

    async def coinbase(self, header: BlockHeaderInfo, *, tally: RequestTally | None = None) -> BlockCoinbase:
        """The block's coinbase from `/block/:hash/txs/0`. :raises SourceError: (MalformedError if not a coinbase)"""
        block_hash = assert_hex(header.hash, "hash")

        def parse(data: Any) -> BlockCoinbase:
            first = assert_list(data, "txs", non_empty=True)[0]
            tx = parse_tx(first, chain=self.chain, prefix="txs[0]")
            if not tx.is_coinbase:
                raise MalformedError("txs[0]: the first transaction of a block must be its coinbase")
            vin0 = assert_dict(first["vin"][0], "txs[0].vin[0]")
            raw = vin0.get("scriptsig", "")
            try:
                scriptsig = bytes.fromhex(raw if isinstance(raw, str) else "")
            except ValueError as exc:
                raise MalformedError(f"txs[0].vin[0].scriptsig: expected hex, got {raw!r:.40}") from exc
            if tx.block_hash not in (None, header.hash):
                raise MalformedError(f"txs[0].status.block_hash: expected {header.hash}, got {tx.block_hash}")
            return BlockCoinbase(header, tx, scriptsig)

        return await self.http.get_json(f"/block/{block_hash}/txs/0", parse=parse, tally=tally)

    async def outspends(self, txid: str, *, tally: RequestTally | None = None) -> list[Outspend]:
        """Spending status of each output of a tx (`/tx/:txid/outspends`), for pool payout coins. :raises SourceError:"""
        return await self.http.get_json(f"/tx/{assert_hex(txid, 'txid')}/outspends", parse=parse_outspends, tally=tally)

    async def tx(self, txid: str, *, tally: RequestTally | None = None) -> ChainTx:
        """One tx with its inputs' prevouts (`/tx/:txid`). :raises SourceError:"""
        return await self.http.get_json(
            f"/tx/{assert_hex(txid, 'txid')}", parse=lambda d: parse_tx(d, chain=self.chain), tally=tally
        )


def _check_page(out: list[BlockHeaderInfo], top: int) -> list[BlockHeaderInfo]:
    if not out or out[0].height != top:
        raise MalformedError(f"blocks[0].height: expected {top}, got {out[0].height if out else 'no block'}")
    for a, b in zip(out, out[1:]):
        if b.height != a.height - 1 or a.prev_hash != b.hash:
            raise MalformedError(f"blocks: block {a.height} does not follow block {b.height}")
    return out


class BitcoindCoinbases:
    """Reads block headers and coinbases from Bitcoin Core over JSON-RPC (the interface of EsploraCoinbases)."""

    def __init__(self, rpc: BitcoindRpc, *, chain: str = "bitcoin"):
        self.rpc = rpc
        self.chain = chain
        self._coinbase_txid: dict[str, str] = {}  # block hash → its coinbase txid, from the header batch

    async def tip_height(self, *, tally: RequestTally | None = None) -> int:
        """Height of the best block (`getblockcount`). :raises SourceError:"""
        return assert_int(await self.rpc.call("getblockcount", tally=tally), "getblockcount", minimum=0)

    async def _batch(self, calls: list[tuple[str, list[Any]]], tally: RequestTally | None) -> list[Any]:
        out = await self.rpc.batch(calls, tally=tally)
        for a in out:
            if isinstance(a, SourceError):
                raise a
        return out

    async def headers(self, top: int, *, tally: RequestTally | None = None) -> list[BlockHeaderInfo]:
        """Headers of the blocks `top`, `top-1`, ... (up to 10), highest first, as one page of EsploraCoinbases."""
        heights = list(range(int(top), max(-1, int(top) - HEADERS_PER_PAGE), -1))
        hashes = [
            assert_hex(h, f"getblockhash {n}")
            for n, h in zip(heights, await self._batch([("getblockhash", [n]) for n in heights], tally))
        ]
        blocks = await self._batch([("getblock", [h, 1]) for h in hashes], tally)
        out = []
        for n, h, d in zip(heights, hashes, blocks):
            p = f"getblock {h}"
            d = assert_dict(d, p)
            if require(d, "hash", p) != h or require(d, "height", p) != n:
                raise MalformedError(f"{p}: expected block {h} at height {n}")
            bits = require(d, "bits", p)
            try:
                bits_int = int(bits, 16) if isinstance(bits, str) and len(bits) == 8 else None
            except ValueError:
                bits_int = None
            if bits_int is None:
                raise MalformedError(f"{p}.bits: expected 8 hex digits, got {bits!r:.40}")
            difficulty = require(d, "difficulty", p)
            difficulty = float(difficulty) if isinstance(difficulty, Decimal) else difficulty
            txids = assert_list(require(d, "tx", p), f"{p}.tx", non_empty=True)
            prev = d.get("previousblockhash")
            self._coinbase_txid[h] = assert_hex(txids[0], f"{p}.tx[0]")
            out.append(
                BlockHeaderInfo(
                    n,
                    h,
                    None if prev is None else assert_hex(prev, f"{p}.previousblockhash"),
                    assert_int(require(d, "time", p), f"{p}.time", minimum=0),
                    bits_int,
                    float(assert_number(difficulty, f"{p}.difficulty", minimum=0)),
                    assert_int(require(d, "nTx", p), f"{p}.nTx", minimum=1),
                )
            )
        if len(self._coinbase_txid) > 4 * HEADERS_PER_PAGE:  # only the page being scanned is needed
            for k in list(self._coinbase_txid)[:-HEADERS_PER_PAGE]:
                del self._coinbase_txid[k]
        return _check_page(out, int(top))

    async def coinbase(self, header: BlockHeaderInfo, *, tally: RequestTally | None = None) -> BlockCoinbase:
        """The block's coinbase (`getrawtransaction <txid> 1 <blockhash>`). :raises SourceError:"""
        block_hash = assert_hex(header.hash, "hash")
        txid = self._coinbase_txid.get(block_hash)
        if txid is None:
            d = assert_dict(await self.rpc.call("getblock", block_hash, 1, tally=tally), f"getblock {block_hash}")
            txid = assert_hex(
                assert_list(require(d, "tx"), f"getblock {block_hash}.tx", non_empty=True)[0], f"getblock {block_hash}.tx[0]"
            )
        p = f"getrawtransaction {txid}"
        raw = assert_dict(await self.rpc.call("getrawtransaction", txid, 1, block_hash, tally=tally), p)
        tx = parse_core_tx(raw, chain=self.chain, prefix=p, block=(header.height, block_hash, header.time))
        if not tx.is_coinbase or tx.txid != txid:
            raise MalformedError(f"{p}: expected the coinbase of block {block_hash}")
        script = assert_dict(raw["vin"][0], f"{p}.vin[0]").get("coinbase", "")
        try:
            scriptsig = bytes.fromhex(script if isinstance(script, str) else "")
        except ValueError as exc:
            raise MalformedError(f"{p}.vin[0].coinbase: expected hex, got {script!r:.40}") from exc
        return BlockCoinbase(header, tx, scriptsig)

    async def spends(
        self, header: BlockHeaderInfo, outpoints: Container[tuple[str, int]], *, tally: RequestTally | None = None
    ) -> list[ChainTx]:
        """The txs of a block spending any of `outpoints`, with their prevouts (`getblock <hash> 3`, Core 23+).

        Only the matching txs are parsed (and validated); the others are looked at for their outpoints only.
        :raises SourceError: (MalformedError naming the field)
        """
        block_hash = assert_hex(header.hash, "hash")
        p = f"getblock {block_hash}"
        d = assert_dict(await self.rpc.call("getblock", block_hash, 3, tally=tally), p)
        out = []
        for i, t in enumerate(assert_list(require(d, "tx", p), f"{p}.tx", non_empty=True)[1:], 1):
            vin = t.get("vin") if isinstance(t, dict) else None
            if not isinstance(vin, list):
                raise MalformedError(f"{p}.tx[{i}].vin: expected an array (verbosity 3 needs Core 23.0 or newer)")
            if any(isinstance(x, dict) and (x.get("txid"), x.get("vout")) in outpoints for x in vin):
                out.append(
                    parse_core_tx(t, chain=self.chain, prefix=f"{p}.tx[{i}]", block=(header.height, block_hash, header.time))
                )
        return out
