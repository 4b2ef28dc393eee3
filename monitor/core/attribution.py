"""Attribution: who each destination of an entity flow belongs to (pure).

A destination owned by a known counterparty becomes `exchange:<name>`, `otc:<name>` or
`custodian:<name>`; one owned by another tracked miner or sovereign becomes `entity:<name>`; one owned
by the flow's own entity is `self`; anything else is `unknown` until hop tracing attributes it.
"""

from __future__ import annotations

from dataclasses import replace

from monitor.core.registry import Registry
from monitor.model import Attribution, EntityFlow

__all__ = ["attribute", "attribute_address"]

_COUNTERPARTY_KINDS = frozenset({"exchange", "otc", "custodian"})


def attribute_address(chain: str, address: str | None, entity: str, registry: Registry) -> Attribution:
    """Attribution of one address as seen from `entity`."""
    owner = registry.entity_of(chain, address)
    if owner is None:
        return Attribution("unknown")
    if owner.name == entity:
        return Attribution("self")
    if owner.kind in _COUNTERPARTY_KINDS:
        return Attribution(owner.kind, owner.name)
    return Attribution("entity", owner.name)


def attribute(flow: EntityFlow, registry: Registry) -> EntityFlow:
    """The flow with every destination attributed; traced attributions (with a path) are kept."""
    if not flow.destinations:
        return flow  # an inflow: nothing to attribute (a backfill has thousands; `replace` is not free)
    dests = tuple(
        d if d.attribution.path else replace(d, attribution=attribute_address(flow.chain, d.address, flow.entity, registry))
        for d in flow.destinations
    )
    return replace(flow, destinations=dests)
