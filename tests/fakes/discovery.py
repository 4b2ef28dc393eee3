"""Helpers of the entity-discovery tests: a config writer for the local Esplora server and a CLI runner."""

from __future__ import annotations

from pathlib import Path

from builders import (
    COIN,
    MARCH_5_2026,
    cli_run,
    cli_sync,
    config_toml,
    console_channel,
    entity_table,
    esplora_source,
    fact,
    rule,
    sourced,
    toml_table,
)

# COIN, MARCH_5_2026, cli_run and cli_sync are re-exported: the discovery tests import them from here
__all__ = ["COIN", "MARCH_5_2026", "cli_run", "cli_sync", "entity_toml", "write_config"]


def entity_toml(
    name: str, kind: str, addresses=(), *, watch: bool = True, holdings: float | None = None, production: float | None = None
) -> str:
    """One [[entities]] table; addresses are sourced as test fixtures."""
    profile = {}
    if holdings is not None:
        profile["holdings_btc"] = fact(holdings, "test fixture holdings")
    if production is not None:
        profile["monthly_production_btc"] = fact(production, "test fixture production")
    return "\n" + toml_table("entities", entity_table(name, kind, sourced(addresses), watch=watch, profile=profile), array=True)


def write_config(tmp_path: Path, url: str | None, entities: str = "", *, alerts: bool = False) -> Path:
    """A config with one local Esplora source (when `url`), CSV prices, the given entities and optionally a
    console alert rule matching every verdict."""
    cfg = tmp_path / "config.toml"
    cfg.write_text(
        config_toml(
            db=tmp_path / "tm.db",
            sources=[esplora_source("local", url, rate_limit=500.0, timeout=5.0)] if url else [],
            alerts={"max_age": 100000000} if alerts else None,
            channels=[console_channel("console")] if alerts else [],
            rules=[rule("everything", ["console"], min_severity="info")] if alerts else [],
            extra=entities,
        )
    )
    return cfg
