"""Helpers of the entity-discovery tests: a config writer for the local Esplora server and a CLI runner."""

from __future__ import annotations

import asyncio
from pathlib import Path

from click.testing import CliRunner

from monitor.cli import cli

ROOT = Path(__file__).resolve().parent.parent.parent
PRICES = ROOT / "monitor" / "data" / "btc_usd_daily.csv"
COIN = 100_000_000
MARCH_5_2026 = 1_772_668_800


def entity_toml(name: str, kind: str, addresses=(), *, watch: bool = True, holdings: float | None = None,
                production: float | None = None) -> str:
    """One [[entities]] table; addresses are sourced as test fixtures."""
    addrs = ", ".join(f'{{ address = "{a}", source = "test fixture" }}' for a in addresses)
    out = f'\n[[entities]]\nname = "{name}"\nkind = "{kind}"\nwatch = {str(watch).lower()}\naddresses = [{addrs}]\n'
    facts = []
    if holdings is not None:
        facts.append(f'holdings_btc = {{ value = {holdings}, source = "test fixture holdings", as_of = "2026-03-01" }}')
    if production is not None:
        facts.append(f'monthly_production_btc = {{ value = {production}, source = "test fixture production", as_of = "2026-03-01" }}')
    if facts:
        out += "[entities.profile]\n" + "\n".join(facts) + "\n"
    return out


def write_config(tmp_path: Path, url: str | None, entities: str = "", *, alerts: bool = False) -> Path:
    """A config with one local Esplora source (when `url`), CSV prices, the given entities and optionally a
    console alert rule matching every verdict."""
    source = f"""
[[sources]]
name = "local"
type = "esplora"
urls = ["{url}"]
rate_limit = 500.0
timeout = 5.0
""" if url else ""
    alert = """
[alerts]
max_age = 100000000

[[alerts.channels]]
name = "console"
type = "console"

[[alerts.rules]]
name = "everything"
min_severity = "info"
channels = ["console"]
""" if alerts else ""
    cfg = tmp_path / "config.toml"
    cfg.write_text(f"""
[monitor]
storage = "{tmp_path / 'tm.db'}"
{source}
[prices]
sources = ["csv"]
csv = "{PRICES}"
{alert}
{entities}
""")
    return cfg


async def cli_run(*args, env=None):
    """Run the CLI in a worker thread (it has its own event loop), as a user would."""
    return await asyncio.to_thread(CliRunner().invoke, cli, [str(a) for a in args], env=env)


def cli_sync(*args):
    """Run the CLI in this thread (for tests without a running event loop)."""
    return CliRunner().invoke(cli, [str(a) for a in args])
