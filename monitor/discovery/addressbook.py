"""The address book: the only owner of an address's lifecycle — add, import, accept, reject, remove, provisional.

Every way an address becomes an entity's, or stops being one, goes through a function here; the CLI
parses and prints, discovery jobs propose, and storage (`storage.discovery`) only persists. A refused
change raises `AddressBookError` whose message says why and what to do instead.

Origins (`learned_by`): `config` and `registry` addresses are fixed (remove them where they are written);
`import` and `manual` ones are removed outright; discovered ones (`cospend`, `pool_payout`, `change`,
`sweep`) are rejected instead, so discovery never adds them again. A rejected address comes back only by
`add` on purpose. Accepting a candidate, like adding, refuses an address another entity already owns.

Import rules (`plan_import` checks everything and writes nothing; `apply_import` writes a checked plan):
- Every address is checked (checksum, format, network) with `watchers.addresses.validate_address`
  against the configured network and stored in canonical form. Any invalid row fails the whole import;
  every problem is reported with its row number (row 1 = the first data row; CSV rows also give the line).
- Duplicates (the same address twice for the same entity in the file, or already known for the entity)
  are reported and skipped.
- Conflicts (one address, two entities: two rows naming different entities, or an address that config,
  the bundled registry, a learned address or a candidate already gives to another entity) are reported;
  they fail the import unless `skip_conflicts` is set, in which case only the conflicting rows are left out.
- An address a user rejected earlier is reported and skipped (`entities add` re-adds it on purpose).
- With `entity` given every row goes to it (a row's own entity column is kept in its label, because
  label exports name companies their own way: "Marathon Digital" for MARA); without it, each row's
  entity column must name a registry entity.
- Writing is one storage transaction: all new rows (learned_by "import", status active, with source,
  label and an evidence row naming file and row) or none.

Provisional addresses (a sweep's fresh destination, see `monitor.discovery.provisional` for the rules
that find and judge them): `commit_provisional` stores them and their decisions inside a tick,
`settle_provisional` confirms the ones whose coins sat unspent long enough.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from monitor.clock import iso
from monitor.core.registry import Registry, normalise_address
from monitor.discovery.labels import LabelImportError, LabelRow
from monitor.discovery.provisional import Judgement, Sweep
from monitor.model import Attribution, EntityAddress, MonitorError
from storage import Store
from storage.discovery import (
    Evidence,
    add_evidence,
    address_row,
    evidence_rows,
    is_outpoint_spent,
    propose_address,
    provisional_rows,
    update_address,
    upsert_address,
)
from watchers.addresses import InvalidAddress, validate_address

__all__ = [
    "AddressBookError",
    "ImportPlan",
    "canonical",
    "check_new_address",
    "known_row",
    "add",
    "remove",
    "accept",
    "reject",
    "plan_import",
    "apply_import",
    "propose",
    "commit_provisional",
    "settle_provisional",
]

_BITCOIN_NAMES = {"bitcoin", "btc", ""}
#: Origins that are written in config.toml or the bundled registry: changed there, never here.
FIXED = frozenset({"config", "registry"})
#: Origins of addresses discovery proposed: removing one rejects it so it is never learned again.
DISCOVERED = frozenset({"cospend", "pool_payout", "change", "sweep"})


class AddressBookError(MonitorError):
    """A change the address book refuses; the message says why."""


@dataclass(frozen=True)
class ImportPlan:
    """What an import would do: the addresses to add per entity and everything reported about the rest."""

    file: str
    to_add: tuple[tuple[str, EntityAddress, int], ...] = ()  # (entity, address, row)
    duplicates: tuple[str, ...] = ()
    conflicts: tuple[str, ...] = ()
    rejected: tuple[str, ...] = ()
    errors: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return not self.errors


def canonical(address: str, network: str) -> str:
    """The canonical form of a Bitcoin address on `network`.

    :raises AddressBookError: when it is not a valid address of that network.
    """
    try:
        return validate_address(address.strip(), network).address
    except InvalidAddress as exc:
        raise AddressBookError(f"{address!r} is not a valid {network} Bitcoin address ({exc})") from exc


def known_row(store: Store, address: str) -> dict[str, Any]:
    """The stored row of a Bitcoin address.

    :raises AddressBookError: when the address is not known.
    """
    row = address_row(store, "bitcoin", address)
    if row is None:
        raise AddressBookError(f"{address} is not a known address")
    return row


def check_new_address(store: Store, registry: Registry, entity: str, chain: str, address: str) -> str | None:
    """Why `address` cannot be given to `entity` (another owner in config, bundled data or storage), or None."""
    owner = registry.entity_of(chain, address)
    if owner is not None and owner.name != entity:
        rec = registry.address_record(chain, address)
        how = f" ({rec.learned_by}: {rec.source})" if rec is not None else ""
        return f"already belongs to {owner.name!r}{how}"
    row = address_row(store, chain, address)
    if row is not None and row["entity"] != entity and row["status"] != "rejected":
        return f"already belongs to {row['entity']!r} ({row['status']}, {row['learned_by']}: {row['source']})"
    return None


def plan_import(
    rows: Iterable[LabelRow],
    *,
    registry: Registry,
    store: Store,
    network: str,
    entity: str | None,
    source: str | None,
    file: str,
    skip_conflicts: bool = False,
) -> ImportPlan:
    """Check every row and decide what to add (nothing is written). See the module docstring for the rules."""
    errors: list[str] = []
    if entity is not None and entity not in registry:
        errors.append(f"--entity {entity!r} is not a known entity (add it to config.toml first)")
    first: dict[str, tuple[str, LabelRow]] = {}  # canonical address → (entity, first row)
    to_add: list[tuple[str, EntityAddress, int]] = []
    dups: list[str] = []
    conflicts: list[str] = []
    rejected: list[str] = []
    conflicting: set[str] = set()
    for r in rows:
        if not r.address:
            errors.append(f"{r.where}: no address")
            continue
        if r.chain.lower() not in _BITCOIN_NAMES:
            errors.append(f"{r.where}: chain {r.chain!r} is not supported by import (bitcoin only)")
            continue
        try:
            canonical = validate_address(r.address, network).address
        except InvalidAddress as exc:
            errors.append(f"{r.where}: {r.address!r} is not a valid {network} Bitcoin address ({exc})")
            continue
        if r.as_of and len(r.as_of) >= 10 and r.as_of[4] == "-":
            as_of = r.as_of[:10]
        elif r.as_of:
            errors.append(f"{r.where}: as_of {r.as_of!r} is not an ISO date (YYYY-MM-DD)")
            continue
        else:
            as_of = ""
        target = entity
        if target is None:
            if not r.entity:
                errors.append(f"{r.where}: no entity column value and no --entity given")
                continue
            if r.entity not in registry:
                errors.append(f"{r.where}: entity {r.entity!r} is not a known entity")
                continue
            target = r.entity
        key = normalise_address("bitcoin", canonical)
        if key in first:
            prev_entity, prev = first[key]
            claimed = r.entity or target
            prev_claimed = prev.entity or prev_entity
            if claimed != prev_claimed:
                conflicts.append(f"{r.where}: {canonical} is given to {claimed!r} here and to {prev_claimed!r} at {prev.where}")
                conflicting.add(key)
            else:
                dups.append(f"{r.where}: {canonical} repeats {prev.where} (skipped)")
            continue
        first[key] = (target, r)
        why = check_new_address(store, registry, target, "bitcoin", canonical)
        if why is not None:
            conflicts.append(f"{r.where}: {canonical} {why}")
            conflicting.add(key)
            continue
        row = address_row(store, "bitcoin", canonical)
        known = registry.entity_of("bitcoin", canonical)
        if row is not None and row["status"] == "rejected":
            rejected.append(
                f"{r.where}: {canonical} was rejected for {row['entity']!r} earlier (skipped; "
                "`entities add` re-adds it on purpose)"
            )
            continue
        if (row is not None and row["status"] == "active") or (known is not None and known.name == target):
            how = row["learned_by"] if row is not None else "config"
            dups.append(f"{r.where}: {canonical} is already {target}'s ({how}; skipped)")
            continue
        label = r.label
        if entity is not None and r.entity and r.entity != entity:
            label = f"{label} (file entity: {r.entity})" if label else f"file entity: {r.entity}"
        src = r.source or source or f"label file {Path(file).name}"
        to_add.append(
            (
                target,
                EntityAddress(
                    "bitcoin",
                    canonical,
                    source=src,
                    learned_by="import",
                    label=label,
                    as_of=as_of,
                    evidence=f"{Path(file).name} {r.where}",
                ),
                r.row,
            )
        )
    if conflicts and not skip_conflicts:
        errors.append(f"{len(conflicts)} conflict(s): nothing imported (use --skip-conflicts to import the rest)")
    # A conflict found later in the file also removes the first row of that address.
    to_add = [t for t in to_add if normalise_address("bitcoin", t[1].address) not in conflicting]
    return ImportPlan(file, tuple(to_add), tuple(dups), tuple(conflicts), tuple(rejected), tuple(errors))


def apply_import(store: Store, plan: ImportPlan, *, now: int) -> int:
    """Write a checked plan in one transaction; returns how many addresses were added.

    :raises LabelImportError: when the plan has errors (nothing is written).
    """
    if not plan.ok:
        raise LabelImportError(list(plan.errors) + list(plan.conflicts))
    added = 0
    with store.batch():
        for entity, a, row in plan.to_add:
            # A candidate row of the same entity becomes an imported, active address.
            existing = address_row(store, a.chain, a.address)
            if existing is not None:
                update_address(
                    store,
                    a.chain,
                    a.address,
                    status="active",
                    learned_by="import",
                    source=a.source,
                    label=a.label,
                    as_of=a.as_of,
                    evidence=a.evidence,
                )
            else:
                store.add_addresses(entity, [a], now=now)
            add_evidence(
                store,
                [
                    Evidence(
                        a.chain,
                        a.address,
                        entity,
                        "import",
                        detail={"file": plan.file, "row": row, "source": a.source, "imported_at": iso(now)},
                    )
                ],
                now=now,
            )
            added += 1
    return added


def add(store: Store, registry: Registry, *, entity: str, address: str, source: str, label: str, now: int) -> str:
    """Give `address` (canonical) to `entity` by hand (learned_by manual, active, with an evidence row); returns what happened.

    :raises AddressBookError: when another owner has it.
    """
    why = check_new_address(store, registry, entity, "bitcoin", address)
    if why is not None:
        raise AddressBookError(f"{address} {why}; remove it there first")
    row = address_row(store, "bitcoin", address)
    if row is not None and row["status"] == "active":
        return f"{address} is already {entity}'s ({row['learned_by']}: {row['source']})"
    if registry.entity_of("bitcoin", address) is not None:
        return f"{address} is already {entity}'s (config)"
    with store.batch():
        upsert_address(
            store,
            entity,
            EntityAddress("bitcoin", address, source=source, learned_by="manual", label=label, as_of=iso(now)[:10]),
            status="active",
            now=now,
        )
        add_evidence(store, [Evidence("bitcoin", address, entity, "manual", detail={"source": source, "at": iso(now)})], now=now)
    was = f" (was {row['status']}, {row['learned_by']})" if row is not None else ""
    return f"added {address} to {entity}{was}; source: {source}"


def remove(store: Store, address: str) -> str:
    """Remove an imported or manual address; a discovered one is rejected instead. Returns what happened.

    :raises AddressBookError: for an unknown address or one from config / the bundled registry.
    """
    row = known_row(store, address)
    if row["learned_by"] in FIXED:
        where = "config.toml" if row["learned_by"] == "config" else "the bundled registry"
        raise AddressBookError(f"{address} comes from {where} ({row['entity']}); remove it there")
    with store.batch():
        if row["learned_by"] in DISCOVERED:
            store.set_address_status("bitcoin", address, "rejected")
            return f"rejected {address} ({row['entity']}, {row['learned_by']}): discovery will not add it again"
        store.remove_address("bitcoin", address)
        return f"removed {address} from {row['entity']} ({row['learned_by']}: {row['source']})"


def accept(store: Store, registry: Registry, address: str) -> str:
    """Accept a candidate: it becomes active and is watched from the next poll. Returns what happened.

    :raises AddressBookError: for an unknown or rejected address, or one another entity owns.
    """
    row = known_row(store, address)
    if row["status"] == "active":
        return f"{address} is already active for {row['entity']}"
    if row["status"] == "rejected":
        raise AddressBookError(
            f"{address} was rejected; add it on purpose with `entities add {address} --entity {row['entity']!r} --source ...`"
        )
    why = check_new_address(store, registry, row["entity"], "bitcoin", address)
    if why is not None:
        raise AddressBookError(f"{address} {why}")
    with store.batch():
        store.set_address_status("bitcoin", address, "active")
    return f"accepted {address} for {row['entity']} ({row['learned_by']}: {row['evidence'] or row['source']})"


def reject(store: Store, address: str) -> str:
    """Reject a candidate or learned address: it stops counting and discovery never re-adds it. Returns what happened.

    :raises AddressBookError: for an unknown address or one from config / the bundled registry.
    """
    row = known_row(store, address)
    if row["learned_by"] in FIXED:
        raise AddressBookError(f"{address} comes from {row['learned_by']}; remove it there instead")
    with store.batch():
        store.set_address_status("bitcoin", address, "rejected")
    return f"rejected {address} ({row['entity']}, was {row['status']})"


def propose(store: Store, entity: str, a: EntityAddress, *, status: str, now: int, refresh_origin: bool = False) -> str:
    """A discovery job's proposal (candidate or active); returns propose_address's outcome ("added", "known", ...).

    With `refresh_origin`, a known address that the same job proposed earlier gets the new source and
    evidence (a pool payout address's summary grows with every block).
    """
    outcome = propose_address(store, entity, a, status=status, now=now)
    if outcome == "known" and refresh_origin:
        row = address_row(store, a.chain, a.address)
        if row is not None and row["learned_by"] == a.learned_by:
            update_address(store, a.chain, a.address, source=a.source, evidence=a.evidence)
    return outcome


def commit_provisional(
    store: Store, sweeps: Iterable[Sweep], judgements: Iterable[Judgement], *, now: int
) -> list[tuple[str, str, str, int, Attribution]]:
    """Store new provisional addresses and decisions (store thread, in the caller's transaction).

    Returns the sweep flows to re-attribute, (chain, txid, entity, n, attribution), one per deposit.
    """
    for s in sweeps:
        stored = replace(s.entity_address(), learned_by="sweep")  # the status says provisional
        if propose_address(store, s.entity, stored, status="provisional", now=now) == "added":
            add_evidence(
                store,
                [
                    Evidence(
                        s.chain,
                        s.address,
                        s.entity,
                        "sweep",
                        s.txid,
                        s.block_height,
                        s.block_time,
                        s.value,
                        {
                            "n": s.n,
                            "reason": f"every input {s.entity}'s, every output to an "
                            "unattributed address, no change: a consolidation or an exchange deposit",
                        },
                    )
                ],
                now=now,
            )
    redo: list[tuple[str, str, str, int, Attribution]] = []
    for j in judgements:
        row = address_row(store, j.chain, j.address)
        if row is None or row["status"] != "provisional":
            continue
        store.set_address_status(j.chain, j.address, "active" if j.outcome == "confirmed" else "rejected")
        add_evidence(
            store,
            [
                Evidence(
                    j.chain,
                    j.address,
                    j.entity,
                    f"sweep_{j.outcome}",
                    j.txid,
                    detail={"reason": j.reason, "attribution": str(j.attribution or "")},
                )
            ],
            now=now,
        )
        if j.outcome == "deposit" and j.attribution is not None:
            for e in evidence_rows(store, chain=j.chain, address=j.address, kind="sweep"):
                path = (e["txid"], j.txid)
                redo.append(
                    (j.chain, e["txid"], j.entity, e["detail"]["n"], Attribution(j.attribution.kind, j.attribution.name, path))
                )
    return redo


def settle_provisional(store: Store, *, now: int, settle_days: float) -> list[str]:
    """Confirm provisional addresses whose swept coins sat unspent for `settle_days` (store thread); returns them."""
    settled = []
    with store.batch():
        for r in provisional_rows(store, added_before=now - int(settle_days * 86400)):
            sweeps = evidence_rows(store, chain=r["chain"], address=r["address"], kind="sweep")
            if not sweeps or any(is_outpoint_spent(store, r["chain"], e["txid"], e["detail"]["n"]) for e in sweeps):
                continue
            store.set_address_status(r["chain"], r["address"], "active")
            add_evidence(
                store,
                [
                    Evidence(
                        r["chain"],
                        r["address"],
                        r["entity"],
                        "sweep_confirmed",
                        detail={"reason": f"sat unspent for {settle_days:g} days"},
                    )
                ],
                now=now,
            )
            settled.append(r["address"])
    return settled
