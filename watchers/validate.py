"""Untrusted JSON from chain sources → typed values, or `MalformedError` naming the field (electrum style).

Every Esplora answer passes through here before it becomes a `ChainTx`, a `BalanceSnapshot` or a
block header. The rules: required keys must be present with the documented type; amounts are integer
satoshis in [0, 21M BTC] (never floats: `1.5`, `"1000"` and `1e8` are rejected); booleans are not
integers; extra keys the service adds (mempool.space's `vsize`, `feePerVsize`, `sigops`, `firstSeen`,
...) are ignored. A message names the field path and the bad value:
`vout[2].value: expected a non-negative integer, got 1.5`.

What real servers send besides Esplora's own shapes (mempool.space on its `none`/`electrum` backend
converts Bitcoin Core's answers, backend/src/api/bitcoin/bitcoin-api.ts `$convertTransaction`), and what
is done with it:

- `scriptpubkey_address: ""` or `null` (outputs and prevouts without an address): no address.
- a coinbase input as `txid: ""`, `vout: 0`, `prevout: null`: `is_coinbase` is read first; a coinbase
  input's outpoint is normalised to the null outpoint (64 zeros, 0xffffffff) whatever was sent.
- `prevout: null` on a non-coinbase input (mempool's lazy prevouts) and `fee: -1`: rejected, the input's
  address and value are unknown; the tx is retried later.
- `fee` absent or null: derived as inputs − outputs (0 for a coinbase).
- `status` `{"confirmed": true}` without block fields (mempool's outspends): accepted for outspends,
  rejected for a tx (a confirmed tx must name its block).
- amounts above 21M BTC, heights above 2^31 − 1, times above 2^32 − 1, other integers beyond 64 bits,
  floats, strings and booleans where an integer is documented: rejected (nothing stored can overflow).

`parse_tx_page` reads a page of txs one by one: a tx whose txid and status can be read but whose other
fields are malformed becomes a `PageEntry` with the reason instead of failing the whole page.
"""

from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from monitor.model import BalanceSnapshot, ChainTx, MalformedError, TxInput, TxOutput

__all__ = [
    "MAX_MONEY",
    "AddressStats",
    "TxStatus",
    "Utxo",
    "Outspend",
    "assert_dict",
    "assert_list",
    "assert_int",
    "assert_sats",
    "assert_bool",
    "assert_str",
    "assert_hex",
    "assert_number",
    "assert_address",
    "require",
    "parse_tx",
    "parse_txs",
    "parse_tx_page",
    "PageEntry",
    "NULL_TXID",
    "parse_tx_status",
    "parse_address_stats",
    "parse_block",
    "parse_utxos",
    "parse_outspends",
    "parse_height",
    "parse_hash",
]

MAX_MONEY = 21_000_000 * 100_000_000
_HEX64 = re.compile(r"[0-9a-f]{64}")
# Base58 and bech32 characters only: a watched address is later put in URL paths and logs.
_ADDRESS = re.compile(r"[0-9A-Za-z]{10,100}")
_MAX_U32 = 2**32 - 1
# Heights are int32 in Core and header times uint32; anything stored must fit SQLite's signed 64 bits.
_MAX_HEIGHT = 2**31 - 1
_MAX_I64 = 2**63 - 1
#: The outpoint a coinbase input spends: 32 zero bytes, index 0xffffffff.
NULL_TXID = "0" * 64


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(field: str, expected: str, value: Any) -> MalformedError:
    return MalformedError(f"{field}: expected {expected}, got {_show(value)}")


@functools.lru_cache(maxsize=8192)  # called for every field of every tx parsed: paths repeat page after page
def _at(prefix: str, name: str) -> str:
    if not prefix:
        return name
    return f"{prefix}{name}" if name.startswith("[") else f"{prefix}.{name}"


def assert_dict(value: Any, field: str) -> dict:
    """`value` if it is a JSON object. :raises MalformedError:"""
    if not isinstance(value, dict):
        raise _fail(field, "an object", value)
    return value


def assert_list(value: Any, field: str, *, non_empty: bool = False) -> list:
    """`value` if it is a JSON array (non-empty when asked). :raises MalformedError:"""
    if not isinstance(value, list):
        raise _fail(field, "an array", value)
    if non_empty and not value:
        raise _fail(field, "a non-empty array", value)
    return value


def assert_int(value: Any, field: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """`value` if it is an integer within bounds (bools and floats rejected). :raises MalformedError:"""
    if isinstance(value, bool) or not isinstance(value, int):
        what = "an integer" if minimum is None else ("a non-negative integer" if minimum == 0 else f"an integer >= {minimum}")
        raise _fail(field, what, value)
    if minimum is not None and value < minimum:
        raise _fail(field, "a non-negative integer" if minimum == 0 else f"an integer >= {minimum}", value)
    if maximum is not None and value > maximum:
        raise _fail(field, f"an integer <= {maximum}", value)
    return value


def assert_sats(value: Any, field: str) -> int:
    """An amount in satoshis: a non-negative integer no larger than 21M BTC. :raises MalformedError:"""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(field, "a non-negative integer", value)
    if value > MAX_MONEY:
        raise _fail(field, f"at most {MAX_MONEY} satoshis", value)
    return value


def assert_bool(value: Any, field: str) -> bool:
    """`value` if it is true or false. :raises MalformedError:"""
    if not isinstance(value, bool):
        raise _fail(field, "a boolean", value)
    return value


def assert_str(value: Any, field: str, *, max_len: int = 10_000) -> str:
    """`value` if it is a string of bounded length. :raises MalformedError:"""
    if not isinstance(value, str) or len(value) > max_len:
        raise _fail(field, f"a string of at most {max_len} characters", value)
    return value


def assert_hex(value: Any, field: str) -> str:
    """A 32-byte hash (txid, block hash) as 64 lower-case hex digits. :raises MalformedError:"""
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise _fail(field, "64 lower-case hex digits", value)
    return value


def assert_number(value: Any, field: str, *, minimum: float | None = None) -> float:
    """A finite JSON number (int or float; not for amounts) as float. :raises MalformedError:"""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _fail(field, "a finite number", value)
    if minimum is not None and value < minimum:
        raise _fail(field, f"a number >= {minimum}", value)
    return float(value)


def assert_address(value: Any, field: str) -> str:
    """A plausible address string (base58/bech32 characters, 10-100 long); checksums are not verified here."""
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise _fail(field, "an address", value)
    return value


def require(obj: dict, key: str, prefix: str = "") -> Any:
    """`obj[key]`, or MalformedError naming the missing field. :raises MalformedError:"""
    if key not in obj:
        raise MalformedError(f"{_at(prefix, key)}: missing")
    return obj[key]


# --- transactions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TxStatus:
    """Esplora `status`: block fields when confirmed, all None in the mempool."""

    confirmed: bool
    block_height: int | None = None
    block_hash: str | None = None
    block_time: int | None = None


def parse_tx_status(obj: Any, prefix: str = "status", *, need_block: bool = True) -> TxStatus:
    """Esplora `status` object (also `/tx/:txid/status`) → TxStatus. :raises MalformedError:

    With `need_block=False` a confirmed status without block fields (mempool.space's outspends on its
    Core backend send `{"confirmed": true}`) is accepted with the block fields None.
    """
    d = assert_dict(obj, prefix or "status")
    confirmed = assert_bool(require(d, "confirmed", prefix), _at(prefix, "confirmed"))
    if not confirmed:
        return TxStatus(False)  # block fields of an unconfirmed tx are ignored
    if not need_block and d.get("block_height") is None and d.get("block_hash") is None:
        return TxStatus(True)
    return TxStatus(
        True,
        assert_int(require(d, "block_height", prefix), _at(prefix, "block_height"), minimum=0, maximum=_MAX_HEIGHT),
        assert_hex(require(d, "block_hash", prefix), _at(prefix, "block_hash")),
        assert_int(require(d, "block_time", prefix), _at(prefix, "block_time"), minimum=0, maximum=_MAX_U32),
    )


def _no_address(value: Any, field: str) -> str | None:
    # Esplora omits the key; mempool.space's Core/electrum backends write "" and some proxies null.
    if value is None or value == "":
        return None
    return assert_address(value, field)


def _is_null_outpoint(d: dict) -> bool:
    return d.get("txid") in (NULL_TXID, "") and d.get("prevout") is None


def _parse_input(obj: Any, p: str) -> tuple[TxInput, bool]:
    d = assert_dict(obj, p)
    # is_coinbase first: mempool.space writes a coinbase input as txid "", vout 0.
    flag = d.get("is_coinbase")
    is_coinbase = _is_null_outpoint(d) if flag is None else assert_bool(flag, _at(p, "is_coinbase"))
    if is_coinbase:
        return TxInput(address=None, value=0, prev_txid=NULL_TXID, prev_vout=_MAX_U32), True
    prev_txid = assert_hex(require(d, "txid", p), _at(p, "txid"))
    prev_vout = assert_int(require(d, "vout", p), _at(p, "vout"), minimum=0, maximum=_MAX_U32)
    q = _at(p, "prevout")
    prevout = require(d, "prevout", p)
    if prevout is None:
        raise MalformedError(f"{q}: null on a non-coinbase input (the server did not resolve it)")
    prevout = assert_dict(prevout, q)
    value = assert_sats(require(prevout, "value", q), _at(q, "value"))
    address = _no_address(prevout.get("scriptpubkey_address"), _at(q, "scriptpubkey_address"))
    return TxInput(address=address, value=value, prev_txid=prev_txid, prev_vout=prev_vout), False


def _parse_output(obj: Any, p: str, n: int) -> TxOutput:
    d = assert_dict(obj, p)
    value = assert_sats(require(d, "value", p), _at(p, "value"))
    # absent (Esplora) or "" (mempool.space) for OP_RETURN, bare multisig, P2PK, ...
    address = _no_address(d.get("scriptpubkey_address"), _at(p, "scriptpubkey_address"))
    return TxOutput(address=address, value=value, n=n)


def parse_tx(obj: Any, *, chain: str = "bitcoin", prefix: str = "") -> ChainTx:
    """One Esplora tx object → ChainTx (integer satoshis; block fields None while unconfirmed).

    Besides shapes it checks that a non-coinbase tx's fee equals inputs − outputs.
    :raises MalformedError: naming the field, e.g. `vout[2].value: expected a non-negative integer, got 1.5`.
    """
    d = assert_dict(obj, prefix or "tx")
    txid = assert_hex(require(d, "txid", prefix), _at(prefix, "txid"))
    vin = assert_list(require(d, "vin", prefix), _at(prefix, "vin"), non_empty=True)
    vout = assert_list(require(d, "vout", prefix), _at(prefix, "vout"), non_empty=True)
    status = parse_tx_status(require(d, "status", prefix), _at(prefix, "status"))
    parsed = [_parse_input(x, _at(prefix, f"vin[{i}]")) for i, x in enumerate(vin)]
    inputs = tuple(i for i, _ in parsed)
    is_coinbase = any(cb for _, cb in parsed)
    outputs = tuple(_parse_output(x, _at(prefix, f"vout[{n}]"), n) for n, x in enumerate(vout))
    total_in, total_out = sum(i.value for i in inputs), sum(o.value for o in outputs)
    raw_fee = d.get("fee")
    if raw_fee is None:  # absent or null: the fee is what the inputs and outputs say
        fee = 0 if is_coinbase else total_in - total_out
        if fee < 0:
            raise MalformedError(f"{_at(prefix, 'vout')}: outputs {total_out} exceed inputs {total_in} (txid {txid})")
    else:
        fee = assert_sats(raw_fee, _at(prefix, "fee"))
    if not is_coinbase:
        if total_in - total_out != fee:
            raise MalformedError(
                f"{_at(prefix, 'fee')}: expected inputs - outputs = {total_in - total_out}, got {fee} (txid {txid})"
            )
    block_time = status.block_time
    if block_time is None:
        # mempool.space adds firstSeen (Unix seconds) to unconfirmed txs; Esplora does not.
        first_seen = d.get("firstSeen")
        if isinstance(first_seen, int) and not isinstance(first_seen, bool) and first_seen > 0:
            block_time = first_seen
    return ChainTx(
        chain=chain,
        txid=txid,
        block_height=status.block_height,
        block_time=block_time,
        inputs=inputs,
        outputs=outputs,
        fee=fee,
        block_hash=status.block_hash,
        is_coinbase=is_coinbase,
    )


def parse_txs(obj: Any, *, chain: str = "bitcoin", prefix: str = "txs") -> list[ChainTx]:
    """An Esplora array of tx objects (`/address/:a/txs...`, `/block/:h/txs/:i`) → ChainTx list.

    All or nothing, for callers that need every tx (a block's txs). :raises MalformedError: naming the
    element, e.g. `txs[3].vin[0].prevout: missing`.
    """
    items = assert_list(obj, prefix)
    return [parse_tx(x, chain=chain, prefix=f"{prefix}[{i}]") for i, x in enumerate(items)]


@dataclass(frozen=True)
class PageEntry:
    """One element of a page of txs: its id and status, and the ChainTx or why it could not be read."""

    txid: str
    status: TxStatus
    tx: ChainTx | None
    reason: str | None = None


def parse_tx_page(obj: Any, *, chain: str = "bitcoin", prefix: str = "txs") -> list[PageEntry]:
    """An Esplora array of tx objects → one PageEntry per element, in order; a malformed tx is kept as its reason.

    An element whose txid or status cannot be read fails the page: without them the paging cursor and
    the confirmed/mempool split cannot be kept honest. :raises MalformedError:
    """
    out = []
    for i, x in enumerate(assert_list(obj, prefix)):
        p = f"{prefix}[{i}]"
        d = assert_dict(x, p)
        txid = assert_hex(require(d, "txid", p), f"{p}.txid")
        status = parse_tx_status(require(d, "status", p), f"{p}.status")
        try:
            out.append(PageEntry(txid, status, parse_tx(d, chain=chain, prefix=p)))
        except MalformedError as exc:
            out.append(PageEntry(txid, status, None, str(exc)))
    return out


# --- addresses ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AddressStats:
    """Esplora `/address/:a` stats: confirmed (`chain_*`) and mempool (`mempool_*`) funded/spent sums."""

    address: str
    chain_tx_count: int
    chain_funded: int
    chain_spent: int
    mempool_tx_count: int
    mempool_funded: int
    mempool_spent: int
    #: mempool.space on its electrum backend: sums are the balance, history pages differ (watchers.esplora)
    electrum: bool = False

    @property
    def confirmed_balance(self) -> int:
        return self.chain_funded - self.chain_spent

    @property
    def mempool_delta(self) -> int:
        return self.mempool_funded - self.mempool_spent

    def snapshot(self, *, chain: str, at: int) -> BalanceSnapshot:
        """The BalanceSnapshot these stats describe (`tx_count` is the confirmed count)."""
        return BalanceSnapshot(
            chain=chain,
            address=self.address,
            at=at,
            confirmed=self.confirmed_balance,
            mempool_delta=self.mempool_delta,
            tx_count=self.chain_tx_count,
        )


def _parse_stats_block(obj: Any, p: str) -> tuple[int, int, int]:
    d = assert_dict(obj, p)
    for key in ("funded_txo_count", "spent_txo_count"):
        assert_int(require(d, key, p), _at(p, key), minimum=0, maximum=_MAX_I64)
    tx_count = assert_int(require(d, "tx_count", p), _at(p, "tx_count"), minimum=0, maximum=_MAX_I64)
    # Sums over the address's whole history can exceed MAX_MONEY (coins move in and out many times),
    # but not 64 bits (they are stored).
    funded = assert_int(require(d, "funded_txo_sum", p), _at(p, "funded_txo_sum"), minimum=0, maximum=_MAX_I64)
    spent = assert_int(require(d, "spent_txo_sum", p), _at(p, "spent_txo_sum"), minimum=0, maximum=_MAX_I64)
    return tx_count, funded, spent


def parse_address_stats(obj: Any, address: str) -> AddressStats:
    """Esplora `/address/:a` → AddressStats; checks the answer is about `address`. :raises MalformedError:"""
    d = assert_dict(obj, "address stats")
    reported = assert_str(require(d, "address"), "address")
    if reported.lower() != address.lower():
        raise MalformedError(f"address: expected {address!r}, got {_show(reported)}")
    c_count, c_funded, c_spent = _parse_stats_block(require(d, "chain_stats"), "chain_stats")
    m_count, m_funded, m_spent = _parse_stats_block(require(d, "mempool_stats"), "mempool_stats")
    if c_spent > c_funded:
        raise MalformedError(f"chain_stats.spent_txo_sum: expected at most funded_txo_sum {c_funded}, got {c_spent}")
    return AddressStats(address, c_count, c_funded, c_spent, m_count, m_funded, m_spent, d.get("electrum") is True)


@dataclass(frozen=True)
class Utxo:
    """One unspent output of an address (`/address/:a/utxo`)."""

    txid: str
    vout: int
    value: int
    block_height: int | None
    block_hash: str | None = None
    block_time: int | None = None


def parse_utxos(obj: Any) -> list[Utxo]:
    """Esplora `/address/:a/utxo` → Utxo list. :raises MalformedError:"""
    out = []
    for i, x in enumerate(assert_list(obj, "utxos")):
        p = f"utxos[{i}]"
        d = assert_dict(x, p)
        status = parse_tx_status(require(d, "status", p), f"{p}.status")
        out.append(
            Utxo(
                txid=assert_hex(require(d, "txid", p), f"{p}.txid"),
                vout=assert_int(require(d, "vout", p), f"{p}.vout", minimum=0, maximum=_MAX_U32),
                value=assert_sats(require(d, "value", p), f"{p}.value"),
                block_height=status.block_height,
                block_hash=status.block_hash,
                block_time=status.block_time,
            )
        )
    return out


@dataclass(frozen=True)
class Outspend:
    """Whether one output of a tx is spent, and by which input of which tx (`/tx/:txid/outspends`)."""

    spent: bool
    txid: str | None = None
    vin: int | None = None
    block_height: int | None = None
    confirmed: bool = False


def parse_outspends(obj: Any) -> list[Outspend]:
    """Esplora `/tx/:txid/outspends` → one Outspend per output, in output order. :raises MalformedError:"""
    out = []
    for i, x in enumerate(assert_list(obj, "outspends")):
        p = f"outspends[{i}]"
        d = assert_dict(x, p)
        if not assert_bool(require(d, "spent", p), f"{p}.spent"):
            out.append(Outspend(False))
            continue
        status = parse_tx_status(d["status"], f"{p}.status", need_block=False) if d.get("status") is not None else TxStatus(False)
        # mempool.space on Core without txospenderindex answers `{"spent": true}` alone: spent, spender unknown.
        txid = d.get("txid")
        out.append(
            Outspend(
                True,
                None if txid is None else assert_hex(txid, f"{p}.txid"),
                None if txid is None else assert_int(require(d, "vin", p), f"{p}.vin", minimum=0),
                status.block_height,
                status.confirmed,
            )
        )
    return out


# --- blocks and tips ------------------------------------------------------------------------------

_BLOCK_INTS = ("height", "version", "timestamp", "tx_count", "size", "weight", "mediantime", "nonce", "bits")


def parse_block(obj: Any) -> dict[str, Any]:
    """Esplora `/block/:hash` → dict of validated header fields (id, height, timestamp, difficulty, ...).

    `previousblockhash` is None for the genesis block. :raises MalformedError:
    """
    d = assert_dict(obj, "block")
    out: dict[str, Any] = {"id": assert_hex(require(d, "id"), "id")}
    for key in _BLOCK_INTS:
        top = _MAX_HEIGHT if key == "height" else _MAX_I64
        out[key] = assert_int(require(d, key), key, minimum=0 if key != "version" else -(2**31), maximum=top)
    out["merkle_root"] = assert_hex(require(d, "merkle_root"), "merkle_root")
    prev = d.get("previousblockhash")
    out["previousblockhash"] = None if prev is None else assert_hex(prev, "previousblockhash")
    out["difficulty"] = assert_number(require(d, "difficulty"), "difficulty", minimum=0)
    return out


def parse_height(text: Any, field: str = "height") -> int:
    """A plain-text block height (`/blocks/tip/height`) → int. :raises MalformedError:"""
    if not isinstance(text, str) or not text.strip().isdigit() or not text.strip().isascii():
        raise _fail(field, "a decimal block height", text)
    return int(text.strip())


def parse_hash(text: Any, field: str = "hash") -> str:
    """A plain-text block hash (`/blocks/tip/hash`, `/block-height/:h`) → 64 hex digits. :raises MalformedError:"""
    return assert_hex(text.strip() if isinstance(text, str) else text, field)
