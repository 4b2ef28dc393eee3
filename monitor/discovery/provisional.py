"""Provisional addresses: a sweep's fresh destination, watched at once and decided by its later behaviour.

A confirmed tx whose inputs are all one tracked entity's and whose every output (at most `MAX_SWEEP_OUTPUTS`)
goes to an unattributed address, with no change, is the textbook consolidation to cold storage — and exactly what a
payment of whole coins to an exchange deposit address looks like at that moment. So the destination is
neither ignored nor believed (the clustering literature's "what else looks like this": Meiklejohn et al.
2013 §4.2 on change and one-output heuristics; exchange deposit sweeps as described by Victor 2020,
"Address clustering heuristics for Ethereum", and for Bitcoin exchange wallets by Ermilov et al. 2017):

- `find_sweeps` proposes each destination as a *provisional* address of the entity, with the sweep tx as
  evidence. Freshness is not checked with a request per output: whatever the address's past, its later
  behaviour decides, and its whole history is read once it is watched. It is watched at once (a newly watched address has its whole history read, so a sale from one
  of its older coins is seen), flows from it are classified as the entity's and labelled provisional, and
  the sweep itself reads "probable consolidation; watching the destination" (verdict `internal`).
- `judge_spends` decides from the address's later spends (confirmed txs only):
  * spent together with the entity's own (non-provisional) inputs, or paying change back to itself or to
    the entity → **confirmed**: the entity's (`learned_by = sweep`, status active);
  * spent together with inputs of unrelated addresses (an exchange sweeping many deposits into its
    wallet), or emptied without change into one known exchange's or OTC desk's wallet → **deposit**: the
    address is rejected and the sweep flow is re-attributed to that counterparty (`exchange:<name>`, or
    `exchange:unidentified` when the sweep's target is unlabelled) and becomes a sale, with one update;
  * anything else (e.g. paying an unattributed address with no change) decides nothing: the spend is
    classified as the entity's, labelled provisional, and hop tracing follows it.
- `monitor.discovery.addressbook.settle_provisional` (the discovery job) confirms an address whose swept coins sat unspent for `settle_days`.
"""

from __future__ import annotations

from collections.abc import Container, Iterable
from dataclasses import dataclass, replace

from monitor.clock import iso
from monitor.core.registry import Registry, normalise_address
from monitor.model import Attribution, ChainTx, EntityAddress

__all__ = [
    "MAX_SWEEP_OUTPUTS",
    "Sweep",
    "Judgement",
    "find_sweeps",
    "judge_spends",
    "apply_provisional",
    "provisional_inputs",
]

#: A sweep pays at most this many outputs (consolidations pay one; a split into a few cold wallets, more).
MAX_SWEEP_OUTPUTS = 3
_SALE = frozenset({"exchange", "otc"})


@dataclass(frozen=True)
class Sweep:
    """One destination of an entity's sweep, proposed as a provisional address of that entity."""

    entity: str
    chain: str
    txid: str
    n: int
    address: str
    value: int
    block_height: int | None
    block_time: int | None

    def entity_address(self) -> EntityAddress:
        """The address as the registry holds it while undecided."""
        return EntityAddress(
            self.chain,
            self.address,
            source=f"swept to by {self.entity}'s tx {self.txid}",
            learned_by="provisional",
            as_of=iso(self.block_time)[:10] if self.block_time else "",
            evidence=self.txid,
        )


@dataclass(frozen=True)
class Judgement:
    """What a provisional address's spend decided: `confirmed` (the entity's) or `deposit` (an exchange's)."""

    entity: str
    chain: str
    address: str
    outcome: str  # confirmed | deposit
    txid: str
    reason: str
    attribution: Attribution | None = None  # for a deposit: the counterparty the coins went to


def find_sweeps(txs: Iterable[ChainTx], registry: Registry, *, rejected: Container[tuple[str, str]] = frozenset()) -> list[Sweep]:
    """Destinations of confirmed sweeps (see the module docstring) not owned or rejected yet."""
    out: list[Sweep] = []
    seen: set[tuple[str, str]] = set()
    for tx in txs:
        if tx.chain != "bitcoin" or tx.is_coinbase or not tx.is_confirmed or not tx.inputs:
            continue
        owners = {e.name if e is not None else None for e in (registry.entity_of(tx.chain, i.address) for i in tx.inputs)}
        if len(owners) != 1 or None in owners:
            continue
        (name,) = owners
        if not registry.is_tracked(registry.get(name)):
            continue
        outs = [o for o in tx.outputs if o.address is not None and o.value > 0]
        if not outs or len(outs) > MAX_SWEEP_OUTPUTS or len(outs) != len([o for o in tx.outputs if o.value > 0]):
            continue
        keys = [(tx.chain, normalise_address(tx.chain, o.address or "")) for o in outs]
        if any(registry.entity_of(tx.chain, o.address) is not None or k in rejected for o, k in zip(outs, keys)):
            continue
        for o, k in zip(outs, keys):
            if k not in seen:
                seen.add(k)
                out.append(Sweep(name, tx.chain, tx.txid, o.n, k[1], o.value, tx.block_height, tx.block_time))
    return out


def _judge(tx: ChainTx, address: str, entity: str, registry: Registry) -> Judgement | None:
    chain = tx.chain
    key = normalise_address(chain, address)
    others = [i.address for i in tx.inputs if normalise_address(chain, i.address or "") != key]
    owner_names = [e.name if e is not None else None for e in (registry.entity_of(chain, a) for a in others)]
    strangers = [a for a, o in zip(others, owner_names) if o != entity]
    outs = [o for o in tx.outputs if o.address is not None and o.value > 0]
    owners = [registry.entity_of(chain, o.address) for o in outs]
    targets = list(dict.fromkeys((e.kind, e.name) for e in owners if e is not None and e.kind in _SALE))
    if strangers:
        att = Attribution(*targets[0]) if len(targets) == 1 else Attribution("exchange", "unidentified")
        return Judgement(
            entity,
            chain,
            address,
            "deposit",
            tx.txid,
            f"spent in {tx.txid} together with {len(strangers)} unrelated input(s): an exchange sweeping "
            "deposits, so it was a deposit address",
            att,
        )
    if others and any(not registry.is_provisional(chain, a) for a in others):
        return Judgement(entity, chain, address, "confirmed", tx.txid, f"co-spent with {entity}'s own inputs in {tx.txid}")
    back = [
        o
        for o, e in zip(outs, owners)
        if e is not None
        and e.name == entity
        and (normalise_address(chain, o.address or "") == key or not registry.is_provisional(chain, o.address))
    ]
    if back:
        return Judgement(
            entity, chain, address, "confirmed", tx.txid, f"spent in {tx.txid} with change back to {entity} ({back[0].address})"
        )
    if len(targets) == 1 and all(e is not None and (e.kind, e.name) == targets[0] for e in owners):
        return Judgement(
            entity,
            chain,
            address,
            "deposit",
            tx.txid,
            f"emptied into {targets[0][0]}:{targets[0][1]}'s wallet in {tx.txid} without change: "
            "a deposit address swept by its exchange",
            Attribution(*targets[0]),
        )
    return None


def judge_spends(txs: Iterable[ChainTx], registry: Registry) -> list[Judgement]:
    """What confirmed spends from provisional addresses decide (first decisive spend per address, in order)."""
    out: list[Judgement] = []
    decided: set[str] = set()
    for tx in txs:
        if tx.chain != "bitcoin" or not tx.is_confirmed:
            continue
        for i in tx.inputs:
            if not registry.is_provisional(tx.chain, i.address) or i.address in decided:
                continue
            owner = registry.entity_of(tx.chain, i.address)
            j = _judge(tx, i.address or "", owner.name, registry) if owner is not None else None
            if j is not None:
                decided.add(j.address)
                out.append(j)
    return out


def apply_provisional(registry: Registry, sweeps: Iterable[Sweep] = (), judgements: Iterable[Judgement] = ()) -> Registry:
    """The registry with new provisional addresses added, confirmed ones made ordinary, deposits removed."""
    for s in sweeps:
        registry = registry.with_addresses(s.entity, [s.entity_address()])
    for j in judgements:
        rec = registry.address_record(j.chain, j.address)
        if rec is None:
            continue
        registry = registry.replacing(j.chain, j.address, replace(rec, learned_by="sweep") if j.outcome == "confirmed" else None)
    return registry


def provisional_inputs(tx: ChainTx | None, entity: str, registry: Registry) -> tuple[EntityAddress, ...]:
    """The entity's provisional addresses among a tx's inputs (their flows are labelled provisional)."""
    if tx is None:
        return ()
    out: dict[str, EntityAddress] = {}
    for i in tx.inputs:
        if registry.is_provisional(tx.chain, i.address):
            owner = registry.entity_of(tx.chain, i.address)
            rec = registry.address_record(tx.chain, i.address or "")
            if owner is not None and owner.name == entity and rec is not None:
                out[rec.address] = rec
    return tuple(out.values())
