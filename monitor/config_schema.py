"""A JSON Schema (draft 2020-12) of config.toml for editors, generated from the settings table.

Scalar keys get their type, default, bounds, choices and doc from `monitor/settings.py`; the other keys
(URLs, headers, secrets, entities, channel settings, rules) are listed by name, so an unknown key is still
flagged, but their values are left to `check-config`, which remains the full check.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import monitor.config as cfg
from monitor.core.classify import Thresholds
from monitor.settings import SETTINGS, Setting

__all__ = ["json_schema", "DIALECT"]

DIALECT = "https://json-schema.org/draft/2020-12/schema"
_TYPES = {"string": "string", "number": "number", "integer": "integer", "boolean": "boolean"}


def _row_schema(row: Setting) -> dict[str, Any]:
    """One scalar key's schema from its table row."""
    out: dict[str, Any] = {"description": row.doc}
    if row.type == "strings":
        out.update(type="array", items={"type": "string"})
    else:
        out["type"] = _TYPES[row.type]
    if row.default is not None:
        out["default"] = list(row.default) if isinstance(row.default, tuple) else row.default
    if row.choices is not None:
        out["enum"] = list(row.choices)
    if row.above is not None:
        out["exclusiveMinimum"] = row.above
    if row.at_least is not None:
        out["minimum"] = row.at_least
    if row.type in ("number", "integer"):
        out["maximum"] = row.maximum if row.maximum is not None else cfg.MAX_NUMBER
    return out


def _table(section: str, keys: tuple[str, ...] | list[str], **extra: dict[str, Any]) -> dict[str, Any]:
    """A TOML table of `keys`: table rows where the settings table has them, `extra` ones, else any value."""
    rows = {s.key: _row_schema(s) for s in SETTINGS if s.section == section}
    props = {k: extra.get(k) or rows.get(k) or {} for k in keys}
    return {"type": "object", "properties": props, "additionalProperties": False}


def _array(item: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": item}


def _classify() -> dict[str, Any]:
    props = {}
    for f in fields(Thresholds):
        default = getattr(Thresholds(), f.name)
        kind = "integer" if isinstance(default, int) and not isinstance(default, bool) else "number"
        props[f.name] = {"type": kind, "default": default, "exclusiveMinimum": 0, "maximum": cfg.MAX_NUMBER}
    return {"type": "object", "properties": props, "additionalProperties": False}


def json_schema() -> dict[str, Any]:
    """The schema of a whole config.toml (as a JSON document)."""
    source_keys = list(dict.fromkeys((*cfg._SOURCE_KEYS, *cfg._BITCOIND_SOURCE_KEYS, *cfg._EVM_SOURCE_KEYS)))
    channel_keys = list(
        dict.fromkeys(("name", "type", "min_interval", *(k for spec in cfg._CHANNEL_SETTINGS.values() for k in spec)))
    )
    profile = _table("entities.profile", cfg._PROFILE_KEYS)
    sections = {
        "monitor": _table("monitor", cfg._MONITOR_KEYS),
        "sources": _array(
            _table(
                "sources",
                source_keys,
                tokens=_array(_table("sources.tokens", cfg._TOKEN_KEYS)),
                type={"enum": list(cfg.SOURCE_TYPES)},
                chain={"enum": list(cfg.SOURCE_CHAINS)},
            )
        ),
        "entities": _array(_table("entities", cfg._ENTITY_KEYS, profile=profile)),
        "classify": _classify(),
        "prices": _table("prices", cfg._PRICE_KEYS),
        "alerts": _table(
            "alerts",
            cfg._ALERTS_KEYS,
            channels=_array(_table("alerts.channels", channel_keys, type={"enum": list(cfg.CHANNEL_TYPES)})),
            rules=_array(_table("alerts.rules", cfg._RULE_KEYS)),
            dormancy=_array(_table("alerts.dormancy", cfg._DORMANCY_KEYS)),
            balance=_array(_table("alerts.balance", cfg._BALANCE_KEYS)),
        ),
        "daemon": _table("daemon", cfg._DAEMON_KEYS),
        "discovery": _table("discovery", cfg._DISCOVERY_KEYS),
        "miners": _table("miners", cfg._MINERS_KEYS),
    }
    assert tuple(sections) == cfg.SECTIONS
    return {
        "$schema": DIALECT,
        "title": "treasury-monitor config.toml",
        "type": "object",
        "properties": sections,
        "additionalProperties": False,
    }
