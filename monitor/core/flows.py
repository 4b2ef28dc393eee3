"""Entity flows: what one ChainTx did to each tracked entity it touches (pure, no I/O).

For an entity E and a tx: `spent` is the value of E's inputs; E's own outputs are `change` up to what
E spent net of its fee share, and anything beyond that is `received` (E got more than it put in, as in
a payout or a co-spend); `out` = spent − change − fee_share is what left E. A consolidation or a spend
back to E's own addresses therefore has out == 0. A tx touching two tracked entities yields a flow for
each. The fee is shared pro rata to inputs, so a sole spender bears all of it.

An output to a *provisional* address of E (a sweep's destination, watched until its behaviour says
whether it is E's or an exchange deposit) is never change of a spend by E: it stays a destination
(attributed `self` by attribution), so the sweep keeps its outflow and can become a sale if the address
turns out to be a deposit. Coins arriving there from others are E's receipts, as for any of E's addresses.
"""

from __future__ import annotations

from monitor.core.registry import Registry
from monitor.model import ChainTx, Destination, EntityFlow

__all__ = ["entity_flows"]


def entity_flows(tx: ChainTx, registry: Registry) -> list[EntityFlow]:
    """Flows of every tracked entity touched by `tx`, in order of first appearance."""
    owners_in: list[str | None] = []
    owners_out: list[str | None] = []
    order: list[str] = []
    for io, owners in ((tx.inputs, owners_in), (tx.outputs, owners_out)):
        for item in io:
            e = registry.entity_of(tx.chain, item.address)
            name = e.name if e is not None and registry.is_tracked(e) else None
            owners.append(name)
            if name is not None and name not in order:
                order.append(name)

    total_in = tx.total_in
    flows: list[EntityFlow] = []
    provisional = [
        registry.is_provisional(tx.chain, o.address) if w is not None else False for o, w in zip(tx.outputs, owners_out)
    ]
    for name in order:
        spent = sum(i.value for i, o in zip(tx.inputs, owners_in) if o == name)
        # a spend by E: its outputs to provisional addresses are destinations, not change
        mine = [w == name and not (spent and p) for w, p in zip(owners_out, provisional)]
        own_out = sum(o.value for o, m in zip(tx.outputs, mine) if m)
        if spent == 0:
            fee_share = change = out = 0
            received = own_out
            destinations: tuple[Destination, ...] = ()
        else:
            fee_share = tx.fee if spent == total_in else tx.fee * spent // total_in
            change = min(own_out, spent - fee_share)
            received = own_out - change
            out = spent - fee_share - change
            destinations = (
                tuple(
                    Destination(address=o.address, value=o.value, n=o.n)
                    for o, m in zip(tx.outputs, mine)
                    if not m and o.value > 0
                )
                if out > 0
                else ()
            )
        if out == 0 and received == 0 and change == 0:
            continue  # only paid a fee (e.g. the gas of an EVM token transfer, reported on its own)
        flows.append(
            EntityFlow(
                chain=tx.chain,
                txid=tx.txid,
                entity=name,
                block_height=tx.block_height,
                block_time=tx.block_time,
                spent=spent,
                change=change,
                received=received,
                fee_share=fee_share,
                out=out,
                destinations=destinations,
                asset=tx.asset,
                decimals=tx.decimals,
            )
        )
    return flows
