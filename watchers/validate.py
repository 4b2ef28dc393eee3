"""Untrusted JSON from chain sources → typed values, or `MalformedError` naming the field (electrum style).

Every Esplora answer passes through here before it becomes a `ChainTx`, a `BalanceSnapshot` or a
block header. The rules: required keys must be present with the documented type; amounts are integer
satoshis in [0, 21M BTC] (never floats: `1.5`, `"1000"` and `1e8` are rejected); booleans are not
integers; extra keys the service adds (mempool.space's `vsize`, `feePerVsize`, `sigops`, `firstSeen`,
...) are ignored. A message names the field path and the bad value:
`vout[2].value: expected a non-negative integer, got 1.5`.
"""

from __future__ import annotations

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


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _fail(field: str, expected: str, value: Any) -> MalformedError:
    return MalformedError(f"{field}: expected {expected}, got {_show(value)}")


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


def parse_tx_status(obj: Any, prefix: str = "status") -> TxStatus:
    """Esplora `status` object (also `/tx/:txid/status`) → TxStatus. :raises MalformedError:"""
    d = assert_dict(obj, prefix or "status")
    confirmed = assert_bool(require(d, "confirmed", prefix), _at(prefix, "confirmed"))
    if not confirmed:
        return TxStatus(False)
    return TxStatus(
        True,
        assert_int(require(d, "block_height", prefix), _at(prefix, "block_height"), minimum=0),
        assert_hex(require(d, "block_hash", prefix), _at(prefix, "block_hash")),
        assert_int(require(d, "block_time", prefix), _at(prefix, "block_time"), minimum=0),
    )


def _parse_input(obj: Any, p: str) -> tuple[TxInput, bool]:
    d = assert_dict(obj, p)
    prev_txid = assert_hex(require(d, "txid", p), _at(p, "txid"))
    prev_vout = assert_int(require(d, "vout", p), _at(p, "vout"), minimum=0, maximum=_MAX_U32)
    prevout = d.get("prevout")
    is_coinbase = d.get("is_coinbase", prevout is None)
    is_coinbase = assert_bool(is_coinbase, _at(p, "is_coinbase"))
    if is_coinbase:
        return TxInput(address=None, value=0, prev_txid=prev_txid, prev_vout=prev_vout), True
    prevout = assert_dict(require(d, "prevout", p), _at(p, "prevout"))
    q = _at(p, "prevout")
    value = assert_sats(require(prevout, "value", q), _at(q, "value"))
    address = prevout.get("scriptpubkey_address")
    if address is not None:
        address = assert_address(address, _at(q, "scriptpubkey_address"))
    return TxInput(address=address, value=value, prev_txid=prev_txid, prev_vout=prev_vout), False


def _parse_output(obj: Any, p: str, n: int) -> TxOutput:
    d = assert_dict(obj, p)
    value = assert_sats(require(d, "value", p), _at(p, "value"))
    address = d.get("scriptpubkey_address")  # absent for OP_RETURN, bare multisig, P2PK, ...
    if address is not None:
        address = assert_address(address, _at(p, "scriptpubkey_address"))
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
    fee = assert_sats(require(d, "fee", prefix), _at(prefix, "fee"))
    status = parse_tx_status(require(d, "status", prefix), _at(prefix, "status"))
    parsed = [_parse_input(x, _at(prefix, f"vin[{i}]")) for i, x in enumerate(vin)]
    inputs = tuple(i for i, _ in parsed)
    is_coinbase = any(cb for _, cb in parsed)
    outputs = tuple(_parse_output(x, _at(prefix, f"vout[{n}]"), n) for n, x in enumerate(vout))
    if not is_coinbase:
        total_in, total_out = sum(i.value for i in inputs), sum(o.value for o in outputs)
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

    :raises MalformedError: naming the element, e.g. `txs[3].vin[0].prevout: missing`.
    """
    items = assert_list(obj, prefix)
    return [parse_tx(x, chain=chain, prefix=f"{prefix}[{i}]") for i, x in enumerate(items)]


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
        assert_int(require(d, key, p), _at(p, key), minimum=0)
    tx_count = assert_int(require(d, "tx_count", p), _at(p, "tx_count"), minimum=0)
    # Sums over the address's whole history can exceed MAX_MONEY (coins move in and out many times).
    funded = assert_int(require(d, "funded_txo_sum", p), _at(p, "funded_txo_sum"), minimum=0)
    spent = assert_int(require(d, "spent_txo_sum", p), _at(p, "spent_txo_sum"), minimum=0)
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
    return AddressStats(address, c_count, c_funded, c_spent, m_count, m_funded, m_spent)


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


def parse_outspends(obj: Any) -> list[Outspend]:
    """Esplora `/tx/:txid/outspends` → one Outspend per output, in output order. :raises MalformedError:"""
    out = []
    for i, x in enumerate(assert_list(obj, "outspends")):
        p = f"outspends[{i}]"
        d = assert_dict(x, p)
        if not assert_bool(require(d, "spent", p), f"{p}.spent"):
            out.append(Outspend(False))
            continue
        status = parse_tx_status(d["status"], f"{p}.status") if "status" in d else TxStatus(False)
        out.append(
            Outspend(
                True,
                assert_hex(require(d, "txid", p), f"{p}.txid"),
                assert_int(require(d, "vin", p), f"{p}.vin", minimum=0),
                status.block_height,
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
        out[key] = assert_int(require(d, key), key, minimum=0 if key != "version" else None)
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
