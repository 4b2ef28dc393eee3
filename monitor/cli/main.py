"""The `treasury-monitor` command line: thin click commands over the library.

Each command parses its options, calls one function of a room and prints. Domain errors become
`click.ClickException` here and nowhere else; a bad config exits with status 2 and every problem.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path

import click

from monitor import __version__
from monitor.cli.common import State, open_existing_store, parse_time_option, run_async
from monitor.clock import SystemClock
from monitor.config import Config
from monitor.model import ConfigError, MonitorError

__all__ = ["cli"]

DEFAULT_CONFIG = "config.toml"
CONFIG_ENV = "TREASURY_MONITOR_CONFIG"

log = logging.getLogger("treasury_monitor")


def _setup_logging(level: str, fmt: str) -> None:
    from monitor.run.logs import configure_logging

    configure_logging(level=level, fmt=fmt)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="treasury-monitor")
@click.option(
    "-c",
    "--config",
    "config_path",
    envvar=CONFIG_ENV,
    default=DEFAULT_CONFIG,
    show_default=True,
    help=f"Config file (or ${CONFIG_ENV}).",
)
@click.option("--db", type=click.Path(dir_okay=False), default=None, help="SQLite file; overrides [monitor].storage.")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="warning", show_default=True)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Readable lines or JSON lines on stderr.",
)
@click.pass_context
def cli(ctx: click.Context, config_path: str, db: str | None, log_level: str, log_format: str) -> None:
    """Watch miner and sovereign Bitcoin treasuries and explain their sales."""
    _setup_logging(log_level, log_format)
    ctx.obj = State(config_path, db)


def _refuse(state: State, problems: list[str]) -> None:
    """Print what `run` would refuse, as config errors are printed, and exit with status 2."""
    if problems:
        click.echo(f"error: invalid configuration ({state.config_path}):", err=True)
        for p in problems:
            click.echo(f"  {p}", err=True)
        sys.exit(2)


@cli.command("check-config")
@click.option("--schema", is_flag=True, help="Print the config's JSON Schema (draft 2020-12, for editors) and exit.")
@click.pass_obj
def check_config(state: State, schema: bool) -> None:
    """Validate the config file (the same checks `run` makes) and summarise it, with what each source sees."""
    if schema:  # needs no config file: an editor asks for it before there is one
        import json

        from monitor.config_schema import json_schema

        click.echo(json.dumps(json_schema(), indent=2))
        return
    from monitor.run.daemon import run_problems
    from monitor.run.runtime import build_registry, describe_source

    cfg = state.config()
    _refuse(state, run_problems(cfg, db=state.db))
    # Count what the daemon will watch: the bundled registry with the config's entities merged on top.
    try:
        reg = build_registry(cfg)
    except ValueError as exc:
        raise click.ClickException(f"entities: {exc}") from None
    tracked = reg.tracked()
    watched = sum(len(e.addresses) for e in tracked)
    n_addr = sum(len(e.addresses) for e in reg.entities.values())
    unwatched = [e.name for e in tracked if not e.addresses]
    click.echo(
        f"{state.config_path}: OK — network {cfg.network}, {len(cfg.sources)} source(s), "
        f"{len(reg.entities)} entities ({len(cfg.entities)} from this file, the rest bundled): "
        f"{len(tracked)} tracked treasuries with {watched} watched address(es), {n_addr} address(es) in "
        f"all; storage {cfg.storage}"
    )
    if unwatched:
        click.echo(
            f"  {len(unwatched)} tracked treasuries have no address yet, so nothing of theirs is watched: "
            f"{', '.join(unwatched)} (add addresses in the config or with `entities import`)"
        )
    for s in cfg.sources:
        click.echo(f"  source {s.name}: {describe_source(s, len(reg.watched_addresses(s.chain)))}")


class _Progress:
    """A progress line per address on stderr while a backfill pages through history."""

    def __init__(self, enabled: bool):
        self.enabled = enabled
        self._last: tuple[str, int] | None = None

    def __call__(self, key: str, fetched: int, total: int) -> None:
        if not self.enabled:
            return
        width = 30
        done = min(width, int(width * fetched / total)) if total else width
        click.echo(f"\r  {key[:20]:<20} [{'#' * done}{'.' * (width - done)}] {fetched}/{total} txs", nl=False, err=True)
        if fetched >= total:
            click.echo("", err=True)


def _poll_all(cfg: Config, db: str | None, *, progress: _Progress | None, whole: bool = False) -> tuple[list, list]:
    """One tick of every source (`whole`: ticks until nothing is unfinished, for `backfill`), each source's
    health recorded; returns (results, outcomes). The config is
    read and the modules imported before the loop starts: file reads (and module code run at first
    import) do not belong on the event loop."""
    from monitor.run.health import PassOutcome, health_row
    from monitor.run.runtime import runtime
    from storage.reads import save_source_health, source_health_rows

    async def go() -> tuple[list, list]:
        results, outcomes = [], []
        async with runtime(cfg, db=db) as rt:
            if not rt.sources:
                raise click.ClickException("no [[sources]] configured")
            for src in rt.sources:
                try:
                    tick = rt.pipeline.backfill if whole else rt.pipeline.tick
                    r = await tick(src, progress=progress)
                except MonitorError as exc:
                    outcomes.append(PassOutcome(src.name, "failed", str(exc)))
                    continue
                results.append(r)
                keys = getattr(src, "addresses", None)
                if r.failed and keys is not None and len(r.failed) >= len(keys):
                    outcomes.append(PassOutcome(src.name, "failed", f"every key failed: {', '.join(r.failed[:3])}"))
                elif r.failed:
                    outcomes.append(
                        PassOutcome(
                            src.name, "partial", f"{len(r.failed)} key(s) failed: {', '.join(r.failed[:3])}", r.tip_height
                        )
                    )
                else:
                    outcomes.append(PassOutcome(src.name, "ok", tip_height=r.tip_height))
            now = int(rt.clock.time())

            def save(store) -> None:
                previous = {row["source"]: row for row in source_health_rows(store)}
                with store.batch():
                    for o in outcomes:
                        save_source_health(store, health_row(previous.get(o.source), o, now))

            await rt.store.run(save)
        return results, outcomes

    return run_async(go())


def _print_results(results: list, outcomes: list) -> None:
    """Print each source's pass and exit with the documented code (monitor.run.health) when one failed."""
    from monitor.run.health import exit_code

    for r in results:
        failed = f", {len(r.failed)} failed (retried next time): {', '.join(r.failed[:3])}" if r.failed else ""
        click.echo(
            f"{r.source}: {r.txs} txs ({r.new_txs} new), {r.flows} entity flows ({r.outflows} outflows), "
            f"{r.requests} requests{failed}"
        )
    for o in outcomes:
        if o.state == "failed":
            click.echo(f"{o.source}: FAILED: {o.error}", err=True)
    code = exit_code(outcomes)
    if code:
        what = "every source failed" if code == 4 else "some sources or addresses failed"
        click.echo(f"error: {what} (exit {code}); what was read is stored, the rest is retried next time", err=True)
        sys.exit(code)


@cli.command()
@click.option("--progress/--no-progress", default=None, help="Progress bar (default: when stderr is a terminal).")
@click.pass_obj
def backfill(state: State, progress: bool | None) -> None:
    """Fetch the whole history of every watched address into the database."""
    show = sys.stderr.isatty() if progress is None else progress
    _print_results(*_poll_all(state.config(), state.db, progress=_Progress(show), whole=True))


@cli.command()
@click.pass_obj
def poll(state: State) -> None:
    """One incremental pass over every source (what the daemon does each interval)."""
    _print_results(*_poll_all(state.config(), state.db, progress=None))


@cli.command()
@click.option("--format", "fmt", type=click.Choice(["json", "jsonl", "csv"]), default="json", show_default=True)
@click.option("--since", default=None, help="Only flows at or after this ISO date/time (UTC).")
@click.option("--until", default=None, help="Only flows before this ISO date/time (UTC).")
@click.option("--entity", default=None, help="Only this entity's flows.")
@click.option("--direction", type=click.Choice(["out", "in", "internal"]), default=None)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="Write to this file instead of stdout.",
)
@click.pass_obj
def export(
    state: State, fmt: str, since: str | None, until: str | None, entity: str | None, direction: str | None, out_path: str | None
) -> None:
    """Export stored entity flows as JSON, JSON lines or CSV (schema in README)."""
    from monitor.output.export import export_flows

    since_ts = parse_time_option(since)
    until_ts = parse_time_option(until)
    cfg = state.config()
    db = Path(state.db) if state.db else cfg.storage
    if not db.exists():
        raise click.ClickException(f"no database at {db}: run `treasury-monitor backfill` first")
    with contextlib.ExitStack() as stack:
        out = stack.enter_context(open(out_path, "w", encoding="utf-8", newline="")) if out_path else sys.stdout
        n = export_flows(db, out, fmt=fmt, since=since_ts, until=until_ts, entity=entity, direction=direction)
    if out_path:
        click.echo(f"wrote {n} flow record(s) to {out_path}", err=True)


# --- alerts -----------------------------------------------------------------------------------------


@cli.group()
def alerts() -> None:
    """Alert channels and the durable outbox: test, list, retry, dispatch."""


@alerts.command("test")
@click.option("--channel", "channel_name", required=True, help="A channel name from [[alerts.channels]].")
@click.pass_obj
def alerts_test(state: State, channel_name: str) -> None:
    """Send a clearly labelled sample alert to one channel, now, and say how it went."""
    import aiohttp

    from monitor.run.alert_plan import sample_alert
    from monitor.run.runtime import build_channels

    cfg = state.config()
    if channel_name not in {c.name for c in cfg.alerts.channels}:
        known = ", ".join(c.name for c in cfg.alerts.channels) or "none configured"
        raise click.ClickException(f"no channel named {channel_name!r} (channels: {known})")

    async def send() -> None:
        clock = SystemClock()
        async with aiohttp.ClientSession() as session:
            channels = build_channels(cfg, session, clock)
            await channels[channel_name].send(sample_alert(int(clock.time()), (channel_name,)))

    try:
        asyncio.run(send())
    except MonitorError as exc:
        msg = str(exc)
        raise click.ClickException(msg if msg.startswith(f"{channel_name}:") else f"{channel_name}: {msg}") from exc
    click.echo(f"{channel_name}: sample alert delivered")


@alerts.command("list")
@click.option("--status", type=click.Choice(["queued", "delivered", "failed"]), default=None)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def alerts_list(state: State, status: str | None, as_json: bool) -> None:
    """Stored alerts with their per-channel delivery state."""
    from monitor.clock import iso
    from storage.alerts import alert_rows

    store = open_existing_store(state)
    try:
        rows = alert_rows(store, status=status)
    finally:
        store.close()
    if as_json:
        click.echo(
            json.dumps(
                [
                    {k: r[k] for k in ("id", "dedup_key", "kind", "entity", "txid", "status", "created_at", "channels")}
                    for r in rows
                ],
                indent=2,
            )
        )
        return
    if not rows:
        click.echo("no alerts" + (f" with status {status}" if status else ""))
        return
    for r in rows:
        c = (r["payload"].get("flow") or {}).get("classification") or {}
        click.echo(
            f"#{r['id']:<5} {r['status']:<9} {r['kind']:<10} {iso(r['created_at'])}  {r['entity']}  "
            f"{c.get('verdict', '-')}/{c.get('severity', '-')}  {r['dedup_key']}"
        )
        for ch in r["channels"]:
            err = f" — {ch['last_error']}" if ch["last_error"] and ch["status"] != "delivered" else ""
            click.echo(f"        {ch['channel']}: {ch['status']} after {ch['attempts']} attempt(s){err}")


@alerts.command("retry")
@click.argument("alert_id", type=int)
@click.pass_obj
def alerts_retry(state: State, alert_id: int) -> None:
    """Queue a failed alert's channels again (the dispatcher or daemon sends it)."""
    from storage.alerts import retry_alert

    store = open_existing_store(state)
    try:
        n = retry_alert(store, alert_id, now=int(SystemClock().time()))
    finally:
        store.close()
    if not n:
        raise click.ClickException(f"alert {alert_id} has no failed channel to retry (see `alerts list`)")
    click.echo(f"alert {alert_id}: {n} channel(s) queued again")


@alerts.command("dispatch")
@click.option(
    "--until-empty/--forever",
    default=True,
    show_default=True,
    help="Stop when nothing is left to deliver now, or keep dispatching until interrupted.",
)
@click.pass_obj
def alerts_dispatch(state: State, until_empty: bool) -> None:
    """Deliver queued alerts (what the daemon does in the background)."""
    import aiohttp

    from monitor.run.alert_plan import StoreThreads
    from monitor.run.runtime import build_channels, make_dispatcher
    from storage import AsyncStore
    from storage.lock import ProcessLock

    cfg = state.config()

    async def go() -> tuple[int, int]:
        clock = SystemClock()
        astore = AsyncStore(await asyncio.to_thread(open_existing_store, state))
        # One dispatcher per database (the daemon is one): refused, naming the holder, while another runs.
        lock = ProcessLock(astore.store.path)
        try:
            holder = await asyncio.to_thread(lock.acquire, "treasury-monitor alerts dispatch", now=int(clock.time()))
        except BaseException:
            await astore.close()
            raise
        try:
            async with aiohttp.ClientSession() as session:
                channels = build_channels(cfg, session, clock, StoreThreads(astore, clock))
                d = make_dispatcher(cfg, astore, channels, clock, holder.owner)
                await d.recover()
                while True:
                    n = await d.dispatch_once()
                    if n == 0:
                        if until_empty:
                            break
                        await clock.sleep(cfg.alerts.dispatch_interval)
                return d.delivered, d.failed
        finally:
            await astore.close()
            lock.release()

    delivered, failed = run_async(go())
    click.echo(f"delivered {delivered}, failed {failed}")


@cli.command()
@click.option("--host", default=None, help="HTTP bind address (default [daemon].host, 127.0.0.1).")
@click.option("--port", type=int, default=None, help="HTTP port (default [daemon].port, 8787; 0 picks a free one).")
@click.pass_obj
def run(state: State, host: str | None, port: int | None) -> None:
    """Run the daemon: poll sources, classify, alert, serve /healthz, /metrics and the JSON API."""
    from monitor.run.daemon import Daemon, run_problems

    cfg = state.config()
    h = host if host is not None else cfg.daemon.host
    _refuse(state, run_problems(cfg, db=state.db, host=h))
    try:
        daemon = Daemon(cfg, db=state.db, host=h, port=port)
        code = asyncio.run(daemon.run())
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except MonitorError as exc:
        raise click.ClickException(str(exc)) from exc
    if daemon.fatal:
        click.echo(f"error: {daemon.fatal}; the daemon stopped", err=True)
    sys.exit(code)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def status(state: State, as_json: bool) -> None:
    """Per source: cursor keys, last success, lag and last error; alerts queued and failed."""
    from monitor.clock import iso
    from storage.alerts import status_counts
    from storage.reads import source_health_rows

    store = open_existing_store(state)
    try:
        now = SystemClock().time()
        health = {r["source"]: r for r in source_health_rows(store)}
        cfg = state.config()
        sources = []
        for s in cfg.sources:
            h = health.get(s.name, {})
            cursors = store.cursors(s.name)
            sources.append(
                {
                    "source": s.name,
                    "cursor_keys": len(cursors),
                    "last_success": iso(h.get("last_success_at")),
                    "lag_seconds": round(now - h["last_success_at"]) if h.get("last_success_at") else None,
                    "failing_since": iso(h.get("failing_since")),
                    "last_error": h.get("last_error") or None,
                    "tip_height": h.get("tip_height"),
                }
            )
        alerts_by_status = status_counts(store)
    finally:
        store.close()
    if as_json:
        click.echo(json.dumps({"sources": sources, "alerts": alerts_by_status}, indent=2))
        return
    for s in sources:
        err = (
            f"; failing since {s['failing_since']}: {s['last_error']}"
            if s["failing_since"]
            else (f"; last error: {s['last_error']}" if s["last_error"] else "")
        )
        lag = f"{s['lag_seconds']} s ago" if s["lag_seconds"] is not None else "never"
        click.echo(
            f"{s['source']}: {s['cursor_keys']} cursor(s), last success {lag}"
            f"{', tip ' + str(s['tip_height']) if s['tip_height'] else ''}{err}"
        )
    click.echo(
        "alerts: " + ", ".join(f"{k} {v}" for k, v in sorted(alerts_by_status.items())) if alerts_by_status else "alerts: none"
    )


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.pass_obj
def scenarios(state: State, as_json: bool) -> None:
    """Hashprice, breakeven power price and which tracked miners are below cash cost at price scenarios."""
    from monitor.market import scenarios as sc
    from monitor.run.runtime import build_registry

    cfg = state.config()
    db = Path(state.db) if state.db else cfg.storage
    inp = sc.inputs_from_store(db)
    miners = [e for e in build_registry(cfg).entities.values() if e.kind == "miner"]
    table = sc.scenario_table(inp, miners)
    doc = sc.as_json(inp, table)
    if as_json:
        click.echo(json.dumps(doc, indent=2))
        return
    i = doc["inputs"]
    click.echo(
        f"difficulty {i['difficulty'] / 1e12:.2f} T at height {i['height']} ({i['chain_source']}); "
        f"today ${i['today_usd']:,.0f} ({i['today_source']})"
    )
    for s in doc["scenarios"]:
        q = s["quoted_hashprice"]
        quoted = f" (CoinShares quoted ~${q['value']:.0f})" if q else ""
        click.echo(f"\n{s['label']}: BTC ${s['btc_usd']:,.0f} → hashprice ${s['hashprice_usd_per_ph_day']:.2f}/PH/day{quoted}")
        click.echo(
            "  breakeven power: "
            + ", ".join(f"{b['j_per_th']:g} J/TH ${b['usd_per_kwh']:.3f}/kWh" for b in s["breakeven_usd_per_kwh"])
        )
        click.echo(
            "  difficulty: "
            + ", ".join(
                f"{d['change']} ({d['difficulty'] / 1e12:.1f} T) → ${d['hashprice_usd_per_ph_day']:.2f}/PH/day"
                for d in s["difficulty_cases"]
            )
        )
        below = s["below_cash_cost"]
        click.echo(
            "  below cash cost: "
            + (", ".join(f"{b['miner']} (cost ${b['cash_cost_usd']:,.0f}, {b['gap_pct']:.1f}% under)" for b in below) or "none")
        )


@cli.command()
@click.option(
    "--speed", type=float, default=None, help="Simulated seconds per real second (default: the ~90-day episode in about 30 s)."
)
@click.option("--seed", type=int, default=None, help="Scenario seed (tranche sizes, fees, addresses; not the figures).")
@click.option(
    "--scale",
    type=click.FloatRange(0.05, 1.0),
    default=1.0,
    show_default=True,
    help="Shrink the number of payouts and tranches (totals stay the published ones).",
)
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default="report.html",
    show_default=True,
    help="Where to write the HTML report.",
)
@click.option(
    "--to-my-channels",
    is_flag=True,
    default=False,
    help="Also send the SIMULATED alerts to the channels of your config (Slack, email, webhook).",
)
@click.option(
    "--serve",
    is_flag=True,
    help="Keep the daemon and its dashboard up on the demo's database after the episode (Ctrl-C to stop).",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="Dashboard port on 127.0.0.1 with --serve (0: any free port).",
)
@click.pass_obj
def demo(
    state: State, speed: float | None, seed: int | None, scale: float, out_path: str, to_my_channels: bool, serve: bool, port: int
) -> None:
    """Offline demo: a SIMULATED chain of the 2026 sell-off, watched by the real daemon, then a report."""
    from monitor.cli.demo import DEFAULT_SEED, DEFAULT_SPEED, run_demo

    try:
        result = run_async(
            run_demo(
                seed=DEFAULT_SEED if seed is None else seed,
                speed=DEFAULT_SPEED if speed is None else speed,
                scale=scale,
                out=Path(out_path),
                db=Path(state.db) if state.db else None,
                user_config=state.config_path,
                to_user_channels=to_my_channels,
                echo=click.echo,
                serve=serve,
                port=port,
            )
        )
    except KeyboardInterrupt:  # how a served demo ends
        click.echo("\nstopped")
        return
    if not result.is_ok:
        raise click.ClickException("the monitor's conclusions differ from what the scenario scripted (see MISMATCH above)")


@cli.command()
@click.option(
    "--out",
    "out_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output file (default report.html, or report.png with --format png).",
)
@click.option("--format", "fmt", type=click.Choice(["html", "png"]), default="html", show_default=True)
@click.option("--since", default=None, help="Only flows at or after this ISO date/time (UTC).")
@click.option("--until", default=None, help="Only flows before this ISO date/time (UTC).")
@click.option("--entity", default=None, help="Only this entity.")
@click.option("--full", is_flag=True, help="Open every collapsed section (alerts, flow tables, 30-day bars).")
@click.pass_obj
def report(
    state: State, out_path: str | None, fmt: str, since: str | None, until: str | None, entity: str | None, full: bool
) -> None:
    """A self-contained HTML report with charts (or one PNG chart) from the stored flows and alerts."""
    from monitor.output.report import write_report

    since_ts = parse_time_option(since)
    until_ts = parse_time_option(until)
    store = open_existing_store(state)
    db = store.path
    store.close()
    out = Path(out_path or f"report.{fmt}")
    options = {"since": since_ts, "until": until_ts, "entity": entity}
    if fmt == "html":
        options["now"] = int(SystemClock().time())
        options["full"] = full
    n = write_report(db, out, fmt=fmt, **options)
    click.echo(f"wrote {out} ({n:,} bytes)")


def _register_groups() -> None:
    # Command groups that live in their own modules (they import monitor.cli.common, not this module).
    from monitor.cli.entities import entities
    from monitor.cli.miners import miners

    cli.add_command(entities)
    cli.add_command(miners)


_register_groups()
