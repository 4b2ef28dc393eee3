"""Raw Bitcoin block and transaction parsing, and the block-mode matcher over raw blocks.

Two entry points over the wire serialization (`/block/:hash/raw`, Bitcoin Core's `getblock <h> 0`):

- `parse_block(raw) -> RawBlock`: the 80-byte header and every transaction (BIP-144 segwit
  serialization handled), with txids, outpoints, scripts, witnesses and output values.
- `scan_block(raw, watched_scripts, watched_outpoints) -> (header, matches)`: the block-mode fast path.
  It walks the same bytes but builds nothing for a transaction that neither pays a watched script nor
  spends a watched outpoint; txids are computed (sha256d over `memoryview` slices of the non-witness
  serialization, no copy) only for transactions that match. Outputs created by a matching transaction
  are watched for the rest of the block, so a spend of them in the same block is matched too.

Outpoints are looked up as 36-byte keys in wire order (`outpoint_key(txid, vout)`: the txid's 32 bytes
reversed, then the index as 4 bytes little-endian), because slicing 36 bytes out of the block is much
cheaper than building a (hex txid, vout) tuple for every input of every transaction.

Anything that does not parse (truncated data, counts past the end, trailing bytes, a zero-input
transaction) raises `MalformedError`; an IndexError or struct.error never escapes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from monitor.model import MalformedError

__all__ = [
    "HEADER_SIZE",
    "MAX_MONEY",
    "BlockHeader",
    "BlockScan",
    "RawBlock",
    "RawTx",
    "RawTxIn",
    "RawTxOut",
    "Receipt",
    "Spend",
    "TxMatch",
    "block_tx_count",
    "outpoint_key",
    "outpoint_of_key",
    "parse_block",
    "parse_header",
    "parse_tx",
    "scan_block",
    "sha256d",
]

HEADER_SIZE = 80
MAX_MONEY = 21_000_000 * 100_000_000
_NULL_PREV = b"\x00" * 32
_COINBASE_KEY = _NULL_PREV + b"\xff\xff\xff\xff"
_sha256 = hashlib.sha256


def sha256d(data) -> bytes:
    """Double SHA-256 of bytes or a memoryview."""
    return _sha256(_sha256(data).digest()).digest()


def outpoint_key(txid: str, vout: int) -> bytes:
    """36-byte wire form of an outpoint (display-hex txid reversed + vout LE), the key `scan_block` looks up."""
    return bytes.fromhex(txid)[::-1] + vout.to_bytes(4, "little")


def outpoint_of_key(key: bytes) -> tuple[str, int]:
    """Inverse of `outpoint_key`: (display-hex txid, vout)."""
    return key[31::-1].hex(), int.from_bytes(key[32:36], "little")


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BlockHeader:
    """The 80-byte block header's fields; hashes in display (reversed) hex."""

    hash: str
    version: int
    prev_hash: str
    merkle_root: str
    time: int
    bits: int
    nonce: int


@dataclass(frozen=True, slots=True)
class RawTxIn:
    """One input: the outpoint it spends, its scriptSig, sequence and witness stack."""

    prev_txid: str
    prev_vout: int
    script_sig: bytes
    sequence: int
    witness: tuple[bytes, ...] = ()

    @property
    def is_coinbase(self) -> bool:
        return self.prev_vout == 0xFFFFFFFF and self.prev_txid == "00" * 32


@dataclass(frozen=True, slots=True)
class RawTxOut:
    """One output: value in satoshis and scriptPubKey."""

    value: int
    script: bytes


@dataclass(frozen=True, slots=True)
class RawTx:
    """A parsed transaction; `size` is the full serialization, `base_size` the non-witness one (the txid's)."""

    txid: str
    version: int
    locktime: int
    inputs: tuple[RawTxIn, ...]
    outputs: tuple[RawTxOut, ...]
    size: int
    base_size: int

    @property
    def is_coinbase(self) -> bool:
        return len(self.inputs) == 1 and self.inputs[0].is_coinbase

    @property
    def has_witness(self) -> bool:
        return self.size != self.base_size

    @property
    def weight(self) -> int:
        return self.base_size * 3 + self.size


@dataclass(frozen=True, slots=True)
class RawBlock:
    """A parsed block: header and transactions (coinbase first)."""

    header: BlockHeader
    txs: tuple[RawTx, ...]

    @property
    def hash(self) -> str:
        return self.header.hash

    @property
    def txids(self) -> list[str]:
        return [t.txid for t in self.txs]


@dataclass(frozen=True, slots=True)
class Spend:
    """An input of a matching tx that spends a watched outpoint; `label` is the watched mapping's value."""

    vin: int
    prev_txid: str
    prev_vout: int
    label: Any


@dataclass(frozen=True, slots=True)
class Receipt:
    """An output of a matching tx paying a watched script; `label` is the mapping's value (the script for a set)."""

    n: int
    value: int
    script: bytes
    label: Any


@dataclass(frozen=True, slots=True)
class TxMatch:
    """A transaction of a block that touches the watched set: where it is, its txid, what matched."""

    index: int  # position in the block (0 = coinbase)
    txid: str
    is_coinbase: bool
    spends: tuple[Spend, ...]
    receipts: tuple[Receipt, ...]
    n_outputs: int
    n_inputs: int = 0
    start: int = 0  # the tx's bytes in the block: raw[start:end] (for `parse_tx`)
    end: int = 0


class BlockScan(NamedTuple):
    """What `scan_block` found: the header and the matching transactions in block order."""

    header: BlockHeader
    matches: list[TxMatch]


# --- parsing --------------------------------------------------------------------------------------


def _varint(b: bytes, p: int) -> tuple[int, int]:
    c = b[p]
    if c < 0xFD:
        return c, p + 1
    width = 2 if c == 0xFD else 4 if c == 0xFE else 8
    end = p + 1 + width
    if end > len(b):
        raise IndexError("varint past the end")
    return int.from_bytes(b[p + 1 : end], "little"), end


def parse_header(raw: bytes) -> BlockHeader:
    """The first 80 bytes of a block → BlockHeader (hash = sha256d of those bytes). :raises MalformedError:"""
    if len(raw) < HEADER_SIZE:
        raise MalformedError(f"block header: expected {HEADER_SIZE} bytes, got {len(raw)}")
    h = bytes(raw[:HEADER_SIZE])
    return BlockHeader(
        hash=sha256d(h)[::-1].hex(),
        version=int.from_bytes(h[0:4], "little", signed=True),
        prev_hash=h[4:36][::-1].hex(),
        merkle_root=h[36:68][::-1].hex(),
        time=int.from_bytes(h[68:72], "little"),
        bits=int.from_bytes(h[72:76], "little"),
        nonce=int.from_bytes(h[76:80], "little"),
    )


def block_tx_count(raw: bytes) -> int:
    """Number of transactions a raw block declares. :raises MalformedError:"""
    try:
        return _varint(raw, HEADER_SIZE)[0]
    except IndexError:
        raise MalformedError("block: truncated before the transaction count") from None


def _read_tx(b: bytes, mv: memoryview, p: int) -> tuple[RawTx, int]:
    # Varints are inlined (a call per field costs more than the field); _varint handles the rare wide ones.
    start = p
    version = int.from_bytes(b[p : p + 4], "little", signed=True)
    p += 4
    segwit = b[p] == 0
    if segwit:
        if b[p + 1] != 1:
            raise MalformedError(f"tx at byte {start}: zero inputs (or a bad segwit flag {b[p + 1]})")
        p += 2
    body = p
    c = b[p]
    p += 1
    if c > 0xFC:
        c, p = _varint(b, p - 1)
    n_in = c
    inputs = []
    for _ in range(n_in):
        prev = b[p : p + 32][::-1].hex()
        vout = int.from_bytes(b[p + 32 : p + 36], "little")
        p += 36
        c = b[p]
        p += 1
        if c > 0xFC:
            c, p = _varint(b, p - 1)
        end = p + c
        inputs.append((prev, vout, b[p:end], int.from_bytes(b[end : end + 4], "little")))
        p = end + 4
    c = b[p]
    p += 1
    if c > 0xFC:
        c, p = _varint(b, p - 1)
    outputs = []
    for _ in range(c):
        value = int.from_bytes(b[p : p + 8], "little")
        if value > MAX_MONEY:
            raise MalformedError(f"tx at byte {start}: output value {value} exceeds 21M BTC")
        p += 8
        k = b[p]
        p += 1
        if k > 0xFC:
            k, p = _varint(b, p - 1)
        outputs.append(RawTxOut(value, b[p : p + k]))
        p += k
    body_end = p
    if segwit:
        witnesses = []
        for _ in range(n_in):
            c = b[p]
            p += 1
            if c > 0xFC:
                c, p = _varint(b, p - 1)
            stack = []
            for _ in range(c):
                k = b[p]
                p += 1
                if k > 0xFC:
                    k, p = _varint(b, p - 1)
                stack.append(b[p : p + k])
                p += k
            witnesses.append(tuple(stack))
        ins = tuple(RawTxIn(*i, w) for i, w in zip(inputs, witnesses))
    else:
        ins = tuple(RawTxIn(*i) for i in inputs)
    lock_at = p
    p += 4
    if p > len(b):
        raise MalformedError(f"tx at byte {start}: truncated")
    locktime = int.from_bytes(b[lock_at:p], "little")
    if segwit:
        h = _sha256(mv[start : start + 4])
        h.update(mv[body:body_end])
        h.update(mv[lock_at:p])
        txid = _sha256(h.digest()).digest()
        base_size = (body_end - body) + 8
    else:
        txid = sha256d(mv[start:p])
        base_size = p - start
    return RawTx(txid[::-1].hex(), version, locktime, ins, tuple(outputs), p - start, base_size), p


def parse_tx(raw: bytes) -> RawTx:
    """One serialized transaction (legacy or BIP-144) → RawTx. :raises MalformedError:"""
    b = bytes(raw)
    try:
        tx, end = _read_tx(b, memoryview(b), 0)
    except IndexError:
        raise MalformedError("tx: truncated") from None
    if end != len(b):
        raise MalformedError(f"tx: {len(b) - end} trailing bytes")
    return tx


def parse_block(raw: bytes) -> RawBlock:
    """A raw block → header and every transaction with txids. :raises MalformedError:"""
    b = bytes(raw)
    header = parse_header(b)
    mv = memoryview(b)
    try:
        n, p = _varint(b, HEADER_SIZE)
        if n == 0 or n > len(b):
            raise MalformedError(f"block: implausible transaction count {n}")
        txs = []
        for _ in range(n):
            tx, p = _read_tx(b, mv, p)
            txs.append(tx)
    except IndexError:
        raise MalformedError(f"block {header.hash}: truncated") from None
    if p != len(b):
        raise MalformedError(f"block {header.hash}: {len(b) - p} bytes after the last transaction")
    return RawBlock(header, tuple(txs))


# --- matching -------------------------------------------------------------------------------------


def scan_block(
    raw: bytes,
    watched_scripts: Mapping[bytes, Any] | set[bytes] | frozenset[bytes],
    watched_outpoints: Mapping[bytes, Any],
) -> BlockScan:
    """Header and the txs paying a watched script or spending a watched outpoint, without building the others.

    `watched_outpoints` is keyed by `outpoint_key(txid, vout)`; a mapping keyed by (txid, vout) tuples
    is accepted too, but is converted on every call (slow for large sets). `Receipt.label` /
    `Spend.label` are the mappings' values (for a set of scripts, the script itself).
    :raises MalformedError:
    """
    b = bytes(raw)
    header = parse_header(b)
    if watched_outpoints and isinstance(next(iter(watched_outpoints)), tuple):
        watched_outpoints = {outpoint_key(t, v): label for (t, v), label in watched_outpoints.items()}
    labels = watched_scripts if isinstance(watched_scripts, Mapping) else None
    try:
        matches = _scan(b, memoryview(b), watched_scripts, labels, watched_outpoints)
    except IndexError:
        raise MalformedError(f"block {header.hash}: truncated") from None
    return BlockScan(header, matches)


def _scan(b: bytes, mv: memoryview, scripts, labels, outpoints) -> list[TxMatch]:
    # The hot loop: one pass over the bytes, varints inlined, no per-tx objects unless a tx matches.
    n, p = _varint(b, HEADER_SIZE)
    size = len(b)
    if n == 0 or n > size:
        raise MalformedError(f"block: implausible transaction count {n}")
    created: dict[bytes, Any] = {}  # outputs of matching txs earlier in this block
    matches: list[TxMatch] = []
    for index in range(n):
        start = p
        p += 4
        segwit = b[p] == 0
        if segwit:
            if b[p + 1] != 1:
                raise MalformedError(f"tx {index}: zero inputs (or a bad segwit flag {b[p + 1]})")
            p += 2
        body = p
        c = b[p]
        p += 1
        if c > 0xFC:
            c, p = _varint(b, p - 1)
        n_in = c
        spent = None
        for vin in range(n_in):
            key = b[p : p + 36]
            if key in outpoints or (created and key in created):
                if spent is None:
                    spent = []
                spent.append((vin, key))
            p += 36
            c = b[p]
            p += 1
            if c > 0xFC:
                c, p = _varint(b, p - 1)
            p += c + 4
        c = b[p]
        p += 1
        if c > 0xFC:
            c, p = _varint(b, p - 1)
        n_out = c
        received = None
        for vout in range(n_out):
            vp = p
            p += 8
            c = b[p]
            p += 1
            if c > 0xFC:
                c, p = _varint(b, p - 1)
            end = p + c
            script = b[p:end]
            if script in scripts:
                if received is None:
                    received = []
                received.append((vout, vp, script))
            p = end
        body_end = p
        if segwit:
            for _ in range(n_in):
                c = b[p]
                p += 1
                if c > 0xFC:
                    c, p = _varint(b, p - 1)
                for _ in range(c):
                    k = b[p]
                    p += 1
                    if k > 0xFC:
                        k, p = _varint(b, p - 1)
                    p += k
        p += 4
        if p > size:
            raise MalformedError(f"tx {index}: truncated")
        if spent is None and received is None:
            continue
        if segwit:
            h = _sha256(mv[start : start + 4])
            h.update(mv[body:body_end])
            h.update(mv[p - 4 : p])
            txid_raw = _sha256(h.digest()).digest()
        else:
            txid_raw = sha256d(mv[start:p])
        txid = txid_raw[::-1].hex()
        spends = []
        for vin, key in spent or ():
            label = outpoints[key] if key in outpoints else created[key]
            spends.append(Spend(vin, key[31::-1].hex(), int.from_bytes(key[32:36], "little"), label))
        receipts = []
        for vout, vp, script in received or ():
            value = int.from_bytes(b[vp : vp + 8], "little")
            if value > MAX_MONEY:
                raise MalformedError(f"tx {txid}: output value {value} exceeds 21M BTC")
            label = labels[script] if labels is not None else script
            receipts.append(Receipt(vout, value, script, label))
            created[txid_raw + vout.to_bytes(4, "little")] = label
        is_coinbase = index == 0 and n_in == 1 and b[body + 1 : body + 37] == _COINBASE_KEY
        matches.append(TxMatch(index, txid, is_coinbase, tuple(spends), tuple(receipts), n_out, n_in, start, p))
    if p != size:
        raise MalformedError(f"block: {size - p} bytes after the last transaction" if p < size else "block: truncated")
    return matches
