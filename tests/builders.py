"""Builders for test data: sourced-looking entities, hand-made ChainTx, config.toml text and CLI/wait helpers."""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import inspect
import ipaddress
import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import aiohttp
from click.testing import CliRunner, Result
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from monitor.cli.main import cli
from monitor.model import ChainTx, Entity, EntityAddress, TxInput, TxOutput
from watchers.addresses import script_to_address

ROOT = Path(__file__).resolve().parent.parent
PRICES = ROOT / "monitor" / "data" / "btc_usd_daily.csv"
COIN = 100_000_000
MARCH_5_2026 = 1_772_668_800


def addr(label: str, kind: str = "p2wpkh") -> str:
    """A valid mainnet address derived from a label (test data only, owned by nobody)."""
    h = hashlib.sha256(label.encode()).digest()
    if kind == "p2wpkh":
        return script_to_address(b"\x00\x14" + h[:20])
    if kind == "p2pkh":
        return script_to_address(b"\x76\xa9\x14" + h[:20] + b"\x88\xac")
    if kind == "p2sh":
        return script_to_address(b"\xa9\x14" + h[:20] + b"\x87")
    if kind == "p2tr":
        return script_to_address(b"\x51\x20" + h)
    raise ValueError(kind)


def entity(name: str, kind: str = "miner", addresses: Sequence[str] = (), **kw) -> Entity:
    """An entity whose addresses are labelled as test data."""
    return Entity(
        name=name,
        kind=kind,
        addresses=tuple(EntityAddress("bitcoin", a, source="test fixture", learned_by="config") for a in addresses),
        **kw,
    )


def make_tx(
    inputs: Sequence[tuple[str | None, int]],
    outputs: Sequence[tuple[str | None, int]],
    *,
    fee: int | None = None,
    height: int | None = 880_000,
    time: int | None = 1_772_611_200,
    txid: str | None = None,
    chain: str = "bitcoin",
) -> ChainTx:
    """A ChainTx from (address, sats) pairs; the fee defaults to inputs − outputs."""
    ins = tuple(
        TxInput(a, v, prev_txid=hashlib.sha256(f"{a}{v}{k}".encode()).hexdigest(), prev_vout=k) for k, (a, v) in enumerate(inputs)
    )
    outs = tuple(TxOutput(a, v, n) for n, (a, v) in enumerate(outputs))
    if fee is None:
        fee = sum(v for _, v in inputs) - sum(v for _, v in outputs)
    if txid is None:
        txid = hashlib.sha256(repr((ins, outs, height)).encode()).hexdigest()
    return ChainTx(
        chain,
        txid,
        height,
        time if height is not None else None,
        ins,
        outs,
        fee,
        block_hash=("00" * 32 if height is not None else None),
    )


def self_signed_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 / localhost written to `directory`: (cert path, key path)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "treasury-monitor test SMTP")])
    start = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=365 * 30))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


# --- config.toml ----------------------------------------------------------------------------------------


class Table(dict):
    """A dict written as a `[parent.key]` sub-table of its table rather than inline."""


def env(name: str) -> dict:
    """A secret read from an environment variable: `{ env = "NAME" }`."""
    return {"env": name}


def fact(value: float, source: str = "test fixture", as_of: str = "2026-03-01") -> dict:
    """A sourced profile fact: `{ value = .., source = .., as_of = .. }`."""
    return {"value": value, "source": source, "as_of": as_of}


SECTOR_CASH_COST = fact(79995, "CoinShares Q1 2026 (sector average)", "2025-12-31")
CSV_PRICES = {"sources": ["csv"], "csv": str(PRICES)}  # the csv price source reading PRICES
BUNDLED_PRICES = {"sources": ["csv"]}  # the csv price source on the product's bundled series


def miner_profile(source: str = "test fixture", **more) -> dict:
    """The test miner's profile: 1000 BTC held, 50 BTC mined a month, the sector-average cash cost."""
    return {
        "holdings_btc": fact(1000, source),
        "monthly_production_btc": fact(50, source),
        "cash_cost_usd": SECTOR_CASH_COST,
        **more,
    }


def sourced(addresses: Sequence[str], source: str = "test fixture") -> list[dict]:
    """Addresses written with their source: `{ address = .., source = .. }`."""
    return [{"address": a, "source": source} for a in addresses]


def esplora_source(name: str, url: str, **opts) -> dict:
    """One `[[sources]]` table of type esplora on one URL."""
    return {"name": name, "type": "esplora", "urls": [url], **opts}


def bitcoind_source(name: str, url: str, **opts) -> dict:
    """One `[[sources]]` table of type bitcoind."""
    return {"name": name, "type": "bitcoind", "url": url, **opts}


def evm_source(name: str, url: str, **opts) -> dict:
    """One `[[sources]]` table of type evm."""
    return {"name": name, "type": "evm", "url": url, **opts}


def entity_table(
    name: str,
    kind: str,
    addresses: Sequence | None = None,
    *,
    profile: Mapping | None = None,
    ethereum: Sequence | None = None,
    **opts,
) -> dict:
    """One `[[entities]]` table (with `[entities.profile]` when a profile is given); None keys are left out."""
    return {
        "name": name,
        "kind": kind,
        **opts,
        "addresses": addresses,
        "ethereum": ethereum,
        "profile": Table(profile) if profile else None,
    }


def slack_channel(name: str, url_env: str, **opts) -> dict:
    """One `[[alerts.channels]]` Slack table, its webhook URL from `url_env`, not rate limited."""
    return {"name": name, "type": "slack", "webhook_url": env(url_env), "min_interval": 0, **opts}


def webhook_channel(name: str, url_env: str, secret_env: str | None = None, **opts) -> dict:
    """One `[[alerts.channels]]` webhook table, URL (and HMAC secret) from the environment, not rate limited."""
    return {
        "name": name,
        "type": "webhook",
        "url": env(url_env),
        "secret": env(secret_env) if secret_env else None,
        "min_interval": 0,
        **opts,
    }


def console_channel(name: str, **opts) -> dict:
    """One `[[alerts.channels]]` console table."""
    return {"name": name, "type": "console", **opts}


def rule(name: str, channels: Sequence[str], **opts) -> dict:
    """One `[[alerts.rules]]` table."""
    return {"name": name, **opts, "channels": list(channels)}


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else json.dumps(k)


def toml_value(v) -> str:
    """A TOML inline value: strings and paths (JSON escapes are TOML escapes), numbers, lists, inline tables."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str | Path):
        return json.dumps(str(v))
    if isinstance(v, Mapping):
        return "{ " + ", ".join(f"{_key(k)} = {toml_value(x)}" for k, x in v.items()) + " }" if v else "{}"
    if isinstance(v, list | tuple):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    raise TypeError(f"no TOML form for {v!r}")


def toml_table(header: str, table: Mapping, *, array: bool = False) -> str:
    """`[header]` (`[[header]]` when `array`) and its keys; `Table` values follow as sub-tables; None: left out."""
    lines = [f"[[{header}]]" if array else f"[{header}]"]
    lines += [f"{_key(k)} = {toml_value(v)}" for k, v in table.items() if v is not None and not isinstance(v, Table)]
    text = "\n".join(lines) + "\n"
    for k, v in table.items():
        if isinstance(v, Table):
            text += toml_table(f"{header}.{k}", v)
    return text


def config_toml(
    *,
    db: Path,
    sources: Sequence[Mapping] = (),
    prices: Mapping | None = CSV_PRICES,
    entities: Sequence[Mapping] = (),
    alerts: Mapping | None = None,
    channels: Sequence[Mapping] = (),
    rules: Sequence[Mapping] = (),
    daemon: Mapping | None = None,
    extra: str = "",
) -> str:
    """A whole config.toml: storage at `db`, then the given tables (`prices=None`: no [prices]); `extra`, raw
    TOML, goes last."""
    parts = [toml_table("monitor", {"storage": db})]
    parts += [toml_table("sources", s, array=True) for s in sources]
    if prices is not None:
        parts.append(toml_table("prices", prices))
    parts += [toml_table("entities", e, array=True) for e in entities]
    if alerts is not None:
        parts.append(toml_table("alerts", alerts))
    parts += [toml_table("alerts.channels", c, array=True) for c in channels]
    parts += [toml_table("alerts.rules", r, array=True) for r in rules]
    if daemon is not None:
        parts.append(toml_table("daemon", daemon))
    return "\n".join(parts) + extra


# --- running and waiting --------------------------------------------------------------------------------


async def cli_run(*args, env: Mapping[str, str] | None = None) -> Result:
    """Run the CLI in a worker thread (it has its own event loop), as a user would."""
    return await asyncio.to_thread(CliRunner().invoke, cli, [str(a) for a in args], env=env)


def cli_sync(*args) -> Result:
    """Run the CLI in this thread (for tests without a running event loop)."""
    return CliRunner().invoke(cli, [str(a) for a in args])


async def until(pred, timeout: float = 20.0, step: float = 0.1, what: str = "condition"):
    """Poll `pred()` (awaited when it returns an awaitable) until it is truthy and return that value; the
    timeout is a safety net, not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        v = pred()
        if inspect.isawaitable(v):
            v = await v
        if v:
            return v
        if loop.time() > deadline:
            raise AssertionError(f"{what}: not met within {timeout} s")
        await asyncio.sleep(step)


async def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None) -> None:
    """Wait until `url` answers at all (any status); fails early when `proc` has exited."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            if proc is not None and proc.poll() is not None:
                stderr = await asyncio.to_thread(proc.stderr.read)  # the pipe read blocks: off the loop
                raise AssertionError(f"daemon exited early ({proc.returncode}): {stderr}")
            try:
                async with s.get(url) as r:
                    await r.read()
                    return
            except aiohttp.ClientError:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)


def sql(store, query: str, params: Sequence = ()) -> list[tuple]:
    """Rows (tuples) of a read query on the store's own connection: tests peek, the product reads through storage."""
    return store._db.execute(query, list(params)).fetchall()


def sql_dicts(store, query: str, params: Sequence = ()) -> list[dict]:
    """Rows of a read query as dicts, on the store's own connection."""
    return store._query(query, params)
