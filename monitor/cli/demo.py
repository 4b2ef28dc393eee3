"""`treasury-monitor demo`: the simulated early-2026 sell-off, end to end, offline, in under a minute.

It builds the scenario (`monitor.sim.scenario`: a chain calibrated to the published figures, every
address invented and labelled so), serves it through the local Esplora server on 127.0.0.1, and runs the
REAL daemon (`monitor.run.daemon.Daemon`: scheduler, pipeline, classification, outbox, HTTP API) against it
with an accelerated clock: simulated time runs `speed` times faster than wall time, each scenario step is
applied when the clock reaches it, and alerts print on the console as the episode unfolds. Every alert is
labelled SIMULATED in its title and body on every channel; it goes to the user's own channels (Slack,
email, webhook of their config) only when asked (`to_user_channels`, the CLI's `--to-my-channels`), and
channels stamp it with the real send time (the simulated event time is in the body), so webhook
signatures verify at a receiver on real time. At the end it prints a summary per entity, checks it
against the scenario's hand-written expectations, and writes the HTML report.

With `serve=True` the daemon, and so its dashboard (`monitor.output.dashboard`), stays up on the demo's database
after the episode: the clock drops to real time and the simulated chain keeps being watched until the
process is stopped (or until `on_serve`, given the live parts, returns).

Nothing here reaches the network: the chain, the Esplora server, the prices (the bundled simulated series)
and the alert channels are all local.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tempfile
import tomllib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from monitor.clock import AcceleratedClock, Stopwatch, SystemClock
from monitor.config import Config, load_config, parse_config
from monitor.model import ConfigError, format_btc
from monitor.output.report import build_report, summarize_entities
from monitor.run.daemon import Daemon
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.scenario import Scenario, build_scenario
from storage import Store
from storage.reads import alert_counts, latest_verdicts

__all__ = ["DemoResult", "DemoServer", "EntityCheck", "run_demo", "DEFAULT_SPEED", "DEFAULT_SEED", "ALERT_LABEL"]

log = logging.getLogger("treasury_monitor.demo")

DEFAULT_SEED = 2026
#: Every demo alert says so in its title and body, on every channel.
ALERT_LABEL = "SIMULATED"
#: Simulated seconds per wall second: the ~90-day episode then plays in about 30 s.
DEFAULT_SPEED = 260_000.0
#: Real seconds between polls of the simulated chain (the daemon's poll interval during the demo).
POLL_INTERVAL = 0.15


@dataclass(frozen=True)
class EntityCheck:
    """One entity's outcome against what the scenario scripted."""

    name: str
    sold_btc: str
    expected_btc: str
    custody_btc: str
    usd: float
    verdicts: dict[str, int]
    severity: str | None
    retracted: int
    is_ok: bool  # sold total and every hand-written verdict as scripted
    mismatched: tuple[str, ...] = ()  # scripted verdicts the monitor did not reach


@dataclass(frozen=True)
class DemoResult:
    """What the demo did: per-entity checks, alert counts, the report path, wall time."""

    checks: tuple[EntityCheck, ...]
    alerts: dict[str, int]
    report: Path | None
    db: Path
    seconds: float

    @property
    def is_ok(self) -> bool:
        return all(c.is_ok for c in self.checks)


@dataclass(frozen=True)
class DemoServer:
    """The live parts of a served demo: the dashboard's address, the daemon, the simulated chain."""

    url: str
    daemon: Daemon
    chain: SimChain
    scenario: Scenario


def _with_user_channels(demo: Config, user: Config | None) -> Config:
    """The demo config plus the user's alert channels and rules (Slack/email), when they defined any."""
    if user is None or not user.alerts.channels:
        return demo
    channels = demo.alerts.channels + tuple(
        c for c in user.alerts.channels if c.name not in {d.name for d in demo.alerts.channels}
    )
    return dataclasses.replace(
        demo, alerts=dataclasses.replace(demo.alerts, channels=channels, rules=demo.alerts.rules + user.alerts.rules)
    )


def _user_config(path: str | None) -> Config | None:
    if not path or not Path(path).exists():
        return None
    try:
        return load_config(path)
    except ConfigError as exc:
        log.warning("demo: %s is not usable (%s); alerts go to the console only", path, exc.problems[0])
        return None


async def run_demo(
    *,
    seed: int = DEFAULT_SEED,
    speed: float = DEFAULT_SPEED,
    scale: float = 1.0,
    out: Path | None = Path("report.html"),
    db: Path | None = None,
    user_config: str | None = None,
    to_user_channels: bool = False,
    echo=print,
    serve: bool = False,
    port: int = 0,
    on_serve: Callable[[DemoServer], Awaitable[None]] | None = None,
) -> DemoResult:
    """Play the scenario against the real daemon; print alerts, a summary and write the report.

    With `serve` the daemon listens on 127.0.0.1:`port` and stays up after the episode: until cancelled
    (Ctrl-C), or until `on_serve(DemoServer)` returns when it is given.
    """
    watch = Stopwatch()
    # Building the scenario (a file read and a full play-through), the files, the database and the
    # report all run in worker threads: the daemon shares this loop and must never wait on them.
    scenario: Scenario = await asyncio.to_thread(build_scenario, seed=seed, scale=scale)
    for line in scenario.describe():
        echo(line)
    workdir = Path(await asyncio.to_thread(tempfile.mkdtemp, prefix="treasury-monitor-demo-"))
    db_path = db or workdir / "demo.db"
    await asyncio.to_thread(db_path.unlink, missing_ok=True)
    run = scenario.start()
    clock = AcceleratedClock(scenario.start_time, speed)
    async with EsploraServer(run.chain) as server:
        cfg, skipped = await asyncio.to_thread(
            _demo_config, scenario, server.url, db_path, workdir, user_config, to_user_channels
        )
        if skipped:
            echo(
                f"\nYour config's channels ({', '.join(skipped)}) are not used: pass --to-my-channels to send "
                "them the demo's SIMULATED alerts."
            )
        daemon = Daemon(cfg, clock=clock, port=port if serve else 0, send_clock=SystemClock(), alert_label=ALERT_LABEL)
        task = asyncio.create_task(daemon.run(install_signals=False))
        while daemon.bound_port is None:
            if task.done():
                await task  # raises what stopped the daemon
            await asyncio.sleep(0.01)
        url = f"http://127.0.0.1:{daemon.bound_port}/"
        echo(
            f"\nThe daemon is running (dashboard at {url}, API at {url}api/flows); "
            f"simulated time runs {speed:,.0f}x faster than real time. Alerts:\n"
        )
        source = cfg.sources[0].name
        for step in scenario.steps:
            await asyncio.sleep(clock.wall_until(step.at))
            run.apply(step)
            if step.observe:
                # An RBF or reorg must be seen before the next step rewrites it: wait for a full poll.
                await _one_poll(daemon, source, task)
        await _one_poll(daemon, source, task)
        await _one_poll(daemon, source, task)
        if not serve:
            daemon.request_stop()
            await task
        else:
            clock.set_speed(1.0)
        try:
            result = await _conclude(db_path, scenario, out, echo, watch)
            if serve:
                echo(f"\nThe dashboard stays up at {url} on the demo's database (Ctrl-C to stop).")
                if on_serve is not None:
                    await on_serve(DemoServer(url, daemon, run.chain, scenario))
                else:
                    await asyncio.Event().wait()
        finally:
            if not task.done():
                daemon.request_stop()
                await task
    return result


async def _conclude(db_path: Path, scenario: Scenario, out: Path | None, echo, watch: Stopwatch) -> DemoResult:
    """Print the per-entity checks and alert counts, write the report; the demo's result."""
    checks, alerts = await asyncio.to_thread(_check, db_path, scenario)
    echo("")
    echo("Per entity (sold = outflows with a sale verdict; custody = to custodians, not counted as sold;")
    echo("expected = what the simulated scenario scripted from the published figures):")
    echo(f"{'entity':<12} {'sold BTC':>15} {'expected':>15} {'custody BTC':>13} {'sold USD':>15}  {'worst':<9} verdicts")
    for c in checks:
        verdicts = ", ".join(f"{v} {n}" for v, n in sorted(c.verdicts.items()))
        mark = "ok" if c.is_ok else "MISMATCH"
        echo(
            f"{c.name:<12} {c.sold_btc:>15} {c.expected_btc:>15} {c.custody_btc:>13} {c.usd:>15,.0f}  "
            f"{c.severity or '-':<9} {verdicts}{'; retracted ' + str(c.retracted) if c.retracted else ''}  [{mark}]"
        )
    for c in checks:
        for m in c.mismatched:
            echo(f"  MISMATCH {c.name}: {m}")
    scripted = any(f.verdict is not None for e in scenario.expected.values() for f in e.flows)
    echo(
        "[ok] means: the sold total and every sale's verdict are what the scenario's hand-written script expects"
        if scripted
        else "[ok] means: the sold total is what the scenario scripted (verdicts are hand-written only "
        "for the default seed and reduced scales)"
    )
    echo(f"\nalerts: {', '.join(f'{k} {v}' for k, v in sorted(alerts.items()))}")
    report = None
    if out is not None:
        size = await asyncio.to_thread(_write_report, db_path, scenario, out)
        report = out
        echo(f"report: {out} ({size / 1e6:.1f} MB, open it in a browser; no network needed)")
    seconds = watch.seconds()
    echo(f"database: {db_path}\nfinished in {seconds:.1f} s")
    return DemoResult(tuple(checks), alerts, report, db_path, seconds)


def _demo_config(
    scenario: Scenario, url: str, db_path: Path, workdir: Path, user_config: str | None, to_user_channels: bool = False
) -> tuple[Config, tuple[str, ...]]:
    """The demo's config against the local server, plus the user's channels when asked (reads files:
    worker thread); also the names of the user's channels left out."""
    text = scenario.config_toml(url, db_path, poll_interval=POLL_INTERVAL)
    cfg = parse_config(tomllib.loads(text), base_dir=workdir, origin="demo config")
    cfg = dataclasses.replace(cfg, alerts=dataclasses.replace(cfg.alerts, dispatch_interval=0.1))
    user = _user_config(user_config)
    if not to_user_channels:
        return cfg, tuple(c.name for c in user.alerts.channels if c.type != "console") if user else ()
    return _with_user_channels(cfg, user), ()


def _write_report(db_path: Path, scenario: Scenario, out: Path) -> int:
    """Write the HTML report of the demo database to `out`; returns its length (worker thread)."""
    store = Store(db_path)
    try:
        html = build_report(
            store,
            sources=scenario.sources,
            simulated=True,
            now=int(scenario.end_time),
            title="treasury-monitor demo: the simulated 2026 sell-off",
        )
    finally:
        store.close()
    out.write_text(html, encoding="utf-8")
    return len(html)


async def _one_poll(daemon: Daemon, source: str, task: asyncio.Task) -> None:
    """Wait until the daemon has started and finished one more poll of `source` after now."""
    st = daemon.states.get(source)
    target = (st.polls if st else 0) + 2  # the poll in progress may predate the change: wait for the next
    daemon.wake(source, "demo step")
    while (daemon.states.get(source).polls if daemon.states.get(source) else 0) < target:
        if task.done():
            await task
        await asyncio.sleep(0.01)


def _check(db_path: Path, scenario: Scenario) -> tuple[list[EntityCheck], dict[str, int]]:
    store = Store(db_path)
    try:
        summaries = {s.name: s for s in summarize_entities(store)}
        alerts = alert_counts(store)
        verdicts = latest_verdicts(store)
    finally:
        store.close()
    checks = []
    for name, exp in scenario.expected.items():
        s = summaries.get(name)
        sold = s.sold_units if s else 0
        # Each scripted verdict (EXPECTED_SALES, written by hand) against the newest stored classification.
        mismatched = [f for f in exp.flows if f.verdict is not None and verdicts.get((f.txid, name)) != f.verdict]
        checks.append(
            EntityCheck(
                name=name,
                sold_btc=format_btc(sold),
                expected_btc=format_btc(exp.sold_sat),
                custody_btc=format_btc(s.custody_units if s else 0),
                usd=s.sold_usd if s else 0.0,
                verdicts=dict(s.verdicts) if s else {},
                severity=s.max_severity if s else None,
                retracted=s.retracted if s else 0,
                is_ok=sold == exp.sold_sat and not mismatched,
                mismatched=tuple(
                    f"{f.description}: expected {f.verdict}, got {verdicts.get((f.txid, name))}" for f in mismatched
                ),
            )
        )
    return checks, alerts
