"""SimChain: an in-memory Bitcoin chain of really serialized transactions and blocks.

Every transaction is serialized byte-exactly (BIP-144 segwit serialization when an input carries a
witness), so `txid = sha256d(non-witness serialization)` reversed; every block has a real 80-byte header
(version, previous hash, merkle root of the txids, time, compact bits, nonce) and `raw()` is the exact
wire form `header + varint(n) + txs`. Nothing is signed and there is no proof of work: signatures and
public keys are deterministic dummies of the right sizes, block hashes do not meet their target.

What is simulated, and how:
- The chain is genesis-less: the first mined block has height `start_height` and a deterministic fake
  previous hash. Money enters through `fund()`: a faucet transaction spending a *pre-history* output
  (a P2PK output of a transaction before `start_height` that the chain does not hold; its prevout is
  known, so servers can render it, but `tx()` of its txid is None).
- Coinbases carry the BIP-34 height, an extranonce and an optional ASCII tag in the scriptSig (pools are
  identified by such tags), pay `subsidy(height) + fees`, and end with the BIP-141 witness commitment
  output (OP_RETURN aa21a9ed...) as Bitcoin Core always adds it; their witness is the 32-byte reserved value.
- `address(label, kind)` derives a mainnet (or other network) address from the label; spends of those
  addresses get input scripts/witnesses of the matching form (P2SH addresses are P2SH-P2WPKH, P2WSH
  addresses are `<pubkey> OP_CHECKSIG` witness scripts), so servers show realistic vin shapes.
- Mempool, RBF replacement (`replace`), eviction (`evict`) and reorgs (`reorg`) update every index, so
  a server reading the views below always reflects the current chain.

Views used by `monitor.sim.esplora_server`: `tip`, `height`, `block_by_hash`, `block_at`, `is_best`,
`tx`, `any_tx`, `tx_status`, `prevout`, `mempool`, `address_chain_txids`, `address_mempool_txids`,
`address_txs`, `address_stats`, `utxos`, `outspends`.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from fractions import Fraction

from watchers.addresses import address_to_script, script_to_address, script_type

__all__ = [
    "script_ops",
    "COIN",
    "HALVING_INTERVAL",
    "NULL_TXID",
    "Outpoint",
    "SimBlock",
    "SimChain",
    "SimTx",
    "SimTxIn",
    "SimTxOut",
    "Spend",
    "TxStatus",
    "Utxo",
    "bits_from_difficulty",
    "difficulty_from_bits",
    "hash160",
    "merkle_root",
    "push_data",
    "sha256d",
    "subsidy",
    "target_from_bits",
    "varint",
]

COIN = 100_000_000
HALVING_INTERVAL = 210_000
NULL_TXID = "00" * 32
#: Difficulty-1 target (Bitcoin's powLimit as used by the difficulty formula).
MAX_TARGET = 0xFFFF << 208
SEQUENCE_FINAL = 0xFFFFFFFF
SEQUENCE_RBF = 0xFFFFFFFD
BLOCK_VERSION = 0x20000000  # BIP-9 top bits, as modern blocks
#: 2025-01-16 00:00 UTC, near when height 880,000 was mined.
DEFAULT_START_TIME = 1_737_000_000
WITNESS_COMMITMENT_HEADER = bytes.fromhex("aa21a9ed")
OP_RETURN_DATA = b"treasury-monitor sim"


# --- encoding helpers -----------------------------------------------------------------------------


def sha256d(data: bytes) -> bytes:
    """Double SHA-256 (Bitcoin's hash for txids, block hashes and merkle nodes)."""
    return hashlib.sha256(hashlib.sha256(data).digest()).digest()


def hash160(data: bytes) -> bytes:
    """RIPEMD-160 of SHA-256 (public key and script hashes)."""
    return hashlib.new("ripemd160", hashlib.sha256(data).digest()).digest()


def varint(n: int) -> bytes:
    """Bitcoin CompactSize encoding of a count or length."""
    if n < 0xFD:
        return bytes((n,))
    if n <= 0xFFFF:
        return b"\xfd" + n.to_bytes(2, "little")
    if n <= 0xFFFFFFFF:
        return b"\xfe" + n.to_bytes(4, "little")
    return b"\xff" + n.to_bytes(8, "little")


def push_data(data: bytes) -> bytes:
    """Minimal script push of `data` (direct push up to 75 bytes, then OP_PUSHDATA1/2/4)."""
    n = len(data)
    if n <= 75:
        return bytes((n,)) + data
    if n <= 0xFF:
        return b"\x4c" + bytes((n,)) + data
    if n <= 0xFFFF:
        return b"\x4d" + n.to_bytes(2, "little") + data
    return b"\x4e" + n.to_bytes(4, "little") + data


def _script_num(n: int) -> bytes:
    """CScriptNum serialization (minimal little-endian, sign bit in the last byte)."""
    if n == 0:
        return b""
    neg, v = n < 0, abs(n)
    out = bytearray()
    while v:
        out.append(v & 0xFF)
        v >>= 8
    if out[-1] & 0x80:
        out.append(0x80 if neg else 0x00)
    elif neg:
        out[-1] |= 0x80
    return bytes(out)


def _bip34_height(height: int) -> bytes:
    # Core serializes the height with `CScript() << nHeight`: OP_0 / OP_1..OP_16 for small values.
    if height == 0:
        return b"\x00"
    if 1 <= height <= 16:
        return bytes((0x50 + height,))
    return push_data(_script_num(height))


def script_ops(script: bytes):
    """Yield (opcode, data) for each instruction of a script: the pushed bytes for a push (b"" for a
    non-push opcode), None when a push runs past the end of the script (the last item then)."""
    i, n = 0, len(script)
    while i < n:
        op = script[i]
        i += 1
        if op <= 0x4E:
            if op <= 0x4B:
                size = op
            else:
                width = {0x4C: 1, 0x4D: 2, 0x4E: 4}[op]
                if i + width > n:
                    yield op, None
                    return
                size = int.from_bytes(script[i : i + width], "little")
                i += width
            if i + size > n:
                yield op, None
                return
            yield op, script[i : i + size]
            i += size
        else:
            yield op, b""


def merkle_root(hashes: Sequence[bytes]) -> bytes:
    """Merkle root (internal byte order) of txids/wtxids given in internal byte order."""
    if not hashes:
        raise ValueError("a merkle tree needs at least one leaf")
    level = list(hashes)
    while len(level) > 1:
        if len(level) % 2:
            level.append(level[-1])
        level = [sha256d(level[i] + level[i + 1]) for i in range(0, len(level), 2)]
    return level[0]


def subsidy(height: int) -> int:
    """Block subsidy in satoshis at a height: 50 BTC halved every 210,000 blocks."""
    halvings = height // HALVING_INTERVAL
    return 0 if halvings >= 64 else (50 * COIN) >> halvings


def target_from_bits(bits: int) -> int:
    """Target encoded by a compact `bits` value."""
    exponent, mantissa = bits >> 24, bits & 0x007FFFFF
    if exponent <= 3:
        return mantissa >> (8 * (3 - exponent))
    return mantissa << (8 * (exponent - 3))


def bits_from_difficulty(difficulty: float) -> int:
    """Compact `bits` of the target for a difficulty (target = difficulty-1 target / difficulty)."""
    if difficulty <= 0:
        raise ValueError("difficulty must be positive")
    exact = Fraction(MAX_TARGET) / Fraction(difficulty)
    target = max(1, min(int(exact), (1 << 256) - 1))
    size = (target.bit_length() + 7) // 8
    if target.bit_length() % 8 == 0:
        size += 1  # the mantissa's top bit is a sign bit: keep it clear
    # Round (not truncate) the mantissa so a displayed, rounded difficulty maps back to its bits.
    compact = round(exact / (1 << (8 * (size - 3)))) if size > 3 else target << (8 * (3 - size))
    if compact >= 0x00800000:
        compact >>= 8
        size += 1
    return (size << 24) | compact


def difficulty_from_bits(bits: int) -> float:
    """Difficulty of a compact `bits`, computed as Bitcoin Core's GetDifficulty does."""
    shift = (bits >> 24) & 0xFF
    diff = 0x0000FFFF / (bits & 0x00FFFFFF)
    while shift < 29:
        diff *= 256.0
        shift += 1
    while shift > 29:
        diff /= 256.0
        shift -= 1
    return diff


# --- data -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Outpoint:
    """A transaction output reference (txid in display hex, output index)."""

    txid: str
    vout: int


@dataclass(frozen=True, slots=True)
class SimTxIn:
    """One input: the outpoint it spends (display-hex txid), scriptSig, witness stack, sequence."""

    txid: str
    vout: int
    script_sig: bytes = b""
    witness: tuple[bytes, ...] = ()
    sequence: int = SEQUENCE_FINAL

    @property
    def is_coinbase(self) -> bool:
        return self.txid == NULL_TXID and self.vout == 0xFFFFFFFF

    @property
    def outpoint(self) -> Outpoint:
        return Outpoint(self.txid, self.vout)


@dataclass(frozen=True, slots=True)
class SimTxOut:
    """One output: value in satoshis, scriptPubKey, and the address it pays (None when it has none)."""

    value: int
    script: bytes
    address: str | None


@dataclass(frozen=True, slots=True, eq=False)
class SimTx:
    """A serialized transaction and what the chain knows about it (fee, which output is change)."""

    txid: str
    version: int
    locktime: int
    vin: tuple[SimTxIn, ...]
    vout: tuple[SimTxOut, ...]
    raw: bytes  # full serialization: BIP-144 (marker, flag, witnesses) when any input has a witness
    base_size: int  # length of the non-witness serialization, the one the txid hashes
    wtxid: str
    fee: int
    change_n: int | None = None  # index of the change output, when pay() made one

    @property
    def is_coinbase(self) -> bool:
        return len(self.vin) == 1 and self.vin[0].is_coinbase

    @property
    def size(self) -> int:
        return len(self.raw)

    @property
    def weight(self) -> int:
        return self.base_size * 3 + len(self.raw)

    @property
    def vsize(self) -> int:
        return (self.weight + 3) // 4

    @property
    def hex(self) -> str:
        return self.raw.hex()

    @property
    def has_witness(self) -> bool:
        return any(i.witness for i in self.vin)


@dataclass(frozen=True, slots=True, eq=False)
class SimBlock:
    """A block: its 80-byte header fields, its transactions (coinbase first) and derived sizes."""

    hash: str
    height: int
    version: int
    prev_hash: str
    merkle_root: str
    time: int
    bits: int
    nonce: int
    txs: tuple[SimTx, ...]
    header: bytes
    size: int
    weight: int
    median_time: int
    coinbase_tag: str = ""

    @property
    def difficulty(self) -> float:
        return difficulty_from_bits(self.bits)

    @property
    def txids(self) -> list[str]:
        return [t.txid for t in self.txs]

    @property
    def tx_count(self) -> int:
        return len(self.txs)

    @property
    def coinbase(self) -> SimTx:
        return self.txs[0]

    def raw(self) -> bytes:
        """The block exactly as on the wire: header, varint tx count, transactions."""
        return b"".join([self.header, varint(len(self.txs)), *(t.raw for t in self.txs)])


@dataclass(frozen=True, slots=True)
class TxStatus:
    """Where a transaction is confirmed (best chain only)."""

    block_height: int
    block_hash: str
    block_time: int


@dataclass(frozen=True, slots=True)
class Spend:
    """The live input spending an output, and its confirmation (None while in the mempool)."""

    txid: str
    vin: int
    status: TxStatus | None


@dataclass(frozen=True, slots=True)
class Utxo:
    """An unspent output of an address (confirmed or in the mempool)."""

    txid: str
    vout: int
    value: int
    status: TxStatus | None


_EMPTY_STATS = ("funded_txo_count", "funded_txo_sum", "spent_txo_count", "spent_txo_sum", "tx_count")


@dataclass(slots=True)
class _KeyInfo:
    kind: str
    pubkey: bytes


# --- the chain ------------------------------------------------------------------------------------


class SimChain:
    """An in-memory Bitcoin chain with a mempool, RBF and reorgs; deterministic for a given seed.

    >>> chain = SimChain()
    >>> alice, bob = chain.address("alice"), chain.address("bob", "p2pkh")
    >>> _ = chain.fund(alice, 2 * COIN)
    >>> tx = chain.pay([alice], [(bob, COIN)], fee=1_000)
    >>> [b.height for b in chain.mine()]
    [880001]
    """

    def __init__(
        self,
        network: str = "mainnet",
        start_height: int = 880_000,
        start_time: int = DEFAULT_START_TIME,
        difficulty: float = 144.4e12,
        block_interval: int = 600,
        seed: int = 0,
    ):
        self.network = network
        self.start_height = start_height
        self.start_time = start_time
        self.block_interval = block_interval
        self.seed = seed
        self._bits = bits_from_difficulty(difficulty)
        self._rng = random.Random(seed)
        self._genesis_prev = sha256d(f"treasury-monitor sim prev {seed} {start_height}".encode())[::-1].hex()

        self._blocks: dict[str, SimBlock] = {}  # every block ever mined, stale ones included
        self._chain: list[SimBlock] = []  # best chain; index = height - start_height
        self._all_txs: dict[str, SimTx] = {}  # every tx ever built (prevouts of stale/dropped txs)
        self._txs: dict[str, SimTx] = {}  # live: confirmed in the best chain or in the mempool
        self._confirmed: dict[str, tuple[SimBlock, int]] = {}  # txid -> (block, position)
        self._mempool: dict[str, SimTx] = {}  # arrival order
        self._spent_by: dict[tuple[str, int], tuple[str, int]] = {}  # outpoint -> (txid, vin) of live spends
        self._premine: dict[tuple[str, int], SimTxOut] = {}  # pre-history outputs the faucet spends
        self._addr_chain: dict[str, list[tuple[int, int, str]]] = {}  # address -> [(height, pos, txid)]
        self._addr_mempool: dict[str, dict[str, None]] = {}  # address -> ordered set of mempool txids
        self._addr_utxos: dict[str, dict[tuple[str, int], None]] = {}  # address -> ordered unspent outpoints
        self._keys: dict[str, _KeyInfo] = {}  # address -> how to spend it
        self._labels: dict[tuple[str, str], str] = {}
        # The address codec validates through bitcoinlib (slow); addresses repeat, so cache both ways.
        self._script_of: dict[str, bytes] = {}
        self._address_of: dict[bytes, str | None] = {}
        self._counter = 0  # premine txids, extranonces
        self._version = 0  # bumped on every change; keys the stats cache
        self._stats_cache: dict[str, tuple[int, dict, dict]] = {}
        self._faucet_pub = self._pubkey("faucet")

    # --- addresses --------------------------------------------------------------------------------

    @staticmethod
    def _pubkey(label: str) -> bytes:
        return b"\x02" + hashlib.sha256(b"treasury-monitor sim key:" + label.encode()).digest()

    def address(self, label: str, kind: str = "p2wpkh") -> str:
        """Deterministic valid address for a label: p2wpkh, p2pkh, p2sh (P2SH-P2WPKH), p2wsh or p2tr."""
        key = (label, kind)
        if key in self._labels:
            return self._labels[key]
        pub = self._pubkey(label)
        if kind == "p2wpkh":
            script = b"\x00\x14" + hash160(pub)
        elif kind == "p2pkh":
            script = b"\x76\xa9\x14" + hash160(pub) + b"\x88\xac"
        elif kind == "p2sh":
            script = b"\xa9\x14" + hash160(b"\x00\x14" + hash160(pub)) + b"\x87"
        elif kind == "p2wsh":
            script = b"\x00\x20" + hashlib.sha256(push_data(pub) + b"\xac").digest()
        elif kind == "p2tr":
            script = b"\x51\x20" + hashlib.sha256(b"treasury-monitor sim taproot:" + label.encode()).digest()
        else:
            raise ValueError(f"unknown address kind {kind!r} (p2wpkh, p2pkh, p2sh, p2wsh, p2tr)")
        addr = script_to_address(script, self.network)
        assert addr is not None
        self._script_of[addr] = script
        self._address_of[script] = addr
        self._labels[key] = addr
        self._keys[addr] = _KeyInfo(kind, pub)
        return addr

    def script_for(self, address: str) -> bytes:
        """Output script paying an address on this chain's network.

        :raises watchers.addresses.InvalidAddress: when the address is not valid on the network.
        """
        script = self._script_of.get(address)
        if script is None:
            script = address_to_script(address, self.network)
            self._script_of[address] = script
        return script

    def address_for(self, script: bytes) -> str | None:
        """Address an output script pays on this chain's network (None for OP_RETURN, bare multisig...)."""
        try:
            return self._address_of[script]
        except KeyError:
            addr = self._address_of[script] = script_to_address(script, self.network)
            return addr

    # --- building transactions --------------------------------------------------------------------

    def _dummy_sig(self, outpoint: tuple[str, int], schnorr: bool = False) -> bytes:
        h = hashlib.sha256(f"sig {outpoint[0]}:{outpoint[1]}".encode()).digest()
        h2 = hashlib.sha256(h).digest()
        if schnorr:
            return h + h2
        r = bytes((h[0] & 0x7F | 0x01,)) + h[1:]
        s = bytes((h2[0] & 0x7F | 0x01,)) + h2[1:]
        return b"\x30\x44\x02\x20" + r + b"\x02\x20" + s + b"\x01"

    def _unlock(self, prev: SimTxOut, outpoint: tuple[str, int]) -> tuple[bytes, tuple[bytes, ...]]:
        """Dummy scriptSig and witness of the right form for spending `prev`."""
        kind = script_type(prev.script)
        info = self._keys.get(prev.address or "")
        pub = info.pubkey if info else b"\x03" + hashlib.sha256(prev.script).digest()
        if kind == "v1_p2tr":
            return b"", (self._dummy_sig(outpoint, schnorr=True),)
        sig = self._dummy_sig(outpoint)
        if kind == "p2pkh":
            return push_data(sig) + push_data(pub), ()
        if kind == "v0_p2wpkh":
            return b"", (sig, pub)
        if kind == "p2sh":
            return push_data(b"\x00\x14" + hash160(pub)), (sig, pub)
        if kind == "v0_p2wsh":
            return b"", (sig, push_data(pub) + b"\xac")
        if kind == "p2pk":
            return push_data(sig), ()
        return b"", ()

    @staticmethod
    def _serialize(version: int, vin: Sequence[SimTxIn], vout: Sequence[SimTxOut], locktime: int) -> tuple[bytes, bytes]:
        """(full serialization, non-witness serialization)."""
        ins = [varint(len(vin))]
        for i in vin:
            ins.append(bytes.fromhex(i.txid)[::-1])
            ins.append(i.vout.to_bytes(4, "little"))
            ins.append(varint(len(i.script_sig)))
            ins.append(i.script_sig)
            ins.append(i.sequence.to_bytes(4, "little"))
        outs = [varint(len(vout))]
        for o in vout:
            outs.append(o.value.to_bytes(8, "little"))
            outs.append(varint(len(o.script)))
            outs.append(o.script)
        ver = version.to_bytes(4, "little")
        lock = locktime.to_bytes(4, "little")
        body = b"".join(ins) + b"".join(outs)
        stripped = ver + body + lock
        if not any(i.witness for i in vin):
            return stripped, stripped
        wits = []
        for i in vin:
            wits.append(varint(len(i.witness)))
            for item in i.witness:
                wits.append(varint(len(item)))
                wits.append(item)
        return ver + b"\x00\x01" + body + b"".join(wits) + lock, stripped

    def _build(
        self,
        vin: Sequence[SimTxIn],
        vout: Sequence[SimTxOut],
        *,
        fee: int,
        version: int = 2,
        locktime: int = 0,
        change_n: int | None = None,
    ) -> SimTx:
        raw, stripped = self._serialize(version, vin, vout, locktime)
        txid = sha256d(stripped)[::-1].hex()
        wtxid = sha256d(raw)[::-1].hex() if raw is not stripped else txid
        return SimTx(txid, version, locktime, tuple(vin), tuple(vout), raw, len(stripped), wtxid, fee, change_n)

    def _output(self, dest: str | bytes | None, value: int) -> SimTxOut:
        if value < 0:
            raise ValueError(f"negative output value {value}")
        if dest is None:
            return SimTxOut(value, b"\x6a" + push_data(OP_RETURN_DATA), None)
        script = bytes(dest) if isinstance(dest, (bytes, bytearray)) else self.script_for(dest)
        return SimTxOut(value, script, self.address_for(script))

    # --- prevouts, liveness -----------------------------------------------------------------------

    def prevout(self, txid: str, vout: int) -> SimTxOut | None:
        """The output an input spends: from any tx the chain ever built, or a pre-history output."""
        tx = self._all_txs.get(txid)
        if tx is not None:
            return tx.vout[vout] if vout < len(tx.vout) else None
        return self._premine.get((txid, vout))

    def _live_output(self, txid: str, vout: int) -> SimTxOut | None:
        tx = self._txs.get(txid)
        if tx is not None:
            return tx.vout[vout] if vout < len(tx.vout) else None
        return self._premine.get((txid, vout))

    def _addresses(self, tx: SimTx) -> list[str]:
        seen: dict[str, None] = {}
        for i in tx.vin:
            if not i.is_coinbase:
                prev = self.prevout(i.txid, i.vout)
                if prev is not None and prev.address:
                    seen[prev.address] = None
        for o in tx.vout:
            if o.address:
                seen[o.address] = None
        return list(seen)

    @staticmethod
    def _spendable(out: SimTxOut) -> bool:
        return bool(out.script) and out.script[0] != 0x6A

    # --- applying and undoing txs -----------------------------------------------------------------

    def _check_inputs(self, tx: SimTx) -> None:
        for i in tx.vin:
            key = (i.txid, i.vout)
            if self._live_output(i.txid, i.vout) is None:
                raise ValueError(f"input {i.txid}:{i.vout} of {tx.txid} spends an unknown output")
            if key in self._spent_by:
                raise ValueError(f"input {i.txid}:{i.vout} is already spent by {self._spent_by[key][0]}")

    def _apply(self, tx: SimTx) -> None:
        """Make a tx live: spends, UTXO and address indexes (not the confirmation)."""
        txid = tx.txid
        self._txs[txid] = tx
        self._all_txs[txid] = tx
        for n, i in enumerate(tx.vin):
            if i.is_coinbase:
                continue
            key = (i.txid, i.vout)
            self._spent_by[key] = (txid, n)
            prev = self._live_output(i.txid, i.vout)
            if prev is not None and prev.address:
                self._addr_utxos.get(prev.address, {}).pop(key, None)
        for n, o in enumerate(tx.vout):
            if o.address and self._spendable(o):
                self._addr_utxos.setdefault(o.address, {})[(txid, n)] = None
        self._version += 1

    def _unapply(self, tx: SimTx) -> None:
        """Inverse of `_apply` (and of any confirmation/mempool entry the tx had)."""
        txid = tx.txid
        if txid in self._mempool:
            del self._mempool[txid]
            for a in self._addresses(tx):
                self._addr_mempool.get(a, {}).pop(txid, None)
        for n, o in enumerate(tx.vout):
            if o.address:
                self._addr_utxos.get(o.address, {}).pop((txid, n), None)
        del self._txs[txid]
        for i in tx.vin:
            if i.is_coinbase:
                continue
            key = (i.txid, i.vout)
            if self._spent_by.get(key, (None,))[0] == txid:
                del self._spent_by[key]
                prev = self._live_output(i.txid, i.vout)
                if prev is not None and prev.address and self._spendable(prev):
                    self._addr_utxos.setdefault(prev.address, {})[key] = None
        self._version += 1

    def _accept(self, tx: SimTx) -> SimTx:
        """Put a tx in the mempool after checking its inputs."""
        self._check_inputs(tx)
        self._apply(tx)
        self._mempool[tx.txid] = tx
        for a in self._addresses(tx):
            self._addr_mempool.setdefault(a, {})[tx.txid] = None
        return tx

    def _descendants(self, txid: str) -> list[str]:
        """Mempool txs spending `txid`'s outputs, transitively, in mempool order."""
        found: set[str] = set()
        stack = [txid]
        while stack:
            t = stack.pop()
            tx = self._txs.get(t)
            if tx is None:
                continue
            for n in range(len(tx.vout)):
                spender = self._spent_by.get((t, n))
                if spender and spender[0] not in found and spender[0] in self._mempool:
                    found.add(spender[0])
                    stack.append(spender[0])
        return [t for t in self._mempool if t in found]

    def _remove_from_mempool(self, txids: Iterable[str]) -> list[str]:
        """Remove mempool txs and their descendants; returns the removed txids (mempool order)."""
        doomed: set[str] = set()
        for t in txids:
            if t in self._mempool:
                doomed.add(t)
                doomed.update(self._descendants(t))
        ordered = [t for t in self._mempool if t in doomed]
        for t in reversed(ordered):
            self._unapply(self._mempool[t])
        return ordered

    # --- public mutations ---------------------------------------------------------------------------

    def _premine_outpoint(self, value: int) -> tuple[str, int]:
        self._counter += 1
        txid = sha256d(f"treasury-monitor sim pre-history {self.seed} {self._counter}".encode())[::-1].hex()
        self._premine[(txid, 0)] = SimTxOut(value, push_data(self._faucet_pub) + b"\xac", None)
        return txid, 0

    def fund_many(self, payments: Sequence[tuple[str, int]], *, confirmed: bool = True) -> list[Outpoint]:
        """One faucet tx paying each (address, value); mined into a new block when `confirmed`."""
        if not payments:
            raise ValueError("nothing to fund")
        total = sum(v for _, v in payments)
        prev_txid, prev_n = self._premine_outpoint(total)
        script_sig, witness = self._unlock(self._premine[(prev_txid, prev_n)], (prev_txid, prev_n))
        vin = [SimTxIn(prev_txid, prev_n, script_sig, witness, SEQUENCE_FINAL)]
        vout = [self._output(a, v) for a, v in payments]
        tx = self._accept(self._build(vin, vout, fee=0))
        if confirmed:
            self.mine(txs=[tx.txid])
        return [Outpoint(tx.txid, n) for n in range(len(vout))]

    def fund(self, address: str, value_sat: int, *, confirmed: bool = True) -> Outpoint:
        """A faucet tx paying `value_sat` to `address`; mined into a new block when `confirmed`."""
        return self.fund_many([(address, value_sat)], confirmed=confirmed)[0]

    def _select(self, from_addresses: Sequence[str], needed: int) -> list[tuple[str, int]]:
        chosen: list[tuple[str, int]] = []
        total = 0
        for a in from_addresses:
            for key in self._addr_utxos.get(a, {}):
                chosen.append(key)
                total += self._txs[key[0]].vout[key[1]].value
                if total >= needed:
                    return chosen
        have = total
        raise ValueError(f"insufficient funds: need {needed} sat, {list(from_addresses)} hold {have} sat")

    def pay(
        self,
        from_addresses: Sequence[str],
        outputs: Sequence[tuple[str | bytes | None, int]],
        *,
        fee: int = 1_000,
        change_address: str | None = None,
        inputs: Sequence[Outpoint | tuple[str, int]] | None = None,
        rbf: bool = True,
        version: int = 2,
        locktime: int = 0,
    ) -> SimTx:
        """Build a tx spending UTXOs of `from_addresses` (oldest first) or exactly `inputs`; put it in the mempool.

        `outputs` are (address, value); an address None makes an OP_RETURN output, bytes a raw script.
        Change (inputs − outputs − fee, when positive) goes to `change_address`, default the first
        from-address (or the address of the first explicit input).

        :raises ValueError: insufficient funds, unknown or already spent inputs, negative values.
        """
        if fee < 0:
            raise ValueError("fee must not be negative")
        vout = [self._output(a, v) for a, v in outputs]
        needed = sum(o.value for o in vout) + fee
        if inputs is not None:
            keys = [(o.txid, o.vout) if isinstance(o, Outpoint) else (o[0], o[1]) for o in inputs]
        else:
            if not from_addresses:
                raise ValueError("give from_addresses or inputs")
            keys = self._select(from_addresses, needed)
        prevs = []
        for k in keys:
            prev = self._live_output(*k)
            if prev is None:
                raise ValueError(f"input {k[0]}:{k[1]} is not a known output")
            if k in self._spent_by:
                raise ValueError(f"input {k[0]}:{k[1]} is already spent by {self._spent_by[k][0]} (use replace)")
            prevs.append(prev)
        total_in = sum(p.value for p in prevs)
        change = total_in - needed
        if change < 0:
            raise ValueError(f"insufficient funds: inputs hold {total_in} sat, outputs + fee need {needed} sat")
        change_n = None
        if change > 0:
            dest = change_address or (from_addresses[0] if from_addresses else prevs[0].address)
            if dest is None:
                raise ValueError("no change address: give change_address")
            change_n = len(vout)
            vout.append(self._output(dest, change))
        seq = SEQUENCE_RBF if rbf else SEQUENCE_FINAL
        vin = []
        for k, prev in zip(keys, prevs):
            script_sig, witness = self._unlock(prev, k)
            vin.append(SimTxIn(k[0], k[1], script_sig, witness, seq))
        tx = self._build(vin, vout, fee=fee, version=version, locktime=locktime, change_n=change_n)
        return self._accept(tx)

    def replace(
        self,
        txid: str,
        *,
        outputs: Sequence[tuple[str | bytes | None, int]] | None = None,
        fee: int | None = None,
    ) -> SimTx:
        """RBF: drop mempool tx `txid` and its descendants, add a tx spending the same inputs.

        - no arguments: same outputs, fee + 1,000 sat taken from the change output;
        - `fee` only: same outputs, that fee, the difference taken from (or given to) the change output;
        - `outputs` only: exactly those outputs, the fee is what is left (must exceed the old fee);
        - both: those outputs plus change (to the old change address, else the first input's) for the rest.

        :raises ValueError: when `txid` is not in the mempool or the new tx is not affordable.
        """
        old = self._mempool.get(txid)
        if old is None:
            raise ValueError(f"{txid} is not in the mempool")
        prevs = [self._live_output(i.txid, i.vout) for i in old.vin]
        total_in = sum(p.value for p in prevs if p is not None)
        old_change = old.vout[old.change_n] if old.change_n is not None else None
        change_dest = old_change.address if old_change else prevs[0].address if prevs and prevs[0] else None
        change_n: int | None
        if outputs is None:
            new_fee = old.fee + 1_000 if fee is None else fee
            vout = list(old.vout)
            delta = new_fee - old.fee
            n = old.change_n if old.change_n is not None else len(vout) - 1
            if vout[n].value - delta < 0:
                raise ValueError(f"the change output holds {vout[n].value} sat, cannot pay {delta} more fee")
            vout[n] = SimTxOut(vout[n].value - delta, vout[n].script, vout[n].address)
            change_n = old.change_n
        else:
            vout = [self._output(a, v) for a, v in outputs]
            rest = total_in - sum(o.value for o in vout)
            if fee is None:
                new_fee, change_n = rest, None
                if new_fee <= old.fee:
                    raise ValueError(f"replacement fee {new_fee} must exceed the original fee {old.fee}")
            else:
                new_fee, change_n = fee, None
                change = rest - fee
                if change < 0:
                    raise ValueError(f"insufficient funds: inputs hold {total_in} sat")
                if change > 0:
                    if change_dest is None:
                        raise ValueError("no change address for the replacement")
                    change_n = len(vout)
                    vout.append(self._output(change_dest, change))
        self._remove_from_mempool([txid])
        vin = []
        for i, prev in zip(old.vin, prevs):
            assert prev is not None
            script_sig, witness = self._unlock(prev, (i.txid, i.vout))
            vin.append(SimTxIn(i.txid, i.vout, script_sig, witness, i.sequence))
        tx = self._build(vin, vout, fee=new_fee, version=old.version, locktime=old.locktime, change_n=change_n)
        return self._accept(tx)

    def evict(self, txid: str) -> list[str]:
        """Drop a mempool tx and its descendants (expiry, conflict elsewhere); returns the removed txids."""
        if txid not in self._mempool:
            raise ValueError(f"{txid} is not in the mempool")
        return self._remove_from_mempool([txid])

    def set_difficulty(self, difficulty: float) -> None:
        """Difficulty (and compact bits) of the blocks mined from now on."""
        self._bits = bits_from_difficulty(difficulty)

    @property
    def difficulty(self) -> float:
        """Difficulty the next block will carry (as encoded in its bits)."""
        return difficulty_from_bits(self._bits)

    def _coinbase(
        self,
        height: int,
        reward: int,
        wtxids: list[bytes],
        coinbase_to: str | None,
        coinbase_tag: str,
        coinbase_outputs: Sequence[tuple[str | bytes | None, int]] | None,
    ) -> SimTx:
        self._counter += 1
        tag = coinbase_tag.encode("ascii")
        script_sig = _bip34_height(height) + push_data(self._counter.to_bytes(8, "little")) + (push_data(tag) if tag else b"")
        if len(script_sig) > 100:
            raise ValueError("coinbase tag too long: the coinbase scriptSig is limited to 100 bytes")
        outs = [self._output(a, v) for a, v in (coinbase_outputs or ())]
        rest = reward - sum(o.value for o in outs)
        if rest < 0:
            raise ValueError(f"coinbase outputs pay {reward - rest} sat, more than subsidy + fees {reward} sat")
        if rest > 0 or not outs:
            outs.append(self._output(coinbase_to or self.address("sim-miner"), rest))
        reserved = b"\x00" * 32
        witness_root = merkle_root([b"\x00" * 32] + wtxids)
        commitment = sha256d(witness_root + reserved)
        outs.append(SimTxOut(0, b"\x6a\x24" + WITNESS_COMMITMENT_HEADER + commitment, None))
        vin = [SimTxIn(NULL_TXID, 0xFFFFFFFF, script_sig, (reserved,), SEQUENCE_FINAL)]
        return self._build(vin, outs, fee=0)

    def _median_time(self, time: int) -> int:
        times = [b.time for b in self._chain[-10:]] + [time]
        times.sort()
        return times[len(times) // 2]

    def _connect(self, txs: list[SimTx], time: int, coinbase_to, coinbase_tag, coinbase_outputs) -> SimBlock:
        height = self.height + 1
        fees = sum(t.fee for t in txs)
        wtxids = [bytes.fromhex(t.wtxid)[::-1] for t in txs]
        cb = self._coinbase(height, subsidy(height) + fees, wtxids, coinbase_to, coinbase_tag, coinbase_outputs)
        all_txs = (cb, *txs)
        root = merkle_root([bytes.fromhex(t.txid)[::-1] for t in all_txs])
        prev = self._chain[-1].hash if self._chain else self._genesis_prev
        nonce = self._rng.getrandbits(32)
        header = b"".join(
            [
                BLOCK_VERSION.to_bytes(4, "little"),
                bytes.fromhex(prev)[::-1],
                root,
                time.to_bytes(4, "little"),
                self._bits.to_bytes(4, "little"),
                nonce.to_bytes(4, "little"),
            ]
        )
        n = len(all_txs)
        size = 80 + len(varint(n)) + sum(t.size for t in all_txs)
        base = 80 + len(varint(n)) + sum(t.base_size for t in all_txs)
        block = SimBlock(
            hash=sha256d(header)[::-1].hex(),
            height=height,
            version=BLOCK_VERSION,
            prev_hash=prev,
            merkle_root=root[::-1].hex(),
            time=time,
            bits=self._bits,
            nonce=nonce,
            txs=all_txs,
            header=header,
            size=size,
            weight=base * 3 + size,
            median_time=self._median_time(time),
            coinbase_tag=coinbase_tag,
        )
        self._apply(cb)
        for t in txs:
            del self._mempool[t.txid]
            for a in self._addresses(t):
                self._addr_mempool.get(a, {}).pop(t.txid, None)
        for pos, t in enumerate(all_txs):
            self._confirmed[t.txid] = (block, pos)
            for a in self._addresses(t):
                self._addr_chain.setdefault(a, []).append((height, pos, t.txid))
        self._blocks[block.hash] = block
        self._chain.append(block)
        self._version += 1
        return block

    def _disconnect_tip(self) -> SimBlock:
        block = self._chain.pop()
        for t in block.txs:
            del self._confirmed[t.txid]
            for a in self._addresses(t):
                entries = self._addr_chain.get(a)
                while entries and entries[-1][0] == block.height:
                    entries.pop()
        for t in reversed(block.txs):
            self._unapply(t)
        self._version += 1
        return block

    def mine(
        self,
        n: int = 1,
        *,
        txs: Sequence[str | SimTx] | None = None,
        time: int | None = None,
        coinbase_to: str | None = None,
        coinbase_tag: str = "",
        coinbase_outputs: Sequence[tuple[str | bytes | None, int]] | None = None,
        difficulty: float | None = None,
    ) -> list[SimBlock]:
        """Mine `n` blocks; the first takes `txs` (default: the whole mempool), the others are empty.

        `time` is the first block's timestamp (default: previous block + block_interval), later ones
        follow at block_interval. The coinbase pays subsidy + fees: `coinbase_outputs` first, the rest
        to `coinbase_to` (default the address of label "sim-miner"). `difficulty` is set_difficulty().
        No consensus limits are enforced (block weight, coinbase maturity, locktimes): tests may build
        blocks larger than 4M weight units on purpose.

        :raises ValueError: a listed tx is not in the mempool or has a parent that is neither confirmed
            nor listed before it.
        """
        if n < 1:
            raise ValueError("mine at least one block")
        if difficulty is not None:
            self.set_difficulty(difficulty)
        if txs is None:
            first = list(self._mempool.values())
        else:
            first = []
            included: set[str] = set()
            for t in txs:
                tid = t.txid if isinstance(t, SimTx) else t
                tx = self._mempool.get(tid)
                if tx is None:
                    raise ValueError(f"{tid} is not in the mempool")
                for i in tx.vin:
                    if i.txid in self._mempool and i.txid not in included:
                        raise ValueError(f"{tid} spends unconfirmed {i.txid}, which is not included before it")
                included.add(tid)
                first.append(tx)
        blocks = []
        for k in range(n):
            if time is not None:
                t = time + k * self.block_interval
            elif self._chain:
                t = self._chain[-1].time + self.block_interval
            else:
                t = self.start_time
            blocks.append(self._connect(first if k == 0 else [], t, coinbase_to, coinbase_tag, coinbase_outputs))
        return blocks

    def reorg(
        self,
        depth: int,
        *,
        drop_txids: Iterable[str] = (),
        replacements: Mapping[str, Mapping] | None = None,
        new_blocks: int | None = None,
        include_mempool: bool = True,
        time: int | None = None,
        coinbase_to: str | None = None,
        coinbase_tag: str = "",
    ) -> list[SimBlock]:
        """Orphan the last `depth` blocks and mine a new branch (default `depth + 1` blocks, so it wins).

        The orphaned blocks' non-coinbase txs return to the mempool (ahead of what was there), except
        `drop_txids`, which vanish with their descendants, and the keys of `replacements`, which are
        replaced via `replace(txid, **kwargs)`. Txs spending an orphaned coinbase vanish too. With
        `include_mempool` the new branch's first block takes the whole mempool, else all new blocks are
        empty and the returned txs wait in the mempool. Orphaned blocks stay in `block_by_hash`.
        """
        if not 1 <= depth <= len(self._chain):
            raise ValueError(f"cannot orphan {depth} blocks of a {len(self._chain)}-block chain")
        new_blocks = depth + 1 if new_blocks is None else new_blocks
        pending = list(self._mempool.values())
        for t in reversed(pending):
            self._unapply(t)
        orphaned = [self._disconnect_tip() for _ in range(depth)][::-1]
        drop = set(drop_txids)
        returning = [t for b in orphaned for t in b.txs[1:]] + pending
        gone: set[str] = set()
        for t in returning:
            if t.txid in drop or any(i.txid in gone for i in t.vin):
                gone.add(t.txid)
                continue
            try:
                self._accept(t)
            except ValueError:
                gone.add(t.txid)
        for txid, kwargs in (replacements or {}).items():
            self.replace(txid, **dict(kwargs))
        fork_time = self._chain[-1].time if self._chain else self.start_time - self.block_interval
        if new_blocks <= 0:
            return []
        return self.mine(
            new_blocks,
            txs=None if include_mempool else [],
            time=time if time is not None else fork_time + self.block_interval,
            coinbase_to=coinbase_to,
            coinbase_tag=coinbase_tag,
        )

    # --- views --------------------------------------------------------------------------------------

    @property
    def tip(self) -> SimBlock | None:
        """The best block, or None before the first block is mined."""
        return self._chain[-1] if self._chain else None

    @property
    def height(self) -> int:
        """Height of the best block (`start_height - 1` before any block)."""
        return self.start_height - 1 + len(self._chain)

    @property
    def blocks(self) -> list[SimBlock]:
        """The best chain, lowest first."""
        return list(self._chain)

    @property
    def version(self) -> int:
        """A counter that changes whenever the chain or mempool changes."""
        return self._version

    def block_by_hash(self, block_hash: str) -> SimBlock | None:
        """Any block ever mined (stale ones included) by hash."""
        return self._blocks.get(block_hash)

    def block_at(self, height: int) -> SimBlock | None:
        """The best-chain block at a height."""
        i = height - self.start_height
        return self._chain[i] if 0 <= i < len(self._chain) else None

    def is_best(self, block: SimBlock | str) -> bool:
        """Whether a block (or hash) is in the best chain."""
        b = self._blocks.get(block) if isinstance(block, str) else block
        return b is not None and self.block_at(b.height) is b

    def next_best(self, block: SimBlock) -> SimBlock | None:
        """The best-chain successor of a best-chain block."""
        return self.block_at(block.height + 1) if self.is_best(block) else None

    def raw_block(self, block_hash: str) -> bytes:
        """Wire serialization of a block (stale ones included). :raises KeyError: unknown hash."""
        return self._blocks[block_hash].raw()

    def tx(self, txid: str) -> SimTx | None:
        """A live tx: confirmed in the best chain or in the mempool (None when unknown, dropped or replaced)."""
        return self._txs.get(txid)

    def any_tx(self, txid: str) -> SimTx | None:
        """Any tx the chain ever built, live or not (stale blocks, replaced, dropped)."""
        return self._all_txs.get(txid)

    def tx_status(self, txid: str) -> TxStatus | None:
        """Best-chain confirmation of a tx, None when unconfirmed or unknown."""
        hit = self._confirmed.get(txid)
        if hit is None:
            return None
        block = hit[0]
        return TxStatus(block.height, block.hash, block.time)

    def tx_position(self, txid: str) -> tuple[SimBlock, int] | None:
        """(block, index in block) of a confirmed tx."""
        return self._confirmed.get(txid)

    @property
    def mempool(self) -> list[SimTx]:
        """Mempool txs in arrival order (parents before children)."""
        return list(self._mempool.values())

    def in_mempool(self, txid: str) -> bool:
        """Whether a tx waits in the mempool."""
        return txid in self._mempool

    def address_chain_txids(self, address: str) -> list[str]:
        """Confirmed txids touching an address, newest first (height, then position in block)."""
        return [e[2] for e in reversed(self._addr_chain.get(address, ()))]

    def address_mempool_txids(self, address: str) -> list[str]:
        """Mempool txids touching an address, newest first."""
        return list(reversed(self._addr_mempool.get(address, {})))

    def address_txs(self, address: str) -> list[SimTx]:
        """Txs touching an address: mempool newest first, then confirmed newest first."""
        ids = self.address_mempool_txids(address) + self.address_chain_txids(address)
        return [self._txs[t] for t in ids]

    def _stats_of(self, address: str, txids: Iterable[str]) -> dict[str, int]:
        s = dict.fromkeys(_EMPTY_STATS, 0)
        for txid in txids:
            tx = self._txs[txid]
            s["tx_count"] += 1
            for o in tx.vout:
                if o.address == address:
                    s["funded_txo_count"] += 1
                    s["funded_txo_sum"] += o.value
            for i in tx.vin:
                if i.is_coinbase:
                    continue
                prev = self.prevout(i.txid, i.vout)
                if prev is not None and prev.address == address:
                    s["spent_txo_count"] += 1
                    s["spent_txo_sum"] += prev.value
        return s

    def address_stats(self, address: str) -> tuple[dict[str, int], dict[str, int]]:
        """(chain_stats, mempool_stats) exactly as Esplora counts them for an address."""
        hit = self._stats_cache.get(address)
        if hit and hit[0] == self._version:
            return dict(hit[1]), dict(hit[2])
        chain = self._stats_of(address, (e[2] for e in self._addr_chain.get(address, ())))
        mem = self._stats_of(address, self._addr_mempool.get(address, {}))
        self._stats_cache[address] = (self._version, chain, mem)
        return dict(chain), dict(mem)

    def balance(self, address: str, *, include_mempool: bool = False) -> int:
        """Confirmed balance (funded − spent), optionally with the mempool delta."""
        chain, mem = self.address_stats(address)
        bal = chain["funded_txo_sum"] - chain["spent_txo_sum"]
        if include_mempool:
            bal += mem["funded_txo_sum"] - mem["spent_txo_sum"]
        return bal

    def utxos(self, address: str) -> list[Utxo]:
        """Unspent outputs of an address (not spent by any live tx), confirmed and in the mempool."""
        out = []
        for txid, n in self._addr_utxos.get(address, {}):
            out.append(Utxo(txid, n, self._txs[txid].vout[n].value, self.tx_status(txid)))
        return out

    def outspends(self, txid: str) -> list[Spend | None]:
        """For each output of a live tx, the live input spending it (None when unspent)."""
        tx = self._txs.get(txid)
        if tx is None:
            raise KeyError(txid)
        result: list[Spend | None] = []
        for n in range(len(tx.vout)):
            hit = self._spent_by.get((txid, n))
            result.append(Spend(hit[0], hit[1], self.tx_status(hit[0])) if hit else None)
        return result
