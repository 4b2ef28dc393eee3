"""Balance and dormancy alerts: conditions on stored data, evaluated in every tick's transaction.

- **Dormancy** (`[[alerts.dormancy]]`): a watched entity's transaction spends outputs that sat unmoved for
  at least `min_years` (age = this tx's time − the block time of the tx that funded each spent output, both
  from storage). Whale Alert's best-known alert. Inputs whose funding tx is not
  stored (no backfill) are counted as "age unknown" and said so, never guessed. One alert per set of old
  outputs (an RBF replacement spends the same coins: not a second alert). What else looks like this
  on chain: an entity moving its own long-held cold storage (a consolidation, a custody change); the alert
  names the flow's verdict so the reader sees "internal" or "custody_move" rather than assuming a sale.
- **Balance** (`[[alerts.balance]]`): the entity's confirmed balance (its addresses' latest snapshots in
  address mode, its watched UTXO set in block mode)
  crosses below `below_btc`, or falls at least `drop_pct` % below its highest point within `within_days`
  (the history is rebuilt from the current balance and the stored confirmed flows since). Each condition
  alerts when it starts and again only after it has cleared (a drop: below half its threshold), so a
  balance sitting below a level, or a steady seller's rolling fall, does not alert every tick.

Both are sent as `new` alerts with a headline, facts and reasons carrying their numbers, through the same
outbox, rules of delivery and renderers as flow alerts.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from decimal import Decimal

from alerts.router import BalanceRule, DormancyRule
from monitor.clock import iso
from monitor.core.registry import Registry
from monitor.model import SATS_PER_BTC, Alert, format_btc
from monitor.output.export import flow_record
from monitor.run.pipeline import Decision
from storage import Store
from storage import alerts as outbox_store
from storage import watch as watch_store
from storage.reads import flow_row

__all__ = ["BalanceRule", "DormancyRule", "plan_dormancy", "plan_balances", "balance_history"]

YEAR = 365.25 * 86_400


def _btc(units: int) -> str:
    shown = f"{Decimal(format_btc(units)):,f}"
    return shown.rstrip("0").rstrip(".") if "." in shown else shown


def _message_id(key: str, now: int) -> str:
    return "msg_" + hashlib.sha256(f"{key}\nnew\n{now}".encode()).hexdigest()[:32]


def _queue(
    store: Store,
    key: str,
    channels: tuple[str, ...],
    payload: dict,
    *,
    entity: str,
    chain: str,
    txid: str = "",
    now: int,
    label: str = "",
) -> int:
    if label:
        payload = {**payload, "label": label}
    payload = {
        "kind": "new",
        "dedup_key": key,
        "changes": [],
        "explorer_url": None,
        "message_id": _message_id(key, now),
        "amends": None,
        "thread": [],
        **payload,
    }
    alert = Alert(key, "new", channels, payload, created_at=now)
    # txid stays "" so flow updates and retractions never count these channels as having heard of the flow
    outbox_store.queue_alert(store, alert, chain=chain, entity=entity, now=now)
    return 1


# --- dormancy -------------------------------------------------------------------------------------


def plan_dormancy(
    store: Store,
    registry: Registry,
    rules: Sequence[DormancyRule],
    decisions: Sequence[Decision],
    *,
    is_live: Callable,
    explorer_url: str | None,
    now: int,
    label: str = "",
) -> int:
    """Queue a dormancy alert for each new outflow that spends coins older than a rule's `min_years`."""
    if not rules:
        return 0
    queued = 0
    for d in decisions:
        c = d.classification
        if not d.is_new or d.flow.chain != "bitcoin" or not is_live(c, d.flow.block_time, now):
            continue
        matching = [r for r in rules if not r.entities or c.entity in r.entities]
        if not matching:
            continue
        tx = store.get_tx(c.chain, c.txid)
        if tx is None:
            continue
        owned = {a.address for a in registry.get(c.entity).addresses if a.chain == c.chain}
        inputs = [i for i in tx.inputs if i.address in owned and i.prev_txid]
        funded = watch_store.funding_times(store, c.chain, [i.prev_txid for i in inputs])
        spent_at = tx.block_time if tx.block_time is not None else now
        aged = [(i, spent_at - funded[i.prev_txid][0], funded[i.prev_txid]) for i in inputs if i.prev_txid in funded]
        unknown = [i for i in inputs if i.prev_txid not in funded]
        for rule in matching:
            old = [(i, age, f) for i, age, f in aged if age >= rule.min_years * YEAR]
            old_units = sum(i.value for i, _, _ in old)
            if not old or old_units < Decimal(str(rule.min_btc)) * SATS_PER_BTC:
                continue
            # Keyed by the old outputs, not the txid: an RBF replacement or a re-broadcast after a reorg
            # spends the same coins, and that is the same awakening, told once.
            spent = ",".join(sorted(f"{i.prev_txid}:{i.prev_vout}" for i, _, _ in old))
            key = f"dormancy:{c.chain}:{c.entity}:{rule.name}:{hashlib.sha256(spent.encode()).hexdigest()[:24]}"
            if watch_store.alert_exists(store, key):
                continue
            oldest_in, oldest_age, (oldest_time, oldest_height) = max(old, key=lambda x: x[1])
            years = oldest_age / YEAR
            row = flow_row(store, c.chain, c.txid, c.entity)
            reasons = [
                f"{_btc(old_units)} BTC in {len(old)} output{'s' if len(old) != 1 else ''} unmoved for at least "
                f"{rule.min_years:g} years moved in this transaction; the oldest, {_btc(oldest_in.value)} BTC, was "
                f"funded by tx {oldest_in.prev_txid} in block {oldest_height} on {iso(oldest_time)}, "
                f"{years:.1f} years before it was spent",
                f"the flow's verdict is {c.verdict} ({c.severity}): "
                + ("a sale" if c.verdict.endswith("_sale") else "not classified as a sale"),
            ]
            if unknown:
                reasons.append(
                    f"{len(unknown)} other input{'s' if len(unknown) != 1 else ''} "
                    f"({_btc(sum(i.value for i in unknown))} BTC) of unknown age: funding tx not stored"
                )
            facts = [
                ["Entity", f"{c.entity} ({registry.get(c.entity).kind})"],
                ["Dormant coins", f"{_btc(old_units)} BTC, oldest {years:.1f} years"],
                ["Funded", f"block {oldest_height} ({iso(oldest_time)})"],
                ["Moved", f"{iso(spent_at)} in {c.txid}"],
                ["Verdict", f"{c.verdict} ({c.severity})"],
            ]
            url = explorer_url.format(txid=c.txid) if explorer_url and c.chain == "bitcoin" else None
            payload = {
                "title": f"{c.entity}: {_btc(old_units)} BTC dormant {years:.1f} years moved ({c.verdict})",
                "severity": "warning",
                "facts": facts,
                "reasons": reasons,
                "explorer_url": url,
                "flow": flow_record(row) if row is not None else None,
                "watch": {
                    "type": "dormancy",
                    "rule": rule.name,
                    "entity": c.entity,
                    "txid": c.txid,
                    "dormant_units": old_units,
                    "dormant_amount": format_btc(old_units),
                    "oldest_years": round(years, 3),
                    "oldest_funding_txid": oldest_in.prev_txid,
                    "oldest_funding_height": oldest_height,
                    "unknown_age_inputs": len(unknown),
                },
            }
            queued += _queue(store, key, rule.channels, payload, entity=c.entity, chain=c.chain, now=now, label=label)
    return queued


# --- balance --------------------------------------------------------------------------------------


def balance_history(current: int, as_of: int, flows_newest_first: Sequence[tuple[int, int, str]]) -> list[tuple[int, int]]:
    """(time, balance) points, newest first: `current` at `as_of`, then the balance before each later-to-earlier flow."""
    points = [(as_of, current)]
    balance = current
    for at, net, _ in flows_newest_first:
        if at > as_of:
            continue  # after the snapshot: not in `current` yet
        balance -= net
        points.append((at - 1, balance))
    return points


def plan_balances(store: Store, registry: Registry, rules: Sequence[BalanceRule], *, now: int, label: str = "") -> int:
    """Evaluate every balance rule from stored snapshots and flows; queue an alert for each condition that starts."""
    queued = 0
    for rule in rules:
        for name in rule.entities:
            try:
                entity = registry.get(name)
            except KeyError:
                continue
            addresses = [a.address for a in entity.addresses if a.chain == "bitcoin"]
            snap = watch_store.confirmed_balance(store, "bitcoin", addresses, now=now)
            if snap is None:
                continue
            current, as_of = snap
            since = int(now - rule.within_days * 86_400)
            flows = watch_store.net_flows_since(store, "bitcoin", name, since)
            history = balance_history(current, as_of, flows)
            if rule.below_btc is not None:
                queued += _level(store, rule, entity, current, history, flows, now=now, label=label)
            if rule.drop_pct is not None:
                queued += _drop(store, rule, entity, current, history, flows, now=now, label=label)
    return queued


def _outflows_line(flows: Sequence[tuple[int, int, str]], after: int, as_of: int) -> str:
    outs = [(at, -net, txid) for at, net, txid in flows if net < 0 and after < at <= as_of]
    if not outs:
        return "no outflow in the window explains it (a snapshot or an address change)"
    total = sum(x for _, x, _ in outs)
    return f"{len(outs)} outflow{'s' if len(outs) != 1 else ''} since then took {_btc(total)} BTC (newest {outs[0][2]})"


def _level(store: Store, rule: BalanceRule, entity, current: int, history, flows, *, now: int, label: str = "") -> int:
    assert rule.below_btc is not None
    level = int(Decimal(str(rule.below_btc)) * SATS_PER_BTC)
    key = f"balance:{rule.name}:{entity.name}:below"
    was = (watch_store.state(store, key) or {}).get("firing", False)
    firing = current < level
    watch_store.set_state(store, key, {"firing": firing, "balance_units": current}, now=now)
    if not firing or was:
        return 0
    crossed = next((at for at, bal in history[1:] if bal >= level), None)
    reasons = [f"{entity.name}'s balance is {_btc(current)} BTC, below the {_btc(level)} BTC level of rule {rule.name!r}"]
    if crossed is not None:
        reasons.append(f"it was at or above the level on {iso(crossed)}; " + _outflows_line(flows, crossed, history[0][0]))
    payload = {
        "title": f"{entity.name} balance fell below {_btc(level)} BTC: now {_btc(current)} BTC",
        "severity": "warning",
        "facts": [
            ["Entity", f"{entity.name} ({entity.kind})"],
            ["Balance", f"{_btc(current)} BTC"],
            ["Level", f"{_btc(level)} BTC"],
        ],
        "reasons": reasons,
        "watch": {
            "type": "balance_below",
            "rule": rule.name,
            "entity": entity.name,
            "balance_units": current,
            "as_of": iso(history[0][0]),
            "level_units": level,
        },
    }
    return _queue(store, f"{key}:{now}", rule.channels, payload, entity=entity.name, chain="bitcoin", now=now, label=label)


def _drop(store: Store, rule: BalanceRule, entity, current: int, history, flows, *, now: int, label: str = "") -> int:
    assert rule.drop_pct is not None
    peak_at, peak = max(history, key=lambda p: (p[1], p[0]))
    key = f"balance:{rule.name}:{entity.name}:drop"
    was = (watch_store.state(store, key) or {}).get("firing", False)
    pct = (peak - current) / peak * 100 if peak > 0 else 0.0
    # Hysteresis: once firing, a rolling window that dips just under the threshold and back (a steady
    # seller does that daily) is the same fall; it re-arms only below half the threshold.
    firing = pct >= rule.drop_pct or (was and pct >= rule.drop_pct / 2)
    watch_store.set_state(store, key, {"firing": firing, "pct": round(pct, 3)}, now=now)
    if not firing or was:
        return 0
    days = (now - peak_at) / 86_400
    holdings = entity.profile.holdings_btc
    reasons = [
        f"{entity.name}'s balance fell {pct:.1f}% in {days:.1f} days, from {_btc(peak)} BTC on {iso(peak_at)} to "
        f"{_btc(current)} BTC (rule {rule.name!r}: {rule.drop_pct:g}% within {rule.within_days:g} days)",
        _outflows_line(flows, peak_at, history[0][0]),
    ]
    if holdings is not None:
        reasons.append(
            f"the drop is {(peak - current) / SATS_PER_BTC / holdings.value * 100:.1f}% of the "
            f"{holdings.value:,.0f} BTC holdings reported by {holdings.source} ({holdings.as_of})"
        )
    payload = {
        "title": f"{entity.name} balance down {pct:.1f}% in {days:.1f} days: {_btc(peak)} → {_btc(current)} BTC",
        "severity": "warning",
        "facts": [
            ["Entity", f"{entity.name} ({entity.kind})"],
            ["Balance", f"{_btc(current)} BTC"],
            ["Peak", f"{_btc(peak)} BTC on {iso(peak_at)}"],
            ["Drop", f"{pct:.1f}% in {days:.1f} days"],
        ],
        "reasons": reasons,
        "watch": {
            "type": "balance_drop",
            "rule": rule.name,
            "entity": entity.name,
            "balance_units": current,
            "as_of": iso(history[0][0]),
            "peak_units": peak,
            "peak_at": iso(peak_at),
            "drop_pct": round(pct, 3),
        },
    }
    return _queue(store, f"{key}:{now}", rule.channels, payload, entity=entity.name, chain="bitcoin", now=now, label=label)
