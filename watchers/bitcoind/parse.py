"""Bitcoin Core JSON → the model's dataclasses: verbose txs (getblock 3, getrawtransaction), headers, amounts.

Pure functions, no I/O. Amounts: Core writes BTC as JSON numbers (`0.00012000`). Replies are decoded with
`json.loads(text, parse_float=Decimal)` (`watchers.bitcoind.rpc`) and converted exactly here: value × 10^8
must be a whole number of satoshis (0 to 21M BTC) or the answer is a `MalformedError` naming the field.
No float ever holds an amount.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from monitor.model import ChainTx, MalformedError, TxInput, TxOutput
from watchers.validate import (
    MAX_MONEY,
    NULL_TXID,
    assert_address,
    assert_dict,
    assert_hex,
    assert_int,
    assert_list,
    require,
)

__all__ = [
    "Header",
    "NULL_TXID",
    "address_of",
    "btc_to_sats",
    "format_core_version",
    "parse_core_tx",
    "parse_header",
    "show",
]

COINBASE_VOUT = 0xFFFFFFFF
MAX_U32 = 2**32 - 1


def show(value: Any) -> str:
    """A value as shown in an error message: its repr, cut at 60 characters."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def format_core_version(version: int) -> str:
    """Core's integer version as released: 240100 → '24.1', 220000 → '22.0', 210100 → '0.21.1'."""
    major, minor, patch = version // 10000, version // 100 % 100, version % 100
    text = f"0.{major}.{minor}" if major < 22 else f"{major}.{minor}"
    return text + (f".{patch}" if patch else "")


def btc_to_sats(value: Any, field_name: str) -> int:
    """A Core amount (BTC as a JSON number, parsed as Decimal or int) → integer satoshis, exactly.

    :raises MalformedError: not a number, a float (lost precision), not a whole number of satoshis, or
        outside 0..21M BTC.
    """
    if isinstance(value, bool) or not isinstance(value, (int, Decimal)):
        what = "a float (amounts must be parsed exactly)" if isinstance(value, float) else show(value)
        raise MalformedError(f"{field_name}: expected an amount in BTC (a JSON number), got {what}")
    try:
        sats = Decimal(value).scaleb(8)
        if not sats.is_finite() or sats != sats.to_integral_value():
            raise MalformedError(f"{field_name}: {value} BTC is not a whole number of satoshis")
    except InvalidOperation as exc:
        raise MalformedError(f"{field_name}: {value} is not a valid amount") from exc
    n = int(sats)
    if not 0 <= n <= MAX_MONEY:
        raise MalformedError(f"{field_name}: {value} BTC is outside 0..21,000,000 BTC")
    return n


def field_path(prefix: str, name: str) -> str:
    """`prefix.name`, or `name` at the top level."""
    return f"{prefix}.{name}" if prefix else name


def _txout_fields(obj: Any, p: str) -> tuple[int, str | None]:
    """(sats, address or None) of an output-like object: a vout entry, a prevout or a gettxout answer."""
    d = assert_dict(obj, p)
    value = btc_to_sats(require(d, "value", p), field_path(p, "value"))
    spk = assert_dict(require(d, "scriptPubKey", p), field_path(p, "scriptPubKey"))
    address = spk.get("address")
    if address is None:
        legacy = spk.get("addresses")  # Core before 22.0 (never a watched spend here, but parse it right)
        if isinstance(legacy, list) and len(legacy) == 1:
            address = legacy[0]
    if address is not None:
        address = assert_address(address, field_path(p, "scriptPubKey.address"))
    return value, address


def parse_core_tx(
    obj: Any,
    *,
    chain: str = "bitcoin",
    prefix: str = "tx",
    block: tuple[int, str, int] | None = None,
    prevouts: Mapping[tuple[str, int], Any] | None = None,
) -> ChainTx:
    """A Core verbose tx object (getblock 3 / getrawtransaction) → ChainTx with exact satoshis.

    `block` is (height, hash, time) when confirmed. Input prevouts come from the object's `prevout`
    (getblock 3) or else from `prevouts[(txid, vout)]` (a vout entry or gettxout answer).
    :raises MalformedError: naming the field, e.g. `tx[3].vin[0].prevout: missing`.
    """
    d = assert_dict(obj, prefix)
    txid = assert_hex(require(d, "txid", prefix), field_path(prefix, "txid"))
    vin = assert_list(require(d, "vin", prefix), field_path(prefix, "vin"), non_empty=True)
    vout = assert_list(require(d, "vout", prefix), field_path(prefix, "vout"), non_empty=True)
    inputs: list[TxInput] = []
    coinbase = False
    for j, x in enumerate(vin):
        q = f"{prefix}.vin[{j}]"
        x = assert_dict(x, q)
        if "coinbase" in x:
            if len(vin) != 1:
                raise MalformedError(f"{q}.coinbase: a coinbase tx has exactly one input, this one has {len(vin)}")
            coinbase = True
            inputs.append(TxInput(address=None, value=0, prev_txid=NULL_TXID, prev_vout=COINBASE_VOUT))
            continue
        prev_txid = assert_hex(require(x, "txid", q), f"{q}.txid")
        prev_n = assert_int(require(x, "vout", q), f"{q}.vout", minimum=0, maximum=MAX_U32)
        prev = x.get("prevout")
        if prev is None and prevouts is not None:
            prev = prevouts.get((prev_txid, prev_n))
        if prev is None:
            raise MalformedError(f"{q}.prevout: missing")
        value, address = _txout_fields(prev, f"{q}.prevout")
        inputs.append(TxInput(address=address, value=value, prev_txid=prev_txid, prev_vout=prev_n))
    outputs: list[TxOutput] = []
    for n, x in enumerate(vout):
        q = f"{prefix}.vout[{n}]"
        value, address = _txout_fields(x, q)
        if "n" in x and assert_int(x["n"], f"{q}.n", minimum=0) != n:
            raise MalformedError(f"{q}.n: expected {n}, got {show(x['n'])}")
        outputs.append(TxOutput(address=address, value=value, n=n))
    total_out = sum(o.value for o in outputs)
    if coinbase:
        fee = 0
    else:
        total_in = sum(i.value for i in inputs)
        fee = total_in - total_out
        if fee < 0:
            raise MalformedError(
                f"{field_path(prefix, 'vin')}: inputs hold {total_in} sat, less than the outputs' {total_out} sat (txid {txid})"
            )
        if "fee" in d:
            stated = btc_to_sats(d["fee"], field_path(prefix, "fee"))
            if stated != fee:
                raise MalformedError(
                    f"{field_path(prefix, 'fee')}: expected inputs - outputs = {fee} sat, got {stated} sat (txid {txid})"
                )
    height, block_hash, block_time = block if block is not None else (None, None, None)
    return ChainTx(
        chain=chain,
        txid=txid,
        block_height=height,
        block_time=block_time,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        fee=fee,
        block_hash=block_hash,
        is_coinbase=coinbase,
    )


@dataclass(frozen=True)
class Header:
    """The header fields a poll needs."""

    hash: str
    height: int
    time: int
    prev: str | None
    confirmations: int


def parse_header(d: dict, p: str) -> Header:
    """A block header object (getblock) → Header. :raises MalformedError: naming the field"""
    prev = d.get("previousblockhash")
    return Header(
        hash=assert_hex(require(d, "hash", p), field_path(p, "hash")),
        height=assert_int(require(d, "height", p), field_path(p, "height"), minimum=0),
        time=assert_int(require(d, "time", p), field_path(p, "time"), minimum=0),
        prev=None if prev is None else assert_hex(prev, field_path(p, "previousblockhash")),
        confirmations=assert_int(require(d, "confirmations", p), field_path(p, "confirmations"), minimum=-1),
    )


def address_of(obj: Any) -> str | None:
    """The address of an output-like object (vout entry, prevout), without validation (matching only)."""
    if not isinstance(obj, dict):
        return None
    spk = obj.get("scriptPubKey")
    if not isinstance(spk, dict):
        return None
    a = spk.get("address")
    return a if isinstance(a, str) else None
