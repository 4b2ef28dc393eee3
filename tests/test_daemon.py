"""The daemon for real: subprocess `treasury-monitor run` against the local Esplora server and receivers.

Covers: alert end to end, /healthz, /metrics (parsed with prometheus_client), SIGTERM → exit 0 with the
outbox flushed, kill -9 mid-tick → same rows and alerts as an uninterrupted run, a failing source →
503 then recovery, /api/events resumed across a restart, and the bearer-token rules.
"""

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import aiohttp
from builders import (
    COIN,
    MARCH_5_2026,
    ROOT,
    bitcoind_source,
    config_toml,
    entity_table,
    env,
    esplora_source,
    miner_profile,
    rule,
    slack_channel,
    until,
    wait_http,
)
from fakes.receiver import Receiver, free_port
from prometheus_client.parser import text_string_to_metric_families

from monitor.clock import SystemClock
from monitor.config import load_config
from monitor.run.daemon import Daemon
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer


def esplora(url: str, name: str = "local", interval: float = 0.3) -> dict:
    """An Esplora source polled fast, with one retry."""
    return esplora_source(name, url, rate_limit=500.0, timeout=2.0, retries=1, poll_interval=interval)


async def write_config(path: Path, sources: list[dict], addrs: dict[str, str], *, port: int, db: Path, **daemon) -> Path:
    """The miner's hot wallets and an exchange, every alert to Slack, the daemon on `port` (`daemon`: more keys)."""
    await asyncio.to_thread(
        path.write_text,
        config_toml(
            db=db,
            sources=sources,
            entities=[
                entity_table(
                    "Test Miner", "miner", [a for k, a in addrs.items() if k.startswith("hot")], profile=miner_profile()
                ),
                entity_table("Test Exchange", "exchange", [addrs["exchange"]]),
            ],
            alerts={"max_age": 100000000, "dispatch_interval": 0.2, "retry_base": 0.2, "retry_cap": 1.0},
            channels=[slack_channel("slack", "TM_SLACK_URL")],
            rules=[rule("all", ["slack"], min_severity="info")],
            daemon={"port": port, "shutdown_grace": 5, "unhealthy_after": 1.5, "digest_hour": -1, **daemon},
        ),
    )
    return path


async def start_daemon(cfg: Path, env: dict, *extra: str) -> subprocess.Popen:
    # Popen waits until the child has exec'd: off the loop
    return await asyncio.to_thread(
        subprocess.Popen,
        [sys.executable, "-m", "monitor", "-c", str(cfg), "--log-level", "info", "run", *extra],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def wait_exit(proc: subprocess.Popen, timeout: float) -> int:
    return await asyncio.to_thread(proc.wait, timeout)


def chain_with_wallet(n_hot=1):
    chain = SimChain(start_time=MARCH_5_2026)
    addrs = {f"hot{i}": chain.address(f"daemon-hot-{i}") for i in range(n_hot)}
    addrs["exchange"] = chain.address("daemon-exchange")
    for i in range(n_hot):
        chain.fund(addrs[f"hot{i}"], 500 * COIN)
    chain.mine()
    return chain, addrs


async def test_run_alerts_health_metrics_and_sigterm(tmp_path):
    chain, addrs = chain_with_wallet()
    port = free_port()
    async with EsploraServer(chain) as server, Receiver() as slack:
        cfg = await write_config(tmp_path / "c.toml", [esplora(server.url)], addrs, port=port, db=tmp_path / "d.db")
        proc = await start_daemon(cfg, {"TM_SLACK_URL": slack.url("/hook/secret-abc")})
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_http(base + "/healthz", proc=proc)
            await until(lambda: len([p for p in server.requests if p.startswith("/address/")]) >= 2)
            sale = chain.pay([addrs["hot0"]], [(addrs["exchange"], 42 * COIN)], fee=3_000)
            chain.mine()
            reqs = await slack.wait_for(1, timeout=20)
            assert sale.txid in json.dumps(reqs[0].json)
            async with aiohttp.ClientSession() as s:
                async with s.get(base + "/healthz") as r:
                    body = await r.json()
                    assert r.status == 200 and body["sources"]["local"]["healthy"] is True
                async with s.get(base + "/metrics") as r:
                    text = await r.text()
                fams = {f.name: f for f in text_string_to_metric_families(text)}
                polls = {s.labels["source"]: s.value for s in fams["treasury_monitor_polls"].samples}
                assert polls["local"] >= 1
                alerts = {s.labels["status"]: s.value for s in fams["treasury_monitor_alerts"].samples}
                assert alerts["delivered"] == 1
                assert any(s.value >= 1 for s in fams["treasury_monitor_classifications"].samples)
                assert fams["treasury_monitor_delivery_latency_seconds"].type == "histogram"
                async with s.get(base + "/api/flows?direction=out") as r:
                    [flow] = await r.json()
                    assert flow["txid"] == sale.txid and flow["classification"]["verdict"]
                async with s.get(base + "/api/miners") as r:  # the miner view: the sale is miner-to-exchange
                    view = await r.json()
                    assert view["schema"] == "treasury-monitor.miners/1" and view["blocks_scanned"] == 0
                    assert view["miner_to_exchange"][0]["sat"] == 42 * COIN and view["mpi_days_used"] == 1
            # one more sale, then SIGTERM right away: the tick finishes and the outbox is flushed
            chain.pay([addrs["hot0"]], [(addrs["exchange"], 7 * COIN)], fee=3_000)
            chain.mine()
            n = len(server.requests)
            await until(lambda: len(server.requests) > n + 1)
            proc.send_signal(signal.SIGTERM)
            code = await wait_exit(proc, 15)
            assert code == 0, await asyncio.to_thread(proc.stderr.read)
            assert (
                await asyncio.to_thread(
                    lambda: (
                        sqlite3.connect(tmp_path / "d.db")
                        .execute("select count(*) from alert_channels where status != 'delivered'")
                        .fetchone()[0]
                    )
                )
                == 0
            )
            assert "secret-abc" not in await asyncio.to_thread(proc.stderr.read)
        finally:
            if proc.poll() is None:
                proc.kill()


def hot_cursors(db_path: Path, addrs: dict[str, str]) -> int:
    """Cursors of the test's hot wallets (bundled sovereign addresses are polled too, and fail here)."""
    hot = {a for k, a in addrs.items() if k.startswith("hot")}
    rows = sqlite3.connect(db_path).execute("select key from cursors").fetchall()
    return sum(1 for (k,) in rows if k in hot)


def snapshot(db_path: Path) -> dict:
    db = sqlite3.connect(db_path)
    q = lambda sql: sorted(db.execute(sql).fetchall())  # noqa: E731
    return {
        "txs": q("select txid, block_height, status, fee_units from transactions"),
        "flows": q("select txid, entity, out_units, change_units, received_units, direction, status from flows"),
        "classes": q("select txid, entity, verdict, severity, version, status from classifications"),
        "alerts": q("select dedup_key, kind from alerts"),
        "cursors": q("select source, key from cursors"),
    }


async def test_kill_9_mid_tick_then_restart_equals_an_uninterrupted_run(tmp_path):
    chain, addrs = chain_with_wallet(n_hot=12)
    for i in range(12):
        for j in range(4):
            chain.pay([addrs[f"hot{i}"]], [(addrs["exchange"], (j + 1) * COIN)], fee=1_000 + j)
        chain.mine()
    async with EsploraServer(chain) as server, Receiver() as slack:
        env = {"TM_SLACK_URL": slack.url("/hook")}
        # reference: an uninterrupted run
        port = free_port()
        ref_cfg = await write_config(tmp_path / "ref.toml", [esplora(server.url)], addrs, port=port, db=tmp_path / "ref.db")
        proc = await start_daemon(ref_cfg, env)
        await wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        await until(lambda: asyncio.to_thread(lambda: hot_cursors(tmp_path / "ref.db", addrs) == 12), timeout=40)
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0
        ref = await asyncio.to_thread(snapshot, tmp_path / "ref.db")
        ref_deliveries = len(slack.requests)
        assert ref_deliveries == len(ref["alerts"]) == 48  # one delivery per alert when nothing crashes
        slack.clear()
        # the same work, killed with SIGKILL while ticks run (slow answers keep a tick in flight)
        server.faults.add(r"^/address/", "slow", times=None, delay=0.05)
        port = free_port()
        cfg = await write_config(tmp_path / "k.toml", [esplora(server.url)], addrs, port=port, db=tmp_path / "k.db")
        kills = 0
        for wait in (0.8, 1.3, 0.6):
            proc = await start_daemon(cfg, env)
            await wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
            await asyncio.sleep(wait)
            proc.send_signal(signal.SIGKILL)
            await wait_exit(proc, 10)
            kills += 1
        server.faults.clear()
        proc = await start_daemon(cfg, env)
        await wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
        await until(lambda: asyncio.to_thread(lambda: hot_cursors(tmp_path / "k.db", addrs) == 12), timeout=40)
        await until(
            lambda: asyncio.to_thread(
                lambda: (
                    sqlite3.connect(tmp_path / "k.db")
                    .execute("select count(*) from alert_channels where status != 'delivered'")
                    .fetchone()[0]
                    == 0
                )
            ),
            timeout=20,
        )
        proc.send_signal(signal.SIGTERM)
        assert await wait_exit(proc, 15) == 0
        assert await asyncio.to_thread(snapshot, tmp_path / "k.db") == ref
        bodies = [json.dumps(r.json, sort_keys=True) for r in slack.requests]
        assert len(set(bodies)) == ref_deliveries  # every alert arrived
        assert len(bodies) - len(set(bodies)) <= kills  # at most one resend per crash


async def test_failing_source_goes_503_and_recovers_while_others_keep_polling(tmp_path):
    chain, addrs = chain_with_wallet()
    port = free_port()
    dead = free_port()
    async with EsploraServer(chain) as good, Receiver() as slack:
        bad = EsploraServer(chain, port=dead)
        sources = [esplora(good.url, "good", interval=0.2), esplora(f"http://127.0.0.1:{dead}/api", "bad", interval=0.2)]
        cfg = await write_config(tmp_path / "c.toml", sources, addrs, port=port, db=tmp_path / "d.db")
        os.environ["TM_SLACK_URL"] = slack.url("/hook")
        try:
            daemon = Daemon(await asyncio.to_thread(load_config, cfg), clock=SystemClock())
            task = asyncio.create_task(daemon.run(install_signals=False))
            base = f"http://127.0.0.1:{port}"
            await wait_http(base + "/healthz")
            async with aiohttp.ClientSession() as s:

                async def status():
                    async with s.get(base + "/healthz") as r:
                        return r.status, await r.json()

                code, body = await until(lambda: _is(status, 503), timeout=10)
                assert body["sources"]["bad"]["healthy"] is False and body["sources"]["good"]["healthy"] is True
                assert body["sources"]["bad"]["last_error"]
                n = daemon.states["good"].polls
                await until(lambda: daemon.states["good"].polls > n + 2)
                await bad.start()  # the source comes back
                await until(lambda: _is(status, 200), timeout=10)
            daemon.request_stop()
            assert await task == 0
        finally:
            del os.environ["TM_SLACK_URL"]
            await bad.stop()


def _is(status_coro, code):
    async def check():
        c, body = await status_coro()
        return (c, body) if c == code else None

    return check()


async def test_events_consumer_resumes_across_a_restart(tmp_path):
    chain, addrs = chain_with_wallet()
    port = free_port()
    async with EsploraServer(chain) as server, Receiver() as slack:
        cfg = await write_config(tmp_path / "c.toml", [esplora(server.url)], addrs, port=port, db=tmp_path / "d.db")
        env = {"TM_SLACK_URL": slack.url("/hook")}
        base = f"http://127.0.0.1:{port}"
        seen: list[int] = []

        async def consume(s):
            after = seen[-1] if seen else 0
            async with s.get(f"{base}/api/events?after={after}") as r:
                body = await r.json()
            seen.extend(e["id"] for e in body["events"])
            return body

        proc = await start_daemon(cfg, env)
        async with aiohttp.ClientSession() as s:
            await wait_http(base + "/healthz", proc=proc)
            for k in range(3):
                chain.pay([addrs["hot0"]], [(addrs["exchange"], (k + 1) * COIN)], fee=2_000)
                chain.mine()
            await until(lambda: slack.requests and len(slack.requests) >= 3, timeout=20)
            await consume(s)
            proc.send_signal(signal.SIGTERM)
            assert await wait_exit(proc, 15) == 0
            # while the consumer and the daemon are down, more happens
            for k in range(2):
                chain.pay([addrs["hot0"]], [(addrs["exchange"], (k + 10) * COIN)], fee=2_000)
                chain.mine()
            proc = await start_daemon(cfg, env)
            try:
                await wait_http(base + "/healthz", proc=proc)
                await until(lambda: len(slack.requests) >= 5, timeout=20)
                body = await consume(s)
                assert len(seen) == len(set(seen)) == 5 and seen == sorted(seen)
                assert {e["kind"] for e in body["events"]} == {"classification"}
                # Server-Sent Events from the start replay the same ids in order
                got = []
                async with s.get(f"{base}/api/events/stream?after=0") as r:
                    assert r.headers["Content-Type"].startswith("text/event-stream")
                    async for line in r.content:
                        if line.startswith(b"id: "):
                            got.append(int(line[4:]))
                            if len(got) == 5:
                                break
                assert got == seen
            finally:
                proc.send_signal(signal.SIGTERM)
                await wait_exit(proc, 15)


async def test_non_loopback_bind_needs_a_token_and_requests_need_it(tmp_path):
    chain, addrs = chain_with_wallet()
    async with EsploraServer(chain) as server, Receiver() as slack:
        port = free_port()
        cfg = await write_config(
            tmp_path / "c.toml", [esplora(server.url)], addrs, port=port, db=tmp_path / "d.db", host="0.0.0.0"
        )
        p = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "monitor", "-c", str(cfg), "run"],
            cwd=ROOT,
            env={**os.environ, "TM_SLACK_URL": slack.url("/h")},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 2 and "daemon.token" in p.stderr
        cfg = await write_config(
            tmp_path / "t.toml",
            [esplora(server.url)],
            addrs,
            port=port,
            db=tmp_path / "d.db",
            host="0.0.0.0",
            token=env("TM_TOKEN"),
        )
        proc = await start_daemon(cfg, {"TM_SLACK_URL": slack.url("/h"), "TM_TOKEN": "tok-123456"})
        try:
            base = f"http://127.0.0.1:{port}"
            await wait_http(base + "/healthz", proc=proc)
            async with aiohttp.ClientSession() as s:
                for path in ("/healthz", "/metrics", "/api/flows", "/api/events"):
                    async with s.get(base + path) as r:
                        assert r.status == 401, path
                async with s.get(base + "/api/flows", headers={"Authorization": "Bearer wrong"}) as r:
                    assert r.status == 401
                async with s.get(base + "/api/flows", headers={"Authorization": "Bearer tok-123456"}) as r:
                    assert r.status == 200
            # A browser: the dashboard needs the token too; `?token=` once swaps it for an HttpOnly cookie.
            # (unsafe=True: aiohttp's jar, unlike a browser's, ignores cookies from IP-address hosts otherwise)
            async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
                for path in ("/", "/entity/Test%20Miner", "/scenarios", "/static/dashboard.js", "/?token=wrong"):
                    async with s.get(base + path, allow_redirects=False) as r:
                        assert r.status == 401, path
                async with s.get(base + "/entity/Test%20Miner?token=tok-123456&page=1", allow_redirects=False) as r:
                    assert r.status == 303 and r.headers["Location"] == "/entity/Test%20Miner?page=1"
                    cookie = r.headers["Set-Cookie"]
                    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "tok-123456" in cookie
                for path in ("/", "/entity/Test%20Miner", "/scenarios", "/static/dashboard.css", "/api/events"):
                    async with s.get(base + path) as r:  # the session sends the cookie back
                        assert r.status == 200, path
            async with aiohttp.ClientSession(cookies={"treasury_monitor_token": "wrong"}) as s:
                async with s.get(base + "/") as r:
                    assert r.status == 401
        finally:
            proc.send_signal(signal.SIGTERM)
            await wait_exit(proc, 15)


async def test_bitcoind_source_in_ibd_or_with_bad_auth_keeps_the_daemon_up_then_alerts(tmp_path, monkeypatch):
    from monitor.sim.bitcoind_server import BitcoindServer

    chain, addrs = chain_with_wallet()
    port = free_port()
    node = BitcoindServer(chain, ibd=True, verification_progress=0.421)
    await node.start()
    try:
        async with Receiver() as slack:
            monkeypatch.setenv("TM_SLACK_URL", slack.url("/hook"))
            monkeypatch.setenv("TM_RPC_PASSWORD", "wrong-password")
            node_source = bitcoind_source(
                "node", node.url, rpc_user="rpcuser", rpc_password=env("TM_RPC_PASSWORD"), poll_interval=0.2, retries=1
            )
            cfg = await write_config(tmp_path / "c.toml", [node_source], addrs, port=port, db=tmp_path / "d.db")
            daemon = Daemon(await asyncio.to_thread(load_config, cfg), clock=SystemClock())
            task = asyncio.create_task(daemon.run(install_signals=False))
            await until(lambda: daemon.states.get("node") and daemon.states["node"].errors >= 2, timeout=15)
            assert "rejected the RPC credentials" in daemon.states["node"].last_error
            assert not task.done()  # the daemon stays up
            node.password = "wrong-password"  # the operator fixes the node's credentials: now IBD shows
            await until(lambda: "initial block download" in (daemon.states["node"].last_error or ""), timeout=15)
            assert "42.1%" in daemon.states["node"].last_error
            node.ibd = False  # the sync finishes: polling resumes from the tip
            await until(lambda: daemon.states["node"].failing_since is None, timeout=15)
            sale = chain.pay([addrs["hot0"]], [(addrs["exchange"], 9 * COIN)], fee=2_000)
            chain.mine()
            reqs = await slack.wait_for(1, timeout=20)
            assert sale.txid in json.dumps(reqs[0].json)
            daemon.request_stop()
            assert await task == 0
    finally:
        await node.stop()


async def test_a_push_during_a_running_poll_is_served_right_after_it(tmp_path, monkeypatch):
    chain, addrs = chain_with_wallet()
    port = free_port()
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_SLACK_URL", slack.url("/hook"))
        cfg = await write_config(
            tmp_path / "c.toml", [esplora(server.url, interval=3600)], addrs, port=port, db=tmp_path / "d.db"
        )
        daemon = Daemon(await asyncio.to_thread(load_config, cfg), clock=SystemClock())
        task = asyncio.create_task(daemon.run(install_signals=False))
        await until(lambda: daemon.states.get("local") and daemon.states["local"].polls >= 1, timeout=15)
        server.faults.add(r"^/address/", "slow", times=None, delay=0.05)  # the next poll takes a while
        daemon.wake("local", "first push")
        await until(lambda: "local" in daemon._polling, timeout=5)
        sale = chain.pay([addrs["hot0"]], [(addrs["exchange"], 5 * COIN)], fee=2_000)
        chain.mine()
        daemon.wake("local", "push while polling")  # would be skipped by the scheduler and lost
        await until(lambda: daemon.states["local"].polls >= 3, timeout=15)  # served after the running poll
        server.faults.clear()
        reqs = await slack.wait_for(1, timeout=15)
        assert sale.txid in json.dumps(reqs[0].json)
        daemon.request_stop()
        assert await task == 0


async def test_sigterm_mid_poll_is_a_clean_stop_and_says_what_is_true(tmp_path):
    """A normal SIGTERM while a poll waits on a slow source: exit 0, no ERROR, no traceback, and the
    shutdown message tells the truth about the outbox (nothing queued here)."""
    chain, addrs = chain_with_wallet()
    port = free_port()
    async with EsploraServer(chain) as server, Receiver() as slack:
        cfg = await write_config(
            tmp_path / "c.toml", [esplora(server.url, interval=0.3)], addrs, port=port, db=tmp_path / "d.db", shutdown_grace=1
        )
        proc = await start_daemon(cfg, {"TM_SLACK_URL": slack.url("/hook")})
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
            server.faults.add(r"^/address/", "slow", times=None, delay=4.0)  # every poll now hangs 4 s
            n = len(server.requests)
            await until(lambda: len(server.requests) > n)  # a poll is waiting on the slow answer
            proc.send_signal(signal.SIGTERM)
            code = await wait_exit(proc, 20)
            err = await asyncio.to_thread(proc.stderr.read)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert code == 0, err
    assert "Traceback" not in err and " ERROR " not in err and "ERROR" not in err, err
    assert "some alerts are still queued" not in err and "still queued" not in err, err


async def test_a_non_utf8_authorization_header_is_a_401_not_a_500(tmp_path, monkeypatch):
    chain, addrs = chain_with_wallet()
    port = free_port()
    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_SLACK_URL", slack.url("/hook"))
        monkeypatch.setenv("TM_TOKEN", "tok-123456")
        cfg = await write_config(
            tmp_path / "c.toml",
            [esplora(server.url, interval=3600)],
            addrs,
            port=port,
            db=tmp_path / "d.db",
            token=env("TM_TOKEN"),
        )
        daemon = Daemon(await asyncio.to_thread(load_config, cfg), clock=SystemClock())
        task = asyncio.create_task(daemon.run(install_signals=False))
        try:
            await until(lambda: daemon.bound_port is not None, timeout=15)
            for header in (b"Bearer \xff\xfe-not-utf8", "Bearer tok-123456".encode("latin-1") + b"\xe9"):
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(
                    b"GET /api/flows HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: " + header + b"\r\nConnection: close\r\n\r\n"
                )
                await writer.drain()
                answer = await reader.read()
                writer.close()
                assert answer.split(b"\r\n", 1)[0] == b"HTTP/1.1 401 Unauthorized", answer[:200]
        finally:
            daemon.request_stop()
            assert await task == 0


async def test_a_second_daemon_or_dispatcher_on_one_database_is_refused_naming_the_holder(tmp_path):
    chain, addrs = chain_with_wallet()
    async with EsploraServer(chain) as server, Receiver() as slack:
        db, port = tmp_path / "d.db", free_port()
        cfg = await write_config(tmp_path / "c.toml", [esplora(server.url)], addrs, port=port, db=db)
        env_ = {"TM_SLACK_URL": slack.url("/h")}
        first = await start_daemon(cfg, env_)
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz", proc=first)
            for args in (["--port", str(free_port())], None):
                cmd = ["run", *args] if args else ["alerts", "dispatch", "--forever"]
                p = await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "monitor", "-c", str(cfg), *cmd],
                    cwd=ROOT,
                    env={**os.environ, **env_},
                    capture_output=True,
                    text=True,
                    timeout=60,
                )
                assert p.returncode == 1, (cmd, p.stderr)
                assert f"is in use by `treasury-monitor run` (pid {first.pid} on " in p.stderr, p.stderr
                assert "Traceback" not in p.stderr
            assert first.poll() is None  # the first one is untouched
        finally:
            first.send_signal(signal.SIGTERM)
            assert await wait_exit(first, 15) == 0
        # once it is gone (a SIGKILL too: the OS releases the lock), the next one starts
        second = await start_daemon(cfg, env_)
        try:
            await wait_http(f"http://127.0.0.1:{port}/healthz", proc=second)
        finally:
            second.kill()
            await wait_exit(second, 15)
        p = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "monitor", "-c", str(cfg), "alerts", "dispatch"],
            cwd=ROOT,
            env={**os.environ, **env_},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr


async def test_a_database_deleted_or_replaced_while_running_stops_the_daemon_unhealthy(tmp_path, monkeypatch, caplog):
    chain, addrs = chain_with_wallet()

    def replace(db: Path) -> None:  # e.g. a restore copied over it: a new file (inode) under the same name
        db.with_suffix(".new").write_bytes(db.read_bytes())
        os.replace(db.with_suffix(".new"), db)

    async def lose_database(how: str, server: EsploraServer) -> None:
        db = tmp_path / f"{how}.db"
        cfg = await write_config(tmp_path / "c.toml", [esplora(server.url)], addrs, port=free_port(), db=db)
        daemon = Daemon(await asyncio.to_thread(load_config, cfg), clock=SystemClock())
        task = asyncio.create_task(daemon.run(install_signals=False))
        await until(lambda: daemon.states.get("local") and daemon.states["local"].polls >= 1, timeout=15)
        assert daemon.health()[0] is True
        await asyncio.to_thread(os.remove if how == "deleted" else replace, db)
        await until(task.done, timeout=15, what=f"the daemon stops on a {how} database")
        assert task.result() == 1
        ok, body = daemon.health()
        assert ok is False and body["status"] == "unhealthy" and how in body["database"]
        assert any(
            how in r.getMessage() and "stopping (exit status 1)" in r.getMessage()
            for r in caplog.records
            if r.levelname == "ERROR"
        )

    async with EsploraServer(chain) as server, Receiver() as slack:
        monkeypatch.setenv("TM_SLACK_URL", slack.url("/hook"))
        for how in ("deleted", "replaced"):
            await lose_database(how, server)
