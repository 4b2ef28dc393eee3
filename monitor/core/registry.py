"""Entities and the address → entity index, built once and read on every transaction.

The index is a plain dict keyed by (chain, normalised address); lookups are O(1) whatever the number of
watched addresses, which is what lets block mode match a whole block against a large address set.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace

from monitor.model import Entity, EntityAddress, Fact, normalise_address

__all__ = ["Registry", "normalise_address", "merge_entities"]

_FIGURES = ("holdings_btc", "monthly_production_btc", "cash_cost_usd", "efficiency_j_th")
#: Entity kinds whose own flows are classified; the others are counterparties (labels only).
TRACKED_KINDS = frozenset({"miner", "sovereign", "other"})


class Registry:
    """All known entities and which of them owns an address."""

    def __init__(self, entities: Iterable[Entity]):
        self.entities: dict[str, Entity] = {}
        self._index: dict[tuple[str, str], str] = {}
        for e in entities:
            if e.name in self.entities:
                raise ValueError(f"entity {e.name!r} is defined twice")
            self.entities[e.name] = e
            for a in e.addresses:
                key = (a.chain, normalise_address(a.chain, a.address))
                owner = self._index.get(key)
                if owner is not None and owner != e.name:
                    raise ValueError(f"address {a.address} ({a.chain}) belongs to both {owner!r} and {e.name!r}")
                self._index[key] = e.name

    def __contains__(self, name: str) -> bool:
        return name in self.entities

    def get(self, name: str) -> Entity:
        """The entity called `name`.

        :raises KeyError: when there is none.
        """
        return self.entities[name]

    def entity_of(self, chain: str, address: str | None) -> Entity | None:
        """The entity owning an address, or None."""
        if not address:
            return None
        name = self._index.get((chain, normalise_address(chain, address)))
        return self.entities[name] if name is not None else None

    def is_tracked(self, entity: Entity) -> bool:
        """Whether an entity's own flows are classified (miners, sovereigns), not only used as a label."""
        return entity.watch and entity.kind in TRACKED_KINDS

    def tracked(self) -> list[Entity]:
        """Entities whose flows are watched and classified."""
        return [e for e in self.entities.values() if self.is_tracked(e)]

    def watched_addresses(self, chain: str) -> list[str]:
        """Addresses of tracked entities on a chain, in a stable order."""
        out: list[str] = []
        for e in self.tracked():
            out.extend(a.address for a in e.addresses if a.chain == chain)
        return out

    def address_record(self, chain: str, address: str) -> EntityAddress | None:
        """The EntityAddress (with source and how it was learned) for an address, or None."""
        e = self.entity_of(chain, address)
        if e is None:
            return None
        key = normalise_address(chain, address)
        return next((a for a in e.addresses if a.chain == chain and normalise_address(chain, a.address) == key), None)

    def is_provisional(self, chain: str, address: str | None) -> bool:
        """Whether an address is watched provisionally (a sweep's destination not decided yet)."""
        if not address or self.entity_of(chain, address) is None:
            return False
        rec = self.address_record(chain, address)
        return rec is not None and rec.learned_by == "provisional"

    def replacing(self, chain: str, address: str, new: EntityAddress | None) -> Registry:
        """A new registry where the owner's record of `address` is replaced by `new` (None: removed)."""
        e = self.entity_of(chain, address)
        if e is None:
            return self
        key = normalise_address(chain, address)
        kept = tuple(a for a in e.addresses if not (a.chain == chain and normalise_address(chain, a.address) == key))
        updated = replace(e, addresses=kept + ((new,) if new is not None else ()))
        return Registry(updated if x.name == e.name else x for x in self.entities.values())

    def with_addresses(self, name: str, addresses: Iterable[EntityAddress]) -> Registry:
        """A new registry where entity `name` also owns `addresses` (learned by clustering, import, ...)."""
        e = self.entities[name]
        known = {(a.chain, normalise_address(a.chain, a.address)) for a in e.addresses}
        extra = tuple(a for a in addresses if (a.chain, normalise_address(a.chain, a.address)) not in known)
        if not extra:
            return self
        updated = replace(e, addresses=e.addresses + extra)
        return Registry(updated if x.name == name else x for x in self.entities.values())


def merge_entities(base: Iterable[Entity], overrides: Iterable[Entity]) -> list[Entity]:
    """Entities of `base` with `overrides` merged on top by name.

    An override adds its addresses to the base entity's and keeps the base's kind unless it names one;
    an override with a new name is added as is. A dated figure it sets joins the base's dated series
    (replacing the base's point of the same date), so the point in force at each time stays the right
    one; an undated figure (a bare number in config.toml) replaces the whole series.
    """
    merged: dict[str, Entity] = {e.name: e for e in base}
    for o in overrides:
        b = merged.get(o.name)
        if b is None:
            merged[o.name] = o
            continue
        have = {(a.chain, normalise_address(a.chain, a.address)) for a in b.addresses}
        addrs = b.addresses + tuple(a for a in o.addresses if (a.chain, normalise_address(a.chain, a.address)) not in have)
        bp, op = b.profile, o.profile
        newest: dict[str, Fact | None] = {}
        earlier: list[tuple[str, Fact]] = []
        for figure in _FIGURES:
            given = op.series(figure)
            if any(not f.as_of for f in given):
                points = list(given)
            else:
                by_date = {f.as_of: f for f in bp.series(figure)}
                by_date.update({f.as_of: f for f in given})
                points = sorted(by_date.values(), key=lambda f: f.as_of)
            newest[figure] = points[-1] if points else None
            earlier += [(figure, f) for f in points[:-1]]
        profile = replace(
            bp,
            **newest,
            strategy_tags=op.strategy_tags or bp.strategy_tags,
            strategy_source=op.strategy_source or bp.strategy_source,
            earlier=tuple(earlier),
        )
        merged[o.name] = replace(b, kind=o.kind or b.kind, addresses=addrs, profile=profile, note=o.note or b.note, watch=o.watch)
    return list(merged.values())
