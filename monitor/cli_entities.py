"""`treasury-monitor entities`: the table of entities and the commands that manage their addresses."""

from __future__ import annotations

import json

import click

from monitor.cli_common import State
from monitor.clock import SystemClock
from monitor.model import format_btc

__all__ = ["entities"]


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_context
def entities(ctx: click.Context, as_json: bool) -> None:
    """Entities: with no subcommand, a table of kind, address counts, balance seen and flows."""
    if ctx.invoked_subcommand is not None:
        return
    state: State = ctx.obj
    from monitor.runtime import build_registry, open_store
    from storage.reads import entity_summaries

    cfg = state.config()
    store = open_store(cfg, state.db)
    try:
        reg = build_registry(cfg, store)
        store.sync_entities(reg.entities.values(), now=int(SystemClock().time()))
        rows = entity_summaries(store)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    click.echo(f"{'entity':<38} {'kind':<10} {'addrs':>5} {'balance BTC':>18}  flows out/in/internal")
    for r in rows:
        f = r["flows"]
        bal = format_btc(r["balance_units"]) if r["addresses_with_balance"] else "-"
        click.echo(f"{r['name'][:38]:<38} {r['kind']:<10} {r['addresses']:>5} {bal:>18}  "
                   f"{f.get('out', 0)}/{f.get('in', 0)}/{f.get('internal', 0)}")
