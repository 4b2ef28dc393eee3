"""`treasury-monitor miners`: the chain-wide miner view (production per pool, miners' outflows, MPI) and its backfill.

With no subcommand: a table per pool and per tracked miner over the scanned blocks (`--since`, `--json`).
`miners backfill --days N` scans the last N days of blocks (about 144 a day) with a progress bar; it
resumes where an interrupted run stopped.
"""

from __future__ import annotations

import json
import sys

import click

from monitor.cli.common import State, parse_time_option, run_async
from monitor.clock import SystemClock
from monitor.model import format_btc

__all__ = ["miners", "render_view"]


def _btc(sat: int) -> str:
    return f"{float(format_btc(sat)):,.2f}"


def render_view(v: dict) -> list[str]:
    """The `miners` table as lines (from `monitor.discovery.miners.miners_view`)."""
    if not v["blocks_scanned"]:
        return ["no blocks scanned yet: run `treasury-monitor miners backfill --days N`"]
    lines = [
        f"{v['blocks_scanned']:,} blocks scanned, heights {v['first_height']:,}-{v['last_height']:,}, "
        f"{v['days'][0]} .. {v['days'][-1]} ({len(v['days'])} days)"
    ]
    if not v["attributed"]:
        lines.append("(scanned without pool attribution)")
    lines.append("")
    lines.append(
        f"{'pool':<18} {'blocks':>7} {'share':>7} {'subsidy BTC':>12} {'fees BTC':>9} {'produced BTC':>13} {'days':>5}  owner"
    )
    for p in v["pools"]:
        lines.append(
            f"{p['pool'][:18]:<18} {p['blocks']:>7,} {p['share']:>7.1%} {_btc(p['subsidy_sat']):>12} "
            f"{_btc(p['fees_sat']):>9} {_btc(p['produced_sat']):>13} {p['days']:>5}  {p['owner'] or ''}"
        )
    lines.append("")
    lines.append("tracked miners (production measured from their pool's coinbases):")
    for r in v["tracked_miners"]:
        lines.append(f"  {r['sentence']}")
    lines.append("")
    if v["flows"]:
        kinds: dict[str, list[float]] = {}
        for f in v["flows"]:
            k = kinds.setdefault(f["kind"], [0, 0.0])
            k[0] += f["sat"]
            k[1] += f["usd"]
        pool_sat: dict[str, int] = {}
        for f in v.get("pool_flows", ()):
            pool_sat[f["kind"]] = pool_sat.get(f["kind"], 0) + f["sat"]
        lines.append("miners' outflows by destination kind (miner entities' flows + pool payout addresses' spends):")
        for kind, (sat, usd) in sorted(kinds.items(), key=lambda kv: -kv[1][0]):
            of_pools = f"  (from pool payout addresses: {_btc(pool_sat[kind])} BTC)" if pool_sat.get(kind) else ""
            lines.append(f"  {kind:<10} {_btc(int(sat)):>14} BTC  ${usd:,.0f}{of_pools}")
        total_x = sum(d["sat"] for d in v["miner_to_exchange"])
        lines.append(f"  miner-to-exchange total: {_btc(total_x)} BTC over {len(v['miner_to_exchange'])} day(s)")
        last = next((p for p in reversed(v["mpi"]) if p["mpi"] is not None), None)
        peak = max((p for p in v["mpi"] if p["mpi"] is not None), key=lambda p: p["mpi"], default=None)
        if last is not None and peak is not None:
            note = (
                ""
                if v["mpi_days_used"] >= v["mpi_window"]
                else f" (average over {v['mpi_days_used']} days: fewer than 365 covered)"
            )
            lines.append(
                f"  Miner Position Index: {last['mpi']:.2f} on {last['day']}, peak {peak['mpi']:.2f} on {peak['day']}{note}"
            )
    else:
        lines.append("no miner outflows stored yet")
    return lines


@click.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output (schema treasury-monitor.miners/1).")
@click.option("--since", default=None, help="Only blocks and flows from this time on (ISO date or time, UTC).")
@click.pass_context
def miners(ctx: click.Context, as_json: bool, since: str | None) -> None:
    """Production per pool and tracked miner from coinbases, miners' outflows and the Miner Position Index."""
    if ctx.invoked_subcommand is not None:
        return
    from monitor.cli.entities import _Ctx
    from monitor.discovery.miners import view_for_registry

    state: State = ctx.obj
    since_ts = parse_time_option(since, "--since")
    with _Ctx(state) as c:
        view = view_for_registry(c.store, c.registry, since=since_ts)
    if as_json:
        click.echo(json.dumps(view, indent=2, ensure_ascii=False))
    else:
        for line in render_view(view):
            click.echo(line)


@miners.command("backfill")
@click.option("--days", type=click.IntRange(1, 5000), required=True, help="Days of blocks to scan (144 blocks a day).")
@click.option("--no-attribution", is_flag=True, help="Measure blocks without attributing them to pools.")
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.pass_obj
def miners_backfill(state: State, days: int, no_attribution: bool, progress: bool | None) -> None:
    """Scan the coinbases of the last N days of blocks (resumes after an interruption)."""
    import monitor.run.runtime  # noqa: F401 -- module code runs at first import: before the loop, not on it
    from monitor.run.runtime import backfill_configured

    show = sys.stderr.isatty() if progress is None else progress

    def bar(done: int, total: int) -> None:
        if show:
            width = 30
            k = min(width, width * done // total) if total else width
            click.echo(f"\r  blocks [{'#' * k}{'.' * (width - k)}] {done:,}/{total:,}", nl=False, err=True)
            if done >= total:
                click.echo("", err=True)

    cfg = state.config()
    res = run_async(
        backfill_configured(
            cfg, db=state.db, days=days, now=int(SystemClock().time()), attribute=not no_attribution, progress=bar
        )
    )
    click.echo(
        f"heights {res.start:,}-{res.end:,}: {res.scanned:,} blocks scanned, {res.skipped:,} already stored, "
        f"{res.orphaned} orphaned block(s) undone, {res.spends:,} pool payout spend(s) read, "
        f"{res.requests:,} requests"
    )
    if res.error:
        raise click.ClickException(f"stopped early ({res.error}); run the same command again to resume")
