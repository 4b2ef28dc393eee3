"""Co-spend clustering and change heuristics: which unknown addresses a tx proves or suggests are an entity's (pure).

Common-input-ownership: the inputs of one transaction are signed together, so when a confirmed tx spends
inputs of a tracked entity together with inputs of addresses nobody owns, those addresses are the
entity's. The tx is the evidence (`EntityAddress.learned_by = "cospend"`, `evidence = txid`).

Known exceptions are not merged but returned as flags:
- `coinjoin`: CoinJoin-shaped — at least `COINJOIN_MIN_EQUAL` outputs of one identical value (Wasabi,
  Whirlpool and JoinMarket mixes look like this); its inputs belong to many people.
- `mixed_entities`: inputs of two known entities (two treasuries, or a treasury and an exchange): either
  the labels are wrong or the tx is collaborative; merging would fuse two entities.
Mempool txs are not used: evidence must stay on chain. A rejected address is never learned again. A
provisional address (a sweep's destination, monitor.discovery.provisional) proves nothing: an exchange sweeping
deposits co-spends it with strangers' coins.

Change heuristics (`change_marks`) name likely change outputs of a spend funded only by one entity. Each
heuristic votes for one output only when it singles it out among the tx's outputs:
- `same_script_type`: the only output whose script type equals the inputs' (single) script type;
- `non_round_amount`: the only output whose value is not a multiple of 0.001 BTC (100,000 sat) when
  the others are (payments tend to be round, change is what is left);
- `fresh_address`: the only output address never seen before this tx (needs the caller's `seen` set).
They are weaker than co-spend: `learn_from_txs` returns them as marks, and proposes an output as a
*candidate* (never active) only when `CHANGE_MIN_VOTES` heuristics agree.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Container, Iterable
from dataclasses import dataclass, field

from monitor.core.facts import day_of
from monitor.core.registry import Registry, normalise_address
from monitor.model import ChainTx, EntityAddress

__all__ = [
    "COINJOIN_MIN_EQUAL",
    "ROUND_UNIT_SAT",
    "CHANGE_MIN_VOTES",
    "Learned",
    "Flag",
    "ChangeMark",
    "LearnResult",
    "address_type",
    "coinjoin_shape",
    "change_marks",
    "learn_from_txs",
    "apply_learned",
]

#: Outputs of one identical value that make a tx CoinJoin-shaped.
COINJOIN_MIN_EQUAL = 3
#: A "round" amount is a multiple of this (0.001 BTC).
ROUND_UNIT_SAT = 100_000
#: Change heuristics that must agree before an output is proposed as a candidate address.
CHANGE_MIN_VOTES = 2


@dataclass(frozen=True)
class Learned:
    """An address that joins an entity, how (in `address.learned_by`/`evidence`) and why, in words."""

    entity: str
    address: EntityAddress
    reason: str


@dataclass(frozen=True)
class Flag:
    """A tx whose co-spent inputs were deliberately not merged."""

    chain: str
    txid: str
    entity: str  # the tracked entity (or entities, comma-separated) involved
    kind: str  # coinjoin | mixed_entities
    detail: str


@dataclass(frozen=True)
class ChangeMark:
    """A likely change output of an entity's spend and the heuristics that picked it."""

    chain: str
    txid: str
    entity: str
    n: int
    address: str
    value: int
    heuristics: tuple[str, ...]


@dataclass(frozen=True)
class LearnResult:
    """What a batch of txs taught: learned addresses, flags, change marks and change candidates."""

    learned: tuple[Learned, ...] = ()
    flags: tuple[Flag, ...] = ()
    change: tuple[ChangeMark, ...] = ()
    candidates: tuple[Learned, ...] = field(default=())


def address_type(address: str | None) -> str | None:
    """Script type of an address from its form (p2pkh, p2sh, p2wpkh, p2wsh, p2tr), without decoding it."""
    if not address:
        return None
    a = address.lower()
    for hrp in ("bc1", "tb1", "bcrt1"):
        if a.startswith(hrp):
            body = a[len(hrp) :]
            if body.startswith("q"):
                return "p2wpkh" if len(a) == len(hrp) + 39 else "p2wsh"
            if body.startswith("p"):
                return "p2tr"
            return "witness_unknown"
    if address[0] in "1mn":
        return "p2pkh"
    if address[0] in "32":
        return "p2sh"
    return None


def coinjoin_shape(tx: ChainTx, min_equal: int = COINJOIN_MIN_EQUAL) -> tuple[int, int] | None:
    """(value, count) of the most repeated output value when at least `min_equal` outputs share it, else None."""
    counts = Counter(o.value for o in tx.outputs if o.address is not None and o.value > 0)
    if not counts:
        return None
    value, count = max(counts.items(), key=lambda kv: (kv[1], kv[0]))
    return (value, count) if count >= min_equal and len(tx.inputs) >= 2 else None


def _owner(registry: Registry, extra: dict[tuple[str, str], str], chain: str, address: str | None) -> str | None:
    if not address:
        return None
    e = registry.entity_of(chain, address)
    if e is not None:
        # a provisional address (a sweep's destination) may be an exchange deposit: no proof of ownership
        return None if registry.is_provisional(chain, address) else e.name
    return extra.get((chain, normalise_address(chain, address)))


def change_marks(
    tx: ChainTx,
    entity: str,
    registry: Registry,
    *,
    seen: Container[str] | None = None,
    extra: dict[tuple[str, str], str] | None = None,
) -> list[ChangeMark]:
    """Likely change outputs of `tx` when every input is `entity`'s (see the module docstring)."""
    extra = extra or {}
    if tx.is_coinbase or not tx.inputs:
        return []
    if any(_owner(registry, extra, tx.chain, i.address) != entity for i in tx.inputs):
        return []
    outs = [o for o in tx.outputs if o.address is not None and o.value > 0]
    if len(outs) < 2:
        return []
    unowned = [o for o in outs if _owner(registry, extra, tx.chain, o.address) is None]
    if not unowned:
        return []
    votes: dict[int, list[str]] = {}

    in_types = {address_type(i.address) for i in tx.inputs}
    if len(in_types) == 1 and None not in in_types:
        (t,) = in_types
        same = [o for o in outs if address_type(o.address) == t]
        if len(same) == 1 and same[0] in unowned:
            votes.setdefault(same[0].n, []).append("same_script_type")

    odd = [o for o in outs if o.value % ROUND_UNIT_SAT != 0]
    if len(odd) == 1 and odd[0] in unowned:
        votes.setdefault(odd[0].n, []).append("non_round_amount")

    if seen is not None:
        fresh = [o for o in outs if o.address not in seen]
        if len(fresh) == 1 and fresh[0] in unowned:
            votes.setdefault(fresh[0].n, []).append("fresh_address")

    by_n = {o.n: o for o in outs}
    return [
        ChangeMark(tx.chain, tx.txid, entity, n, by_n[n].address or "", by_n[n].value, tuple(h)) for n, h in sorted(votes.items())
    ]


def learn_from_txs(
    txs: Iterable[ChainTx],
    registry: Registry,
    *,
    rejected: Container[tuple[str, str]] = frozenset(),
    seen: Container[str] | None = None,
    min_equal: int = COINJOIN_MIN_EQUAL,
    change_min_votes: int = CHANGE_MIN_VOTES,
) -> LearnResult:
    """Addresses the txs prove belong to tracked entities (co-spend), flags and change marks.

    Txs are read in order and what is learned from one counts for the next (a chain of co-spends grows
    the cluster within one batch). `rejected` holds (chain, address) pairs never to learn again.
    """
    learned: list[Learned] = []
    flags: list[Flag] = []
    change: list[ChangeMark] = []
    candidates: list[Learned] = []
    extra: dict[tuple[str, str], str] = {}  # learned in this call: (chain, normalised address) → entity
    proposed: set[tuple[str, str]] = set()
    for tx in txs:
        if tx.chain != "bitcoin" or tx.is_coinbase or not tx.is_confirmed or not tx.inputs:
            continue
        owners = [_owner(registry, extra, tx.chain, i.address) for i in tx.inputs]
        known = list(dict.fromkeys(o for o in owners if o is not None))
        tracked = [n for n in known if registry.is_tracked(registry.get(n))]
        if not tracked:
            continue
        unknown = [i.address for i, o in zip(tx.inputs, owners) if o is None and i.address is not None]
        unknown = list(dict.fromkeys(normalise_address(tx.chain, a) for a in unknown))
        when = day_of(tx.block_time) if tx.block_time else ""
        if len(known) > 1:
            flags.append(
                Flag(
                    tx.chain,
                    tx.txid,
                    ", ".join(tracked),
                    "mixed_entities",
                    f"inputs of {len(known)} known entities ({', '.join(known)}) in one tx; "
                    f"{len(unknown)} unknown input address(es) not merged",
                )
            )
            continue
        entity = tracked[0]
        shape = coinjoin_shape(tx, min_equal)
        if unknown and shape is not None:
            value, count = shape
            flags.append(
                Flag(
                    tx.chain,
                    tx.txid,
                    entity,
                    "coinjoin",
                    f"CoinJoin-shaped: {count} outputs of {value} sat, {len(tx.inputs)} inputs; "
                    f"{len(unknown)} co-spent unknown input address(es) not merged",
                )
            )
            continue
        for a in unknown:
            key = (tx.chain, a)
            if key in rejected or key in extra:
                continue
            extra[key] = entity
            learned.append(
                Learned(
                    entity,
                    EntityAddress(
                        tx.chain,
                        a,
                        source=f"co-spent with {entity} inputs in tx {tx.txid}",
                        learned_by="cospend",
                        as_of=when,
                        evidence=tx.txid,
                    ),
                    f"spent together with {entity}'s inputs in {tx.txid} (block {tx.block_height}): common-input-ownership",
                )
            )
        if shape is None:
            marks = change_marks(tx, entity, registry, seen=seen, extra=extra)
            change.extend(marks)
            for m in marks:
                key = (tx.chain, normalise_address(tx.chain, m.address))
                if len(m.heuristics) >= change_min_votes and key not in rejected and key not in extra and key not in proposed:
                    proposed.add(key)
                    candidates.append(
                        Learned(
                            entity,
                            EntityAddress(
                                tx.chain,
                                key[1],
                                source=f"likely change of {entity}'s tx {tx.txid}",
                                learned_by="change",
                                as_of=when,
                                evidence=tx.txid,
                            ),
                            f"output {m.n} of {tx.txid} looks like change ({', '.join(m.heuristics)})",
                        )
                    )
    return LearnResult(tuple(learned), tuple(flags), tuple(change), tuple(candidates))


def apply_learned(registry: Registry, learned: Iterable[Learned]) -> Registry:
    """The registry with learned addresses added to their entities."""
    by_entity: dict[str, list[EntityAddress]] = {}
    for item in learned:
        by_entity.setdefault(item.entity, []).append(item.address)
    for name, addrs in by_entity.items():
        if name in registry:
            registry = registry.with_addresses(name, addrs)
    return registry
