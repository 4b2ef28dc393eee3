"""Composition of the parts a command needs: config → store, registry, HTTP session and sources.

The CLI's one-shot commands and the daemon build their parts here, so both run the same code
(`check-config` loads exactly what `run` loads).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from monitor.bundled import load_bundled_entities
from monitor.clock import SystemClock
from monitor.config import Config, Secret, SourceConfig
from monitor.core.registry import Registry, merge_entities
from monitor.discovery.miners import ScanResult, backfill, coinbase_reader
from monitor.discovery.pools import load_pools

# imported here, not at first use: a first import runs module code (monitor.market.prices resolves its data
# path on disk), and first use is inside runtime(), on the event loop
from monitor.market.prices import PriceService, build_price_sources
from monitor.model import Clock, ConfigError, Entity
from monitor.run.pipeline import Pipeline
from storage import AsyncStore, Store
from storage.utxos import load_utxos
from watchers.esplora import EsploraSource
from watchers.esplora_blocks import EsploraBlockSource, choose_mode, mode_sees
from watchers.http import HttpClient

__all__ = [
    "describe_source",
    "make_pushes",
    "build_registry",
    "open_store",
    "Runtime",
    "runtime",
    "make_source",
    "build_channels",
    "make_dispatcher",
    "make_planner",
    "backfill_configured",
]

log = logging.getLogger("treasury_monitor")


def build_registry(config: Config, store: Store | None = None, *, bundled: Iterable[Entity] | None = None) -> Registry:
    """Bundled entities, config entities merged on top, plus addresses learned and stored at run time."""
    base = list(bundled) if bundled is not None else load_bundled_entities()
    reg = Registry(merge_entities(base, config.entities))
    if store is not None:
        for name, addrs in store.learned_addresses().items():
            if name in reg:
                reg = reg.with_addresses(name, addrs)
    return reg


def open_store(config: Config, db: str | Path | None = None) -> Store:
    """Open (and migrate) the configured database, or `db` when given."""
    return Store(Path(db) if db is not None else config.storage)


def make_source(
    source: SourceConfig,
    registry: Registry,
    session: aiohttp.ClientSession,
    clock: Clock,
    network: str = "mainnet",
    store: Store | None = None,
):
    """A watcher for one configured source, watching the registry's tracked addresses on its chain.

    An Esplora source in `block` mode (or `auto` with many addresses) reads each block once and needs
    the stored watched-UTXO set of its chain, hence `store`.
    """
    if source.type == "esplora":
        http = HttpClient(
            source.name,
            source.urls,
            session,
            clock=clock,
            rate_limit=source.rate_limit,
            timeout=source.timeout,
            retries=max(0, source.retries - 1),  # config counts attempts, HttpClient counts retries
            headers=source.revealed_headers(),
        )
        addresses = registry.watched_addresses(source.chain)
        mode, why = choose_mode(source.mode, len(addresses))
        if source.mode == "auto":
            log.warning("source=%s %s", source.name, why)  # the user asked us to choose: say what we chose
        else:
            log.info("source=%s %s", source.name, why)
        if mode == "block":
            utxos = load_utxos(store, source.chain) if store is not None else ()
            # history=True: a newly watched address is backfilled once in address mode, then followed by blocks
            return EsploraBlockSource(
                source.name,
                http,
                addresses,
                clock=clock,
                chain=source.chain,
                utxos=utxos,
                history=True,
                network=network,
                mempool_checks=source.mempool_checks,
            )
        # fetch_tip: one request per poll buys the tip height for /healthz, /metrics and `status`
        return EsploraSource(source.name, http, addresses, clock=clock, chain=source.chain, fetch_tip=True)
    if source.type == "bitcoind":
        from watchers.bitcoind.rpc import BitcoindRpc
        from watchers.bitcoind.source import BitcoindSource

        user = source.rpc_user.reveal() if hasattr(source.rpc_user, "reveal") else source.rpc_user
        rpc = BitcoindRpc(
            source.url,
            session,
            clock=clock,
            user=user,
            password=source.rpc_password.reveal() if source.rpc_password is not None else None,
            cookie_file=source.cookie_file,
            timeout=source.timeout,
            retries=max(0, source.retries - 1),
        )
        return BitcoindSource(
            source.name,
            rpc,
            registry.watched_addresses(source.chain),
            clock=clock,
            network=source.network or network,
            start_height=source.start_height,
            max_blocks=source.max_blocks,
            max_mempool_txs=source.max_mempool_txs,
            mempool=source.mempool,
        )
    if source.type == "evm":
        from watchers.evm import DEFAULT_TOKENS, EvmSource, Token

        tokens = (
            tuple(Token(sym, addr, dec) for sym, addr, dec in source.tokens)
            if source.tokens is not None
            else (DEFAULT_TOKENS if source.chain_id == 1 else ())
        )
        return EvmSource(
            source.name,
            source.revealed_url(),
            chain=source.chain,
            chain_id=source.chain_id,
            watched=registry.watched_addresses(source.chain),
            tokens=tokens,
            confirmations=source.confirmations,
            max_log_range=source.max_log_range,
            start_block=source.start_block,
            timeout=source.timeout,
            retries=max(0, source.retries - 1),
            clock=clock,
        )
    raise ValueError(f"source type {source.type!r} is not supported")


def describe_source(source: SourceConfig, n_addresses: int) -> str:
    """What a configured source will see, in plain words (`check-config` prints it; `run` logs the mode)."""
    if source.type == "esplora":
        mode, why = choose_mode(source.mode, n_addresses)
        return f"{why}. Sees: {mode_sees(mode, n_addresses, source.mempool_checks)}"
    if source.type == "bitcoind":
        mempool = "the whole mempool" if source.mempool else "no unconfirmed txs (mempool = false)"
        return (
            f"Bitcoin Core node: confirmed txs of all {n_addresses} addresses from each new block, {mempool}; "
            f"no balances (a node keeps no address index)"
        )
    return f"{source.type}: transfers of {n_addresses} addresses from blocks ({source.confirmations} confirmations)"


def build_channels(
    config: Config, session: aiohttp.ClientSession, clock: Clock, threads: object | None = None
) -> dict[str, object]:
    """Every configured alert channel, ready to send; their secrets are registered for log redaction."""
    from alerts.channels import build_channel
    from monitor.run.logs import redact

    out = {}
    for c in config.alerts.channels:
        redact(*c.secret_values())
        out[c.name] = build_channel(c.type, c.name, c.revealed_settings(), session=session, clock=clock, threads=threads)
    return out


def make_dispatcher(config: Config, store: AsyncStore, channels: dict[str, object], clock: Clock, owner: str = ""):
    """The outbox dispatcher over the store, with the configured retry policy, claiming pairs as `owner`."""
    from alerts.outbox import Dispatcher, RetryPolicy
    from monitor.run.alert_plan import StoreQueue

    a = config.alerts
    policy = RetryPolicy(base=a.retry_base, cap=a.retry_cap, give_up_after=a.give_up_after)
    return Dispatcher(StoreQueue(store, owner), channels, clock, policy=policy)


def make_prices(config: Config, store: AsyncStore, session: aiohttp.ClientSession, clock: Clock):
    """The price service: cached candles, then the configured sources in failover order."""
    sources = build_price_sources(config.prices.sources, session, clock=clock, csv_path=config.prices.csv)
    return PriceService(store, sources, clock, staleness=config.prices.staleness)


def make_market(config: Config, store: AsyncStore, session: aiohttp.ClientSession, clock: Clock, sources: list):
    """Market context for classification: prices, and chain facts from the first source that reads blocks."""
    from monitor.market.context import Market, SourceChainInfo

    chain = next((SourceChainInfo(s) for s in sources if hasattr(s, "coinbase_total")), None)
    return Market(
        clock, prices=make_prices(config, store, session, clock), chain=chain, staleness=config.prices.staleness, store=store
    )


def make_planner(config: Config, registry: Registry, *, label: str = ""):
    """The pipeline's alert hook for the configured rules (None when no rule is configured); `label` (e.g.
    SIMULATED) is put on every alert it queues."""
    from monitor.run.alert_plan import AlertPlanner, AlertSettings
    from monitor.run.incident_alerts import IncidentSettings

    a = config.alerts
    if not (a.rules or a.dormancy or a.balance):
        return None
    return AlertPlanner(
        registry,
        AlertSettings(
            rules=a.rules,
            explorer_url=a.explorer_url,
            max_age=a.max_age,
            notify_confirmations=a.notify_confirmations,
            label=label,
            incidents=IncidentSettings(a.incident_window, a.group_wait, a.group_interval),
            dormancy=a.dormancy,
            balance=a.balance,
        ),
    )


def make_pushes(config: Config, registry: Registry, session: aiohttp.ClientSession, clock: Clock) -> list[tuple[str, object]]:
    """(source name, push) pairs: ZMQ from a node, mempool.space websocket for an Esplora source."""
    out: list[tuple[str, object]] = []
    for s in config.sources:
        addrs = registry.watched_addresses(s.chain)
        if s.type == "bitcoind" and (s.zmq_hashblock or s.zmq_rawtx):
            from watchers.push import ZmqPush

            endpoints = {k: v for k, v in (("hashblock", s.zmq_hashblock), ("rawtx", s.zmq_rawtx)) if v}
            out.append((s.name, ZmqPush(endpoints, addrs, network=s.network or config.network, name=f"{s.name}-zmq")))
        if s.type == "evm" and s.ws_url is not None:
            from watchers.evm_push import EvmHeadsPush

            url = s.ws_url.reveal() if isinstance(s.ws_url, Secret) else s.ws_url
            out.append((s.name, EvmHeadsPush(url, session=session, clock=clock, name=f"{s.name}-heads")))
        if s.type == "esplora" and s.push_url:
            from watchers.push import MempoolPush

            out.append(
                (s.name, MempoolPush(s.push_url, addrs, session=session, clock=clock, cap=s.push_cap, name=f"{s.name}-push"))
            )
    return out


@dataclass
class Runtime:
    """Everything a command needs, opened together and closed together."""

    config: Config
    store: AsyncStore
    registry: Registry
    clock: Clock
    session: aiohttp.ClientSession
    sources: list = field(default_factory=list)
    pipeline: Pipeline | None = None
    channels: dict = field(default_factory=dict)
    dispatcher: object | None = None


def redact_config_secrets(config: Config) -> None:
    """Register every secret of the config for log redaction (a second line of defence)."""
    from monitor.run.logs import redact

    values: list[str] = []
    for s in config.sources:
        values += [v.reveal() for _, v in s.headers if isinstance(v, Secret)]
        for v in (s.url, s.rpc_user, s.rpc_password, s.ws_url):
            if isinstance(v, Secret):
                values.append(v.reveal())
    for c in config.alerts.channels:
        values += c.secret_values()
    if config.daemon.token is not None:
        values.append(config.daemon.token.reveal())
    redact(*values)


@asynccontextmanager
async def runtime(
    config: Config,
    *,
    db: str | Path | None = None,
    clock: Clock | None = None,
    send_clock: Clock | None = None,
    alert_label: str = "",
    owner: str = "",
) -> AsyncIterator[Runtime]:
    """Open store, registry, one shared HTTP session and the configured sources; close them on exit.

    `send_clock` stamps what channels send (email Date, webhook timestamps) when decisions run on another
    clock (the demo's accelerated one); `alert_label` (e.g. SIMULATED) marks every queued alert. `owner` is
    the database lock's token of the process (`storage.lock`), for the outbox's claims.
    """
    clock = clock or SystemClock()
    redact_config_secrets(config)
    # Opening (migrations), the learned addresses, the entity sync and the block-mode UTXO sets are SQLite
    # work: off the loop, on the store thread, so a long start-up never freezes /healthz or a push.
    astore = AsyncStore(await asyncio.to_thread(open_store, config, db))
    try:
        registry = await astore.run(lambda store: build_registry(config, store))
        await astore.run(Store.sync_entities, registry.entities.values(), now=int(clock.time()))
    except BaseException:
        await astore.close()
        raise
    session = aiohttp.ClientSession()
    try:
        sources = await astore.run(
            lambda store: [make_source(s, registry, session, clock, config.network, store) for s in config.sources]
        )

        def rewatch(reg: Registry) -> None:
            # learned addresses (co-spend) are watched from the next poll of every source of their chain
            for src in sources:
                if hasattr(src, "set_addresses"):
                    src.set_addresses(reg.watched_addresses(src.chain))

        pipeline = Pipeline(
            registry,
            astore,
            clock,
            market=make_market(config, astore, session, clock, sources),
            thresholds=config.classify,
            alert_hook=make_planner(config, registry, label=alert_label),
            on_registry_change=rewatch,
            provisional=config.discovery.provisional,
        )
        from monitor.run.alert_plan import StoreThreads

        channels = build_channels(config, session, send_clock or clock, StoreThreads(astore, clock))
        dispatcher = make_dispatcher(config, astore, channels, clock, owner)
        yield Runtime(config, astore, registry, clock, session, sources, pipeline, channels, dispatcher)
    finally:
        for src in locals().get("sources", []):
            if hasattr(src, "close"):
                await src.close()
        await session.close()
        await astore.close()


async def backfill_configured(
    config: Any, *, db: Any, days: int, now: int, attribute: bool = True, progress: Callable[[int, int], Any] | None = None
) -> ScanResult:
    """`miners backfill`: scan the last `days` of blocks through `[miners].source` or the first Bitcoin source."""
    async with runtime(config, db=db) as rt:
        reader = coinbase_reader(rt.sources, config.miners.source)
        if reader is None:
            raise ConfigError(["miners backfill needs an esplora or bitcoind [[sources]] entry on chain bitcoin"])
        pools = await asyncio.to_thread(load_pools, config.network) if attribute else None
        return await backfill(rt.store, reader, days=days, now=now, pools=pools, progress=progress)
