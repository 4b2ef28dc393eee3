"""Builders for test data: sourced-looking entities and hand-made ChainTx with defaults."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from monitor.model import ChainTx, Entity, EntityAddress, TxInput, TxOutput
from watchers.addresses import script_to_address


def addr(label: str, kind: str = "p2wpkh") -> str:
    """A valid mainnet address derived from a label (test data only, owned by nobody)."""
    h = hashlib.sha256(label.encode()).digest()
    if kind == "p2wpkh":
        return script_to_address(b"\x00\x14" + h[:20])
    if kind == "p2pkh":
        return script_to_address(b"\x76\xa9\x14" + h[:20] + b"\x88\xac")
    if kind == "p2sh":
        return script_to_address(b"\xa9\x14" + h[:20] + b"\x87")
    if kind == "p2tr":
        return script_to_address(b"\x51\x20" + h)
    raise ValueError(kind)


def entity(name: str, kind: str = "miner", addresses: Sequence[str] = (), **kw) -> Entity:
    """An entity whose addresses are labelled as test data."""
    return Entity(
        name=name,
        kind=kind,
        addresses=tuple(EntityAddress("bitcoin", a, source="test fixture", learned_by="config") for a in addresses),
        **kw,
    )


def make_tx(
    inputs: Sequence[tuple[str | None, int]],
    outputs: Sequence[tuple[str | None, int]],
    *,
    fee: int | None = None,
    height: int | None = 880_000,
    time: int | None = 1_772_611_200,
    txid: str | None = None,
    chain: str = "bitcoin",
) -> ChainTx:
    """A ChainTx from (address, sats) pairs; the fee defaults to inputs − outputs."""
    ins = tuple(TxInput(a, v, prev_txid=hashlib.sha256(f"{a}{v}{k}".encode()).hexdigest(), prev_vout=k) for k, (a, v) in enumerate(inputs))
    outs = tuple(TxOutput(a, v, n) for n, (a, v) in enumerate(outputs))
    if fee is None:
        fee = sum(v for _, v in inputs) - sum(v for _, v in outputs)
    if txid is None:
        txid = hashlib.sha256(repr((ins, outs, height)).encode()).hexdigest()
    return ChainTx(chain, txid, height, time if height is not None else None, ins, outs, fee, block_hash=("00" * 32 if height is not None else None))
