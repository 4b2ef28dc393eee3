"""Every block's header and coinbase from an Esplora server, for the chain-wide miner view.

Why a reader of its own: the miner view needs the coinbase of *every* block (who mined it, what it paid),
whatever the watch mode, and nothing else of the block. Per block it costs one `/block/:hash/txs/0`
(the first page of 25 txs, whose first is the coinbase, with its scriptSig where pools write their tag),
plus one `/blocks/:height` per 10 blocks for the headers (hash, time, bits, difficulty, parent). That is
1.1 requests per block, about 160 a day of chain; `/block/:hash/raw` would cost as many requests but move
~1.5 MB per block instead of ~30 kB.

Answers pass through `watchers.validate` (headers with `parse_block`, the coinbase with `parse_tx`);
only the coinbase of the page is parsed, so another malformed tx of the page does not matter here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from monitor.model import ChainTx, MalformedError
from watchers.http import HttpClient, RequestTally
from watchers.validate import assert_dict, assert_hex, assert_list, parse_block, parse_height, parse_tx

__all__ = ["BlockHeaderInfo", "BlockCoinbase", "EsploraCoinbases", "HEADERS_PER_PAGE"]

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
                out.append(BlockHeaderInfo(b["height"], b["id"], b["previousblockhash"], b["timestamp"], b["bits"],
                                           float(b["difficulty"]), b["tx_count"]))
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
