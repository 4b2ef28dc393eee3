"""The daemon: scheduled watchers, outbox dispatch, price refresh, daily digest, HTTP API; graceful stop.

`treasury-monitor run` builds everything from the config (through `monitor.run.runtime`) and schedules, on
one asyncio loop with APScheduler 3's AsyncIOScheduler:

- one poll job per source (its `poll_interval`, `max_instances=1`, `coalesce=True`, 10% jitter), each
  calling the one pipeline (`Pipeline.tick`): flows → attribution → context → classification → one
  storage transaction with alerts queued and cursors advanced;
- the outbox dispatcher (`[alerts].dispatch_interval`), the price refresh (`[prices].refresh_interval`)
  and the daily digest (`[daemon].digest_hour` UTC);
- push sources (when configured) call `wake(source)` to run a source's poll job at once.

One daemon per database: `start` takes the database's process lock (`storage.lock`), and a second
daemon on the same file is refused with a message naming the holder. Before each job the database file
is checked to be the one opened: deleted or replaced, the daemon turns unhealthy and stops with exit
status 1 (without sending more alerts, whose deliveries could no longer be recorded).

SIGTERM/SIGINT: stop scheduling, let the tick in progress finish, flush the outbox for up to
`[daemon].shutdown_grace` seconds, close sessions and the database, exit 0. A second signal exits at
once (status 130). After SIGKILL a restart continues from the stored cursors; alerts left in flight are
resent once (same dedup key). A source that keeps failing never stops the daemon: its job logs the first
failure and the recovery, and /healthz turns 503 for it after `[daemon].unhealthy_after` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from apscheduler.schedulers.asyncio import AsyncIOScheduler

from monitor.clock import SystemClock, iso
from monitor.config import Config
from monitor.model import Clock, ConfigError, MonitorError, SourceError, TransientError
from monitor.run.httpapi import start_http
from monitor.run.metrics import Metrics
from monitor.run.runtime import Runtime, runtime
from storage import Store
from storage import alerts as outbox_store
from storage.lock import ProcessLock
from storage.reads import save_source_health, source_health_rows

__all__ = ["Daemon", "SourceState", "check_bind", "is_loopback_host", "run_problems"]

log = logging.getLogger("treasury_monitor.daemon")


def is_loopback_host(host: str) -> bool:
    """Whether binding to `host` keeps the API on this machine."""
    import ipaddress

    if host in ("localhost",):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: object | None) -> None:
    """Refuse a non-loopback bind without a bearer token.

    :raises ConfigError: naming the keys to set.
    """
    if not is_loopback_host(host) and token is None:
        raise ConfigError(
            f'daemon.host: {host!r} is reachable from other machines; set daemon.token = {{ env = "NAME" }} '
            "to require a bearer token, or bind to 127.0.0.1"
        )


def run_problems(config: Config, *, db: str | os.PathLike | None = None, host: str | None = None) -> list[str]:
    """What `run` refuses beyond the config file's own checks (`check-config` runs exactly these too)."""
    from storage.store import path_problem

    problems = []
    try:
        check_bind(host if host is not None else config.daemon.host, config.daemon.token)
    except ConfigError as exc:
        problems += exc.problems
    where = "--db" if db is not None else "monitor.storage"
    problem = path_problem(db if db is not None else config.storage)
    if problem is not None:
        problems.append(f"{where}: {problem}")
    return problems


@dataclass
class SourceState:
    """What /healthz, /metrics and `status` say about one source."""

    name: str
    last_success_at: float | None = None
    last_error: str | None = None
    last_error_at: float | None = None
    failing_since: float | None = None
    polls: int = 0
    errors: int = 0
    tip_height: int | None = None

    def is_healthy(self, now: float, bound: float) -> bool:
        return self.failing_since is None or now - self.failing_since <= bound

    def as_row(self, now: float) -> dict[str, Any]:
        return {
            "source": self.name,
            "last_success_at": int(self.last_success_at) if self.last_success_at else None,
            "last_error": self.last_error or "",
            "last_error_at": int(self.last_error_at) if self.last_error_at else None,
            "failing_since": int(self.failing_since) if self.failing_since else None,
            "polls": self.polls,
            "errors": self.errors,
            "tip_height": self.tip_height,
            "updated_at": int(now),
        }


class Daemon:
    """One running treasury-monitor: build with a Config, `await run()` until stopped."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Clock | None = None,
        db: str | None = None,
        host: str | None = None,
        port: int | None = None,
        send_clock: Clock | None = None,
        alert_label: str = "",
    ):
        self.config = config
        self._send_clock = send_clock
        self._alert_label = alert_label
        self.clock = clock or SystemClock()
        self._wall = SystemClock()
        self.db = db
        self.host = host if host is not None else config.daemon.host
        self.port = port if port is not None else config.daemon.port
        self.metrics = Metrics()
        self.states: dict[str, SourceState] = {}
        self.rt: Runtime | None = None
        self.scheduler: AsyncIOScheduler | None = None
        self.events = asyncio.Event()  # set whenever new classification events may be stored
        self._stop = asyncio.Event()
        self._stopping = False
        self._inflight: set[asyncio.Task] = set()
        self._stack = contextlib.AsyncExitStack()
        self._http = None
        self._push_tasks: list[asyncio.Task] = []
        self._polling: set[str] = set()  # sources whose poll is running
        self._rewake: set[str] = set()  # sources woken while polling: poll again right after
        self._followups: set[asyncio.Task] = set()
        self._push_stop = asyncio.Event()
        self.pushes: list = []
        self.bound_port: int | None = None
        self.started_at = self.clock.time()
        self._pools = None  # the bundled pools data, loaded at the first miner-view pass
        self.miner_scans = 0  # miner-view passes run
        self.fatal: str | None = None  # why the daemon must stop (its database is gone): exit status 1
        self._lock: ProcessLock | None = None

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open everything, recover the outbox, start HTTP and the scheduler.

        :raises ConfigError: on a non-loopback bind without a token.
        :raises StorageError: when another daemon holds the database (the message names it).
        """
        check_bind(self.host, self.config.daemon.token)
        # One daemon per database: a second one would poll and alert everything twice.
        self._lock = ProcessLock(self.db if self.db is not None else self.config.storage)
        holder = await asyncio.to_thread(self._lock.acquire, "treasury-monitor run", now=int(self._wall.time()))
        self.rt = await self._stack.enter_async_context(
            runtime(
                self.config,
                db=self.db,
                clock=self.clock,
                send_clock=self._send_clock,
                alert_label=self._alert_label,
                owner=holder.owner,
            )
        )
        for row in await self.rt.store.run(source_health_rows):
            st = SourceState(
                row["source"],
                row["last_success_at"],
                row["last_error"] or None,
                row["last_error_at"],
                row["failing_since"],
                row["polls"] or 0,
                row["errors"] or 0,
                row["tip_height"],
            )
            self.states[st.name] = st
        for src in self.rt.sources:
            self.states.setdefault(src.name, SourceState(src.name))
        for src in self.rt.sources:
            if hasattr(src, "start"):
                try:
                    await src.start()  # e.g. an EVM node's chain id against the config
                except TransientError as exc:
                    log.warning("source=%s not reachable at start (polling will retry): %s", src.name, exc)
                except SourceError as exc:
                    raise ConfigError(f"sources: {src.name}: {exc}") from exc
        await self.rt.dispatcher.recover()
        self._http, self.bound_port = await start_http(self, self.host, self.port)
        log.warning(
            "treasury-monitor listening on http://%s:%s (sources: %s)",
            self.host,
            self.bound_port,
            ", ".join(s.name for s in self.rt.sources) or "none",
        )
        self.scheduler = AsyncIOScheduler(timezone=UTC)
        now = self._now_dt()
        for cfg, src in zip(self.config.sources, self.rt.sources):
            self._every(
                f"poll:{src.name}",
                cfg.poll_interval,
                ("poll", self.poll_source, src.name),
                jitter=cfg.poll_interval * 0.1,
                next_run_time=now,
            )
        self._every("dispatch", self.config.alerts.dispatch_interval, ("dispatch", self.dispatch), next_run_time=now)
        if self.config.prices.sources and self.config.prices.sources != ("csv",):
            self._every("prices", self.config.prices.refresh_interval, ("prices", self.refresh_prices), next_run_time=now)
        disc = self.config.discovery
        if (disc.pools or disc.trace) and self._discovery_source() is not None:
            self._every("discovery", disc.interval, ("discovery", self.discover))
        elif disc.pools or disc.trace:
            from monitor.discovery.jobs import NO_DISCOVERY_SOURCE

            log.warning("discovery job not scheduled: %s", NO_DISCOVERY_SOURCE)
        miners = self.config.miners
        if miners.follow and self._miner_reader() is not None:
            self._every("miners", miners.interval, ("miners", self.follow_miners), next_run_time=now)
        elif miners.follow:
            log.info("miner view not kept current: no esplora or bitcoind source on chain bitcoin")
        if self.config.daemon.digest_hour >= 0:
            self.scheduler.add_job(
                self._guarded,
                "cron",
                args=("digest", self.digest),
                id="digest",
                hour=self.config.daemon.digest_hour,
                minute=0,
                max_instances=1,
                coalesce=True,
            )
        self.scheduler.start()
        self._start_pushes()

    def _start_pushes(self) -> None:
        """Push sources wake a source's poll job at once; polling stays the source of truth."""
        from monitor.run.runtime import make_pushes

        assert self.rt is not None
        self._push_stop = asyncio.Event()
        self.pushes = make_pushes(self.config, self.rt.registry, self.rt.session, self.clock)
        for name, push in self.pushes:

            def wake(reason: str = "", _name: str = name) -> None:
                self.wake(_name, reason)

            self._push_tasks.append(asyncio.create_task(push.run(wake, self._push_stop), name=f"push:{name}"))

    def wake(self, source: str, reason: str = "") -> None:
        """Run a source's poll job now (push notification); coalesced with a run already due.

        A wake that arrives while that source is polling is remembered and served right after the poll
        ends: APScheduler would skip a run of a job at `max_instances` and the push would be lost.
        """
        if self.scheduler is None or self._stopping:
            return
        if source in self._polling:
            self._rewake.add(source)
            return
        job = self.scheduler.get_job(f"poll:{source}")
        if job is not None:
            log.info("source=%s woken by push: %s", source, reason)
            job.modify(next_run_time=self._now_dt())

    def _every(self, job_id: str, seconds: float, args: tuple[Any, ...], **options: Any) -> None:
        """Schedule one guarded interval job: never two runs of it at once, missed runs coalesced."""
        self.scheduler.add_job(
            self._guarded, "interval", args=args, id=job_id, seconds=seconds, max_instances=1, coalesce=True, **options
        )

    def _now_dt(self) -> datetime:
        # The scheduler runs on wall time even when decisions use another clock (the demo's
        # accelerated one): APScheduler computes its fire times from real datetimes.
        return datetime.fromtimestamp(self._wall.time(), tz=UTC)

    async def run(self, *, install_signals: bool = True) -> int:
        """Start, serve until a stop is asked for, shut down gracefully; returns the exit status."""
        loop = asyncio.get_running_loop()
        if install_signals:
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            await self.shutdown()
        return 1 if self.fatal else 0

    def _on_signal(self, sig: signal.Signals) -> None:
        if self._stopping:
            log.warning("second %s: exiting at once", sig.name)
            os._exit(130)
        log.warning(
            "%s received: finishing the tick in progress and flushing alerts (up to %.0f s)",
            sig.name,
            self.config.daemon.shutdown_grace,
        )
        self.request_stop()

    @property
    def is_stopping(self) -> bool:
        """True once a stop was asked for (open event streams end)."""
        return self._stopping

    def request_stop(self) -> None:
        """Ask the daemon to stop gracefully."""
        self._stopping = True
        self._stop.set()

    async def shutdown(self) -> None:
        """Stop scheduling, finish in-flight work, flush the outbox within the grace period, close."""
        self._stopping = True
        grace = self.config.daemon.shutdown_grace
        # The grace period is wall time, whatever clock decisions run on (the demo's is accelerated).
        deadline = self._wall.time() + grace
        if self.scheduler is not None and self.scheduler.running:
            # pause, not shutdown: APScheduler's shutdown cancels running jobs, and the tick in progress
            # must finish (its alerts committed and sent) before the outbox is flushed
            self.scheduler.pause()
        self._push_stop.set()
        for t in self._push_tasks:
            t.cancel()
        if self._push_tasks:
            await asyncio.gather(*self._push_tasks, return_exceptions=True)
        pending = [t for t in self._inflight if not t.done()]
        if pending:
            await asyncio.wait(pending, timeout=max(0.1, grace))
        late = [t for t in self._inflight if not t.done()]
        if late:
            # A tick still waiting on a slow source after the grace period: stop it. Nothing of it was
            # committed (data and cursor commit together), so the next start repeats it.
            log.warning(
                "shutdown: %d job(s) still running after %.0f s; stopped, their work is repeated at the next start",
                len(late),
                grace,
            )
            for t in late:
                t.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        if self.rt is not None and self.fatal is None:  # a lost database records nothing: send nothing more
            remaining = max(0.0, deadline - self._wall.time())
            try:
                await self.rt.dispatcher.flush(remaining)
                # Say what is true: count what is still queued (due later, or undelivered in time).
                queued = (await self.rt.store.run(outbox_store.status_counts)).get("queued", 0)
                if queued:
                    log.warning("shutdown: %d alert(s) still queued; they will be sent after the next start", queued)
                else:
                    log.info("shutdown: no alert left queued")
            except MonitorError as exc:
                log.error("shutdown: outbox flush failed: %s", exc)
            await self._persist_health()
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        await self._stack.aclose()
        self.rt = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # --- jobs -----------------------------------------------------------------------------------

    async def _guarded(self, what: str, fn, *args) -> None:
        """Run one job: tracked for graceful stop, its unexpected errors logged, never propagated."""
        if self._stopping:
            return
        task = asyncio.current_task()
        if task is not None:
            self._inflight.add(task)
        try:
            if not await self._database_ok():
                return
            await fn(*args)
        except asyncio.CancelledError:
            if self._stopping:
                # Stopped by a graceful shutdown (which said so): a normal end, not a job failure for
                # the scheduler to log as an error with a traceback.
                return
            raise
        except Exception:  # the one broad catch of a background job: log with traceback, keep running
            log.exception("job=%s failed unexpectedly; it runs again at its next interval", what)
        finally:
            if task is not None:
                self._inflight.discard(task)

    async def _database_ok(self) -> bool:
        """Before each job: is the database file still the one we opened? If not, stop (exit 1)."""
        if self.rt is None or self.fatal is not None:
            return False
        try:
            await self.rt.store.run(Store.check_file)
        except MonitorError as exc:
            self.fatal = str(exc)
            log.error("%s: stopping (exit status 1); restore the file, or start again on a new database", exc)
            self.request_stop()
            return False
        return True

    async def poll_source(self, name: str) -> None:
        """One tick of one source; failures are recorded for health, never raised."""
        assert self.rt is not None and self.rt.pipeline is not None
        if name in self._polling:  # a wake-up run racing the scheduled one: poll again after it instead
            self._rewake.add(name)
            return
        self._polling.add(name)
        try:
            await self._poll_source(name)
        finally:
            self._polling.discard(name)
            if name in self._rewake and not self._stopping:
                # run it ourselves: the scheduler would skip a run of the job that is finishing right now
                self._rewake.discard(name)
                t = asyncio.create_task(self._guarded("poll", self.poll_source, name))
                self._followups.add(t)
                t.add_done_callback(self._followups.discard)

    async def _poll_source(self, name: str) -> None:
        assert self.rt is not None and self.rt.pipeline is not None
        src = next(s for s in self.rt.sources if s.name == name)
        st = self.states[name]
        now = self.clock.time()
        try:
            result = await self.rt.pipeline.tick(src)
        except MonitorError as exc:
            self._failed(st, str(exc), now)
            return
        st.polls += 1
        self.metrics.polls.inc(name)
        self.metrics.requests.inc(name, by=result.requests)
        if result.tip_height is not None:
            st.tip_height = result.tip_height
            self.metrics.tip_height.set(name, value=result.tip_height)
        for d in result.decisions:
            if d.is_new or d.is_changed:
                self.metrics.classifications.inc(d.classification.verdict)
        self.metrics.retractions.inc(by=result.retracted)
        if result.new_flows:
            self.metrics.flows.inc("new", by=result.new_flows)
        if result.failed and len(result.failed) == len(getattr(src, "addresses", result.failed)):
            self._failed(st, f"every key failed: {', '.join(result.failed[:3])}", now)
        else:
            if result.failed:
                self.metrics.poll_errors.inc(name)
            if st.failing_since is not None:
                log.warning("source=%s polling again after failing since %s", name, iso(st.failing_since))
            st.failing_since = None
            st.last_success_at = now
            self.metrics.up.set(name, value=1)
        if result.classified or result.retracted:
            self.events.set()
        if result.alerts:
            await self.dispatch()
        await self._persist_health()

    def _failed(self, st: SourceState, error: str, now: float) -> None:
        if st.failing_since is None:
            log.warning("source=%s poll failing: %s", st.name, error)
            st.failing_since = now
        st.errors += 1
        st.last_error, st.last_error_at = error, now
        self.metrics.poll_errors.inc(st.name)
        self.metrics.up.set(st.name, value=0)

    async def _persist_health(self) -> None:
        if self.rt is None:
            return
        now = self.clock.time()
        rows = [st.as_row(now) for st in self.states.values()]

        def save(store: Store) -> None:
            with store.batch():
                for r in rows:
                    save_source_health(store, r)

        await self.rt.store.run(save)

    async def dispatch(self) -> None:
        """One outbox pass (also run right after a tick that queued alerts)."""
        assert self.rt is not None
        d = self.rt.dispatcher
        before = (d.delivered, d.failed, d.attempts, len(d.latencies))
        await d.dispatch_once()
        self.metrics.deliveries.inc("delivered", by=d.delivered - before[0])
        self.metrics.deliveries.inc("failed", by=d.failed - before[1])
        self.metrics.deliveries.inc("retry", by=(d.attempts - before[2]) - (d.delivered - before[0]) - (d.failed - before[1]))
        for lat in d.latencies[before[3] :]:
            self.metrics.latency.observe(lat)
        if len(d.latencies) > 1000:
            del d.latencies[:-1000]

    def _discovery_source(self):
        """The source that follows coins (see `monitor.discovery.jobs.discovery_source`), made once."""
        from monitor.discovery.jobs import discovery_source

        assert self.rt is not None
        if not hasattr(self, "_disc_source"):
            self._disc_source = discovery_source(self.rt.sources, self.clock)
        return self._disc_source

    async def discover(self) -> None:
        """One pass of `discover_once` (what `entities discover` runs), with the `[discovery]` config."""
        from monitor.discovery.jobs import discover_once

        assert self.rt is not None and self.rt.pipeline is not None
        d = self.config.discovery
        pipeline = self.rt.pipeline
        result = await discover_once(
            store=self.rt.store,
            registry=pipeline.registry,
            pipeline=pipeline,
            source=self._discovery_source(),
            now=int(self.clock.time()),
            config=d,
            cospend=False,
            pools=d.pools,
            trace=d.trace,
        )
        if d.pool_auto_accept_payouts:
            # auto-accepted pool payout wallets are watched from now on
            from monitor.run.runtime import build_registry

            reg = await self.rt.store.run(lambda store: build_registry(self.config, store))
            pipeline.registry = reg
            if pipeline.on_registry_change is not None:
                pipeline.on_registry_change(reg)
        if result.traced:
            self.events.set()
            await self.dispatch()

    def _miner_reader(self):
        """The miner view's block reader (see `monitor.discovery.miners.coinbase_reader`), made once."""
        from monitor.discovery.miners import coinbase_reader

        assert self.rt is not None
        if not hasattr(self, "_miners_reader"):
            self._miners_reader = coinbase_reader(self.rt.sources, self.config.miners.source)
        return self._miners_reader

    async def follow_miners(self) -> None:
        """One miner-view pass: new blocks' coinbases up to the tip, reorgs undone (nothing while nothing is stored)."""
        from monitor.discovery.miners import follow_tip
        from monitor.discovery.pools import load_pools

        assert self.rt is not None
        if self._pools is None:
            self._pools = await asyncio.to_thread(load_pools, self.config.network)  # a file read: off the loop
        result = await follow_tip(self.rt.store, self._miner_reader(), now=int(self.clock.time()), pools=self._pools)
        self.miner_scans += 1
        if result.scanned or result.orphaned:
            log.info("miner view: %d block(s) scanned to height %d, %d orphaned", result.scanned, result.end, result.orphaned)

    async def refresh_prices(self) -> None:
        """Fetch recent BTC/USD candles into the cache."""
        assert self.rt is not None and self.rt.pipeline is not None and self.rt.pipeline.market is not None
        prices = self.rt.pipeline.market.prices
        if prices is None:
            return
        try:
            await prices.refresh("BTC-USD")
        except MonitorError as exc:
            log.warning("price refresh failed (cached prices are used; classification says when stale): %s", exc)

    async def digest(self) -> None:
        """Queue the daily digest: per entity, 24 h outflow, balance change and verdicts."""
        assert self.rt is not None
        from monitor.output.digest import queue_digest

        channels = self.config.daemon.digest_channels or tuple(
            dict.fromkeys(c for r in self.config.alerts.rules for c in r.channels)
        )
        if channels:
            await self.rt.store.run(queue_digest, channels, now=int(self.clock.time()))
            await self.dispatch()

    # --- views for the HTTP API -----------------------------------------------------------------

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Overall health and per-source detail."""
        now = self.clock.time()
        bound = self.config.daemon.unhealthy_after
        sources = {}
        ok = True
        for st in self.states.values():
            healthy = st.is_healthy(now, bound)
            ok = ok and healthy
            sources[st.name] = {
                "healthy": healthy,
                "last_success": iso(st.last_success_at),
                "lag_seconds": round(now - st.last_success_at, 1) if st.last_success_at else None,
                "failing_since": iso(st.failing_since),
                "last_error": st.last_error if st.failing_since is not None else None,
                "tip_height": st.tip_height,
                "polls": st.polls,
                "errors": st.errors,
            }
        body: dict[str, Any] = {
            "status": "ok" if ok else "unhealthy",
            "uptime_seconds": round(now - self.started_at, 1),
            "sources": sources,
        }
        if self.fatal is not None:
            ok = False
            body.update(status="unhealthy", database=self.fatal)
        return ok, body

    async def refresh_gauges(self) -> None:
        """Update gauges that come from storage (alerts by status, source ages)."""
        assert self.rt is not None
        counts = await self.rt.store.run(outbox_store.status_counts)
        for status in ("queued", "delivered", "failed"):
            self.metrics.alerts.set(status, value=counts.get(status, 0))
        now = self.clock.time()
        chains = {src.name: src.chain for src in self.rt.sources}
        best: dict[str, int] = {}  # highest tip any source of a chain reported
        for st in self.states.values():
            if st.tip_height is not None and st.name in chains:
                best[chains[st.name]] = max(best.get(chains[st.name], 0), st.tip_height)
        for st in self.states.values():
            if st.last_success_at:
                self.metrics.last_success_age.set(st.name, value=round(now - st.last_success_at, 3))
            if st.tip_height is not None:
                self.metrics.tip_height.set(st.name, value=st.tip_height)
                if st.name in chains:
                    # behind the best tip seen on its chain (0 for the leader; a lagging fallback shows)
                    self.metrics.tip_lag.set(st.name, value=best[chains[st.name]] - st.tip_height)
