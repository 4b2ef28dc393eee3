"""Balance reconciliation: how much of an entity's reported holdings its known addresses show on chain.

The on-chain side is the latest stored balance snapshot of each active address (every poll records one
per watched address); the reported side is the entity's `holdings_btc` fact with its source and date.
The gap is what the monitor cannot see yet — addresses not known, custody accounts, loaned or pledged
coins — and is printed as "we see 31% of MARA's reported 52,850 BTC".
"""

from __future__ import annotations

from dataclasses import dataclass

from monitor.bundled import short_source
from monitor.core.registry import Registry
from monitor.model import SATS_PER_BTC, Entity, Fact, format_btc
from storage import Store
from storage.discovery import latest_btc_balances

__all__ = ["Reconciliation", "reconcile", "reconcile_store", "format_btc_amount"]


@dataclass(frozen=True)
class Reconciliation:
    """On-chain balance of an entity's known addresses against its reported holdings."""

    entity: str
    addresses: int  # active bitcoin addresses known
    addresses_seen: int  # of which a balance snapshot exists
    seen_sat: int
    reported: Fact | None  # holdings_btc, with source and as-of date
    seen_at: int | None = None  # newest snapshot time used

    @property
    def reported_sat(self) -> int | None:
        return None if self.reported is None else round(self.reported.value * SATS_PER_BTC)

    @property
    def share(self) -> float | None:
        """Seen / reported (None without a positive reported figure)."""
        rep = self.reported_sat
        return None if not rep else self.seen_sat / rep

    @property
    def gap_sat(self) -> int | None:
        """Reported minus seen (negative when the chain shows more than reported)."""
        rep = self.reported_sat
        return None if rep is None else rep - self.seen_sat

    def sentence(self) -> str:
        """One line for the `entities` table, `entities show` and the report."""
        seen = format_btc_amount(self.seen_sat)
        where = f"{seen} BTC on {self.addresses_seen} of {self.addresses} known address(es)"
        if self.reported is None:
            return f"we see {where}; no reported holdings figure to compare"
        rep = f"{self.reported.value:,.0f}" if self.reported.value == int(self.reported.value) else f"{self.reported.value:,}"
        src = f" (as of {self.reported.as_of}, {short_source(self.reported)})"
        if not self.reported_sat:
            return f"we see {where}; {self.entity} reported {rep} BTC{src}"
        return f"we see {self.share:.0%} of {self.entity}'s reported {rep} BTC{src}: {where}"


def format_btc_amount(sats: int) -> str:
    """BTC with thousands separators and trailing zeros trimmed to at least two decimals (`16,383.50`)."""
    whole, _, frac = format_btc(sats).partition(".")
    neg = whole.startswith("-")
    body = f"{int(whole.lstrip('-')):,}"
    frac = frac.rstrip("0")
    frac = (frac + "00")[: max(2, len(frac))]
    return f"{'-' if neg else ''}{body}.{frac}"


def reconcile(entity: Entity, balances: dict[str, tuple[int, int]], *, addresses: list[str] | None = None) -> Reconciliation:
    """Reconcile one entity from `balances` (address → (confirmed sat, snapshot time)) (pure).

    `addresses` defaults to the entity's bitcoin addresses.
    """
    addrs = addresses if addresses is not None else [a.address for a in entity.addresses if a.chain == "bitcoin"]
    seen = [balances[a] for a in addrs if a in balances]
    return Reconciliation(
        entity=entity.name,
        addresses=len(addrs),
        addresses_seen=len(seen),
        seen_sat=sum(v for v, _ in seen),
        reported=entity.profile.holdings_btc,
        seen_at=max((t for _, t in seen), default=None),
    )


def reconcile_store(store: Store, registry: Registry, names: list[str] | None = None) -> list[Reconciliation]:
    """Reconciliation of tracked entities (or `names`) from the latest stored balance snapshots."""
    balances = latest_btc_balances(store)
    entities = [registry.get(n) for n in names] if names is not None else registry.tracked()
    return [reconcile(e, balances) for e in entities]
