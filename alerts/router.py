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

`dedup_key` is stable per (chain, txid, entity, verdict); a receiver that sees a key twice for the same
kind can drop the second message.

A rule's `mode` is `every_flow` (the above) or `incident`: then its sale-type flows are not alerted one
by one but grouped, per entity, into an incident (`monitor.run.incidents`): the first flow opens it, later
ones update it, a quiet period closes it. Its other verdicts are still alerted one by one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
        if r.groups(c.verdict) and r.matches(entity=c.entity, entity_kind=entity_kind, verdict=c.verdict,
                                             severity=c.severity, usd_value=c.usd_value):
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
