"""Routing rules: which classifications become alerts, on which channels, and as what (pure).

A rule (config `[[alerts.rules]]`) matches on entity names, entity kinds, verdicts, a minimum severity
and a minimum USD value, and names channels. For one flow:

- a first classification that matches rules → a `new` alert to the union of their channels;
- a re-classification that changes the verdict or raises the severity → an `update` that says what
  changed, to the matching channels plus every channel that already heard about the flow (so nobody is
  left with a stale verdict); when no channel had heard of it, it is a `new` alert;
- a lower severity with the same verdict → nothing (no alert fatigue);
- a retraction (the tx was replaced or its block orphaned) → a `retraction` to every channel that heard
  about the flow, and to nobody else.

`plan()` makes every per-flow decision of a tick at once from what the caller read (which channels
heard about each flow, tx statuses, entity kinds); the caller queues what it returns.

`dedup_key` is stable per (chain, txid, entity, verdict); a receiver that sees a key twice for the same
kind can drop the second message.

A rule's `mode` is `every_flow` (the above) or `incident`: then its sale-type flows are not alerted one
by one but grouped, per entity, into an incident (`monitor.run.incidents`): the first flow opens it, later
ones update it, a quiet period closes it. Its other verdicts are still alerted one by one.
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping, Sequence
from dataclasses import dataclass

from monitor.model import SALE_VERDICTS, SEVERITIES, VERDICTS, Classification, severity_rank

__all__ = [
    "Rule",
    "DormancyRule",
    "BalanceRule",
    "Route",
    "MODES",
    "dedup_key",
    "matching_channels",
    "incident_channels",
    "route_classification",
    "route_retraction",
    "changes_between",
    "FlowDecision",
    "Planned",
    "plan",
]

#: How a rule delivers: every flow as its own alert, or sale-type flows grouped into incidents.
MODES = ("every_flow", "incident")

#: Verdicts a rule matches when it names none: everything but own moves.
DEFAULT_RULE_VERDICTS = tuple(v for v in VERDICTS if v != "internal")


@dataclass(frozen=True)
class Rule:
    """One `[[alerts.rules]]` entry; empty matchers match everything."""

    name: str
    channels: tuple[str, ...]
    entities: tuple[str, ...] = ()
    kinds: tuple[str, ...] = ()
    verdicts: tuple[str, ...] = DEFAULT_RULE_VERDICTS
    min_severity: str = "info"
    min_usd: float | None = None
    mode: str = "every_flow"

    def __post_init__(self) -> None:
        if self.min_severity not in SEVERITIES:
            raise ValueError(f"min_severity {self.min_severity!r} is not one of {', '.join(SEVERITIES)}")
        if self.mode not in MODES:
            raise ValueError(f"mode {self.mode!r} is not one of {', '.join(MODES)}")

    def groups(self, verdict: str) -> bool:
        """Whether this rule delivers a flow of this verdict through an incident rather than on its own."""
        return self.mode == "incident" and verdict in SALE_VERDICTS

    def matches(self, *, entity: str, entity_kind: str, verdict: str, severity: str, usd_value: float | None) -> bool:
        """Whether a classification of this entity passes the rule."""
        if self.entities and entity not in self.entities:
            return False
        if self.kinds and entity_kind not in self.kinds:
            return False
        if self.verdicts and verdict not in self.verdicts:
            return False
        if severity_rank(severity) < severity_rank(self.min_severity):
            return False
        # An unknown USD value (no price) does not pass a USD floor: the floor is the user's noise limit.
        if self.min_usd is not None and (usd_value is None or usd_value < self.min_usd):
            return False
        return True


@dataclass(frozen=True)
class Route:
    """An alert to queue: its kind, dedup key, channels and the changes it reports."""

    kind: str  # new | update | retraction
    dedup_key: str
    channels: tuple[str, ...]
    changes: tuple[str, ...] = ()


def dedup_key(chain: str, txid: str, entity: str, verdict: str) -> str:
    """Stable key of one verdict on one entity flow."""
    return f"{chain}:{txid}:{entity}:{verdict}"


def matching_channels(rules: Iterable[Rule], c: Classification, entity_kind: str) -> tuple[str, ...]:
    """Channels of every rule the classification passes that delivers it as its own alert (not grouped
    into an incident), in rule order, without repeats."""
    out: dict[str, None] = {}
    for r in rules:
        if r.groups(c.verdict):
            continue
        if r.matches(entity=c.entity, entity_kind=entity_kind, verdict=c.verdict, severity=c.severity, usd_value=c.usd_value):
            out.update(dict.fromkeys(r.channels))
    return tuple(out)


def incident_channels(rules: Iterable[Rule], c: Classification, entity_kind: str) -> tuple[str, ...]:
    """Channels of every incident-mode rule that groups this (sale-type) classification, in rule order."""
    out: dict[str, None] = {}
    for r in rules:
        if r.groups(c.verdict) and r.matches(
            entity=c.entity, entity_kind=entity_kind, verdict=c.verdict, severity=c.severity, usd_value=c.usd_value
        ):
            out.update(dict.fromkeys(r.channels))
    return tuple(out)


def changes_between(prev: Classification, new: Classification) -> tuple[str, ...]:
    """Human sentences for what changed from one classification to the next."""
    out = []
    if prev.verdict != new.verdict:
        out.append(f"verdict {prev.verdict} → {new.verdict}")
    if prev.severity != new.severity:
        out.append(f"severity {prev.severity} → {new.severity}")
    if prev.attribution != new.attribution:
        out.append(f"destination {prev.attribution or 'unknown'} → {new.attribution or 'unknown'}")
    return tuple(out)


def route_classification(
    rules: Sequence[Rule],
    new: Classification,
    previous: Classification | None,
    *,
    entity_kind: str,
    already_alerted: Iterable[str] = (),
) -> Route | None:
    """The alert a stored classification calls for, or None."""
    key = dedup_key(new.chain, new.txid, new.entity, new.verdict)
    matched = matching_channels(rules, new, entity_kind)
    heard = tuple(already_alerted)
    if previous is None or previous.status == "retracted":
        return Route("new", key, matched) if matched else None
    material = previous.verdict != new.verdict or severity_rank(new.severity) > severity_rank(previous.severity)
    if not material:
        return None
    channels = tuple(dict.fromkeys(matched + heard))
    if not channels:
        return None
    return Route("update" if heard else "new", key, channels, changes_between(previous, new))


def route_retraction(c: Classification, *, already_alerted: Iterable[str], why: str) -> Route | None:
    """A retraction to every channel that heard about the flow, or None when none did."""
    channels = tuple(dict.fromkeys(already_alerted))
    if not channels:
        return None
    return Route("retraction", dedup_key(c.chain, c.txid, c.entity, c.verdict), channels, (why,))


@dataclass(frozen=True)
class FlowDecision:
    """One classification stored in a tick, as the planner needs it (the pipeline's Decision, flattened)."""

    classification: Classification
    previous: Classification | None
    is_new: bool
    is_changed: bool
    block_time: int | None = None
    block_height: int | None = None


@dataclass(frozen=True)
class Planned:
    """A route to queue for a classification; `amends_txid` names the replaced tx an RBF update amends."""

    route: Route
    classification: Classification
    amends_txid: str | None = None


def plan(
    rules: Sequence[Rule],
    decisions: Sequence[FlowDecision],
    retracted: Sequence[Classification],
    *,
    heard: Mapping[tuple[str, str, str], Iterable[str]],
    statuses: Mapping[tuple[str, str], str],
    kinds: Mapping[str, str],
    replacing: Mapping[str, str] = {},
    confirmed: Container[str] = frozenset(),
    notify_confirmations: bool = False,
    max_age: int,
    now: int,
) -> list[Planned]:
    """Every per-flow alert decision of one tick, in queueing order (pure: the caller reads and writes).

    `heard` maps (chain, txid, entity) to the channels already told about that flow (not by a
    retraction), `statuses` (chain, txid) to the stored tx status of each retracted classification,
    `kinds` entity names to their kind, `replacing` a replacement txid to the txid it replaced (RBF).
    Retractions come first; an RBF-replaced tx whose channels heard about it gets ONE update through its
    replacement instead of a retraction plus a second "new" alert for what is the same outflow; a flow
    older than `max_age` (block time) is not alerted; with `notify_confirmations` a flow confirmed in
    this tick gets an update to the channels that heard about it.
    """
    told = {k: set(v) for k, v in heard.items()}

    def heard_of(c: Classification, txid: str | None = None) -> set[str]:
        return told.get((c.chain, txid or c.txid, c.entity), set())

    out: list[Planned] = []

    def add(route: Route, c: Classification, amends_txid: str | None = None) -> None:
        out.append(Planned(route, c, amends_txid))
        if route.kind != "retraction":  # what the outbox will answer for this flow from now on
            told.setdefault((c.chain, c.txid, c.entity), set()).update(route.channels)

    retracted_by_key = {(c.txid, c.entity): c for c in retracted}
    rbf: dict[tuple[str, str], tuple[Classification, set[str]]] = {}  # (new txid, entity) → (old, heard)
    for d in decisions:
        c = d.classification
        replaced = replacing.get(c.txid)
        old = retracted_by_key.get((replaced, c.entity)) if replaced is not None else None
        if old is not None and (d.is_new or d.is_changed):
            heard_old = heard_of(old)
            if heard_old:
                rbf[(c.txid, c.entity)] = (old, set(heard_old))
    superseded = {(old.txid, entity) for (_, entity), (old, _) in rbf.items()}
    for c in retracted:
        if (c.txid, c.entity) in superseded:
            continue
        status = statuses.get((c.chain, c.txid)) or "gone"
        why = "the transaction was replaced (RBF)" if status == "replaced" else "its block was orphaned by a reorg"
        route = route_retraction(c, already_alerted=heard_of(c), why=why)
        if route is not None:
            add(route, c)
    for d in decisions:
        c = d.classification
        if d.block_time is not None and now - d.block_time > max_age:
            continue
        kind = kinds[c.entity]
        if (c.txid, c.entity) in rbf:
            old, heard_old = rbf[(c.txid, c.entity)]
            channels = tuple(dict.fromkeys(matching_channels(rules, c, kind) + tuple(heard_old)))
            changes = (f"replaced (RBF) by {c.txid}; {old.txid} will not confirm",) + changes_between(old, c)
            add(Route("update", dedup_key(c.chain, c.txid, c.entity, c.verdict), channels, changes), c, old.txid)
        elif d.is_new or d.is_changed:
            route = route_classification(rules, c, d.previous, entity_kind=kind, already_alerted=heard_of(c))
            if route is not None:
                add(route, c)
        elif notify_confirmations and c.txid in confirmed:
            told_now = heard_of(c)
            if told_now:
                add(
                    Route(
                        "update",
                        dedup_key(c.chain, c.txid, c.entity, c.verdict),
                        tuple(told_now),
                        (f"confirmed in block {d.block_height}",),
                    ),
                    c,
                )
    return out


# The watch rules (`[[alerts.dormancy]]`, `[[alerts.balance]]`) are declared here with the other rules;
# monitor.run.watch_alerts evaluates them against storage.
@dataclass(frozen=True)
class DormancyRule:
    """One `[[alerts.dormancy]]` entry."""

    name: str
    channels: tuple[str, ...]
    min_years: float
    min_btc: float = 0.0
    entities: tuple[str, ...] = ()  # empty: every watched entity


@dataclass(frozen=True)
class BalanceRule:
    """One `[[alerts.balance]]` entry; at least one of `below_btc` and `drop_pct`."""

    name: str
    channels: tuple[str, ...]
    entities: tuple[str, ...]
    below_btc: float | None = None
    drop_pct: float | None = None
    within_days: float = 7.0
