"""Issue 4's last two must-shows, with real processes: the dispatcher survives SIGKILL with at most one
resend per crash (same dedup key), and no secret ever reaches a log line, an export, `alerts list`, the
daemon's HTTP answers or the SQLite file.

Everything runs as the user runs it: `python -m monitor ...` subprocesses against a real SQLite file,
local HTTP receivers (tests/fakes/receiver.py), the local Esplora server over a SimChain and a real
aiosmtpd server.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sqlite3
import ssl
import subprocess
import sys
from collections import Counter
from pathlib import Path

import aiohttp
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from builders import (
    COIN,
    MARCH_5_2026,
    ROOT,
    config_toml,
    entity_table,
    env,
    esplora_source,
    miner_profile,
    rule,
    self_signed_cert,
    slack_channel,
    sourced,
    until,
    webhook_channel,
)
from fakes.receiver import Receiver, RecordedRequest, Reply, free_port

from alerts.channels.webhook import verify_standard
from monitor.clock import SystemClock
from monitor.model import Alert
from monitor.run.alert_plan import sample_alert
from monitor.sim.chain import SimChain
from monitor.sim.esplora_server import EsploraServer
from storage import Store
from storage import alerts as outbox_store

# --- shared helpers ---------------------------------------------------------------------------------


def cli(cfg: Path, *args: str, log: tuple[str, ...] = ()) -> list[str]:
    """The argv of `python -m monitor -c CFG [log options] ARGS`."""
    return [sys.executable, "-m", "monitor", "-c", str(cfg), *log, *args]


async def spawn(argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Popen waits until the child has exec'd: off the loop
    return await asyncio.to_thread(
        subprocess.Popen, argv, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def undelivered(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("select count(*) from alert_channels where status != 'delivered'").fetchone()[0]


# --- 1. crash safety of the dispatcher ---------------------------------------------------------------

N_ALERTS = 30
HOLD_AT = (6, 16)  # the arrival number, at each receiver, answered only after the process is killed
ANSWER_DELAY = 0.2  # every other request is answered slowly, so deliveries are in flight all along
HOOK_SECRET = "whsec-crash-test-5d1c"


class Gate:
    """A receiver's `on_request` hook: answers 200 after `ANSWER_DELAY`, but holds the requests whose
    arrival number is in `HOLD_AT` (60 s; `Receiver.stop()` releases them), so the test can kill the
    dispatcher while that request is certainly unanswered."""

    def __init__(self) -> None:
        self.arrivals = 0
        self.held = asyncio.Event()

    def __call__(self, req: RecordedRequest) -> Reply:
        self.arrivals += 1
        if self.arrivals in HOLD_AT:
            self.held.set()
            return Reply(200, "ok", delay=60.0)
        return Reply(200, "ok", delay=ANSWER_DELAY)


def queue_alerts(db: Path, n: int, channels: tuple[str, ...]) -> list[str]:
    """Queue `n` alerts (realistic flow records, distinct txids and dedup keys) in one transaction."""
    now = int(SystemClock().time())
    store = Store(db)
    keys = []
    try:
        with store.batch():
            for i in range(n):
                base = sample_alert(now, channels)
                txid = f"{i + 1:064x}"
                key = f"bitcoin:{txid}:Crash Test Miner:distress_sale"
                flow = {**base.payload["flow"], "txid": txid, "entity": "Crash Test Miner"}
                payload = {**base.payload, "kind": "new", "dedup_key": key, "flow": flow}
                alert = Alert(key, "new", channels, payload, created_at=now)
                outbox_store.queue_alert(store, alert, chain="bitcoin", txid=txid, entity="Crash Test Miner", now=now)
                keys.append(key)
    finally:
        store.close()
    return keys


def dispatch_config(path: Path, db: Path) -> Path:
    """Only an outbox: a signed webhook and Slack, retried fast."""
    path.write_text(
        config_toml(
            db=db,
            prices=None,
            alerts={"dispatch_interval": 0.1, "retry_base": 0.1, "retry_cap": 0.5},
            channels=[
                webhook_channel("hook", "TM_CRASH_HOOK_URL", "TM_CRASH_HOOK_SECRET"),
                slack_channel("slack", "TM_CRASH_SLACK_URL"),
            ],
        )
    )
    return path


def arrived_keys(rx: Receiver, channel: str, keys: list[str]) -> list[str]:
    """The dedup key of every request the receiver got, in arrival order (answered or not)."""
    got = []
    for r in rx.requests:
        if channel == "hook":
            # Standard Webhooks: the id header is the body's message id, and the body is signed
            assert r.headers["webhook-id"] == r.json["message_id"]
            assert verify_standard(HOOK_SECRET, r.headers, r.body, now=SystemClock().time())
            got.append(r.json["dedup_key"])
        else:
            # a Slack message shows the key in its context block
            [key] = [k for k in keys if f"dedup key `{k}`" in r.text]
            got.append(key)
    return got


async def test_sigkill_while_sending_resends_at_most_once_per_crash_with_the_same_dedup_key(tmp_path):
    db = tmp_path / "outbox.db"
    cfg = await asyncio.to_thread(dispatch_config, tmp_path / "dispatch.toml", db)
    keys = await asyncio.to_thread(queue_alerts, db, N_ALERTS, ("hook", "slack"))
    gates = {"hook": Gate(), "slack": Gate()}
    async with Receiver(on_request=gates["hook"]) as hook, Receiver(on_request=gates["slack"]) as slack:
        env = {
            "TM_CRASH_HOOK_URL": hook.url("/in"),
            "TM_CRASH_HOOK_SECRET": HOOK_SECRET,
            "TM_CRASH_SLACK_URL": slack.url("/services/T0/B0/crash"),
        }
        argv = cli(cfg, "alerts", "dispatch", "--forever")
        kills = 0
        stderr = []
        for _ in HOLD_AT:
            for g in gates.values():
                g.held.clear()
            proc = await spawn(argv, env)
            try:
                # both receivers now hold a request they have not answered: kill the dispatcher mid-send
                await asyncio.wait_for(asyncio.gather(*(g.held.wait() for g in gates.values())), 20)
                assert proc.poll() is None
            finally:
                proc.send_signal(signal.SIGKILL)
                await asyncio.to_thread(proc.wait, 10)
                stderr.append(await asyncio.to_thread(proc.stderr.read))
            kills += 1
            assert await asyncio.to_thread(undelivered, db) > 0
        proc = await spawn(argv, env)
        try:
            await until(lambda: asyncio.to_thread(lambda: undelivered(db) == 0), timeout=30, what="every alert delivered")
        finally:
            proc.send_signal(signal.SIGTERM)
            await asyncio.to_thread(proc.wait, 10)
            stderr.append(await asyncio.to_thread(proc.stderr.read))
        assert kills == 2
        # each restarted process said that it resends what was in flight
        assert sum("in flight when the process stopped" in e for e in stderr) == kills, stderr

        def read_outbox():
            store = Store(db)
            try:
                rows = {r["dedup_key"]: r for r in outbox_store.alert_rows(store)}
                deliveries = {aid: outbox_store.deliveries_of(store, aid) for aid in (r["id"] for r in rows.values())}
            finally:
                store.close()
            return rows, deliveries

        rows, deliveries = await asyncio.to_thread(read_outbox)
        assert len(rows) == N_ALERTS and all(r["status"] == "delivered" for r in rows.values())
        for channel, rx in (("hook", hook), ("slack", slack)):
            arrived = arrived_keys(rx, channel, keys)
            counts = Counter(arrived)
            assert set(counts) == set(keys), f"{channel}: an alert never arrived"
            assert max(counts.values()) <= 2, f"{channel}: an alert arrived more than twice: {counts.most_common(3)}"
            twice = [k for k, c in counts.items() if c == 2]
            # at most one resend per crash; each kill left exactly one request unanswered on this channel,
            # and that one must be resent (the dispatcher cannot know the receiver got it)
            assert len(twice) == kills, f"{channel}: {len(twice)} keys arrived twice after {kills} kills"
            for k in twice:
                attempts = [d.status for d in deliveries[rows[k]["id"]] if d.channel == channel]
                assert attempts == ["interrupted", "ok"], (channel, k, attempts)
            for k in set(keys) - set(twice):
                attempts = [d.status for d in deliveries[rows[k]["id"]] if d.channel == channel]
                assert attempts == ["ok"], (channel, k, attempts)
            # the resent ones are exactly those held unanswered when the process died, and a restarted
            # dispatcher sends its resend first (oldest alert first)
            assert sorted(arrived[n - 1] for n in HOLD_AT) == sorted(twice)
            assert [arrived[n] for n in HOLD_AT] == [arrived[n - 1] for n in HOLD_AT]


# --- 2. secrets never appear -------------------------------------------------------------------------

SLACK_TOKEN = "xoxbSlackPathTok9f3a7c"
SLACK_PATH = f"/services/T0SECRET/B0SECRET/{SLACK_TOKEN}"
SMTP_USER = "alerts@example.com"
SMTP_PASSWORD = 'smtp"Pa55\\w0rd-Q7e2d9'  # a quote and a backslash: JSON and CSV escape them
HMAC_SECRET = "hmacSecretK4b8x1"
HOOK_URL_TOKEN = "whUrlTokZ6n3p0"
DAEMON_TOKEN = "bearerTokM2v5r8"
ESPLORA_KEY = "esploraKeyW1j9s4"


def secret_forms() -> dict[str, str]:
    """Every secret, as written in JSON and CSV too, and the encodings of an SMTP login."""
    plain = {
        "slack url token": SLACK_TOKEN,
        "smtp password": SMTP_PASSWORD,
        "smtp AUTH PLAIN": base64.b64encode(f"\0{SMTP_USER}\0{SMTP_PASSWORD}".encode()).decode(),
        "smtp AUTH LOGIN": base64.b64encode(SMTP_PASSWORD.encode()).decode(),
        "webhook hmac secret": HMAC_SECRET,
        "webhook url token": HOOK_URL_TOKEN,
        "daemon token": DAEMON_TOKEN,
        "esplora api key": ESPLORA_KEY,
    }
    forms = dict(plain)
    for what, value in plain.items():
        for how, form in (("JSON-escaped", json.dumps(value)[1:-1]), ("CSV-quoted", value.replace('"', '""'))):
            if form != value:
                forms[f"{what} ({how})"] = form
    return forms


class RefusingSmtp:
    """aiosmtpd handler + authenticator: every AUTH is refused, and the refusal echoes the password (a
    hostile or careless server), so the product's scrubbing is what keeps it out of errors."""

    def __init__(self) -> None:
        self.passwords: list[str] = []
        self.envelopes: list = []

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        password = auth_data.password.decode() if isinstance(auth_data, LoginPassword) else "?"
        self.passwords.append(password)
        return AuthResult(success=False, handled=False, message=f"535 5.7.8 bad password {password}")

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"


def secrets_config(path: Path, *, db: Path, esplora: str, addrs: dict[str, str], smtp_port: int, http_port: int) -> Path:
    """Every kind of secret in use: an Esplora API key header, Slack, SMTP login, webhook URL and HMAC, daemon token."""
    mail = {
        "name": "mail",
        "type": "email",
        "host": "127.0.0.1",
        "port": smtp_port,
        "security": "starttls",
        "sender": "treasury-monitor@example.com",
        "recipients": ["ops@example.com"],
        "username": SMTP_USER,
        "password": env("TM_SEC_SMTP_PASSWORD"),
        "timeout": 5,
        "min_interval": 0,
    }
    path.write_text(
        config_toml(
            db=db,
            sources=[
                esplora_source(
                    "local",
                    esplora,
                    rate_limit=500.0,
                    timeout=3.0,
                    retries=1,
                    poll_interval=0.3,
                    headers={"X-Api-Key": env("TM_SEC_ESPLORA_KEY")},
                )
            ],
            entities=[
                entity_table("Test Miner", "miner", sourced([addrs["hot"]]), profile=miner_profile()),
                entity_table("Test Exchange", "exchange", sourced([addrs["exchange"]]), watch=False),
            ],
            alerts={"max_age": 100000000, "dispatch_interval": 0.2, "retry_base": 0.1, "retry_cap": 0.3},
            channels=[
                slack_channel("slack", "TM_SEC_SLACK_URL"),
                mail,
                webhook_channel("hook", "TM_SEC_HOOK_URL", "TM_SEC_HOOK_SECRET"),
            ],
            rules=[rule("everything", ["slack", "mail", "hook"], min_severity="info")],
            daemon={"port": http_port, "token": env("TM_SEC_DAEMON_TOKEN"), "shutdown_grace": 3, "digest_hour": -1},
        )
    )
    return path


class Captured:
    """Everything the user could see: each command's stdout and stderr, answers, files."""

    def __init__(self, cfg: Path, env: dict[str, str]):
        self.cfg = cfg
        self.env = env
        self.blobs: list[tuple[str, bytes]] = []
        self.json_records: list[dict] = []

    def add(self, label: str, data: str | bytes) -> None:
        self.blobs.append((label, data.encode() if isinstance(data, str) else data))

    async def run(self, *args: str, fmt: str = "text", ok: bool = True) -> subprocess.CompletedProcess:
        argv = cli(self.cfg, *args, log=("--log-level", "debug", "--log-format", fmt))
        p = await asyncio.to_thread(
            subprocess.run, argv, cwd=ROOT, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=60
        )
        label = " ".join(args) + f" [{fmt}]"
        self.add(label + " stdout", p.stdout)
        self.add(label + " stderr", p.stderr)
        if ok:
            assert p.returncode == 0, f"{label}: exit {p.returncode}\n{p.stdout}\n{p.stderr}"
        if fmt == "json":  # log records are JSON lines (click's own messages are plain)
            self.json_records += [json.loads(line) for line in p.stderr.splitlines() if line.startswith("{")]
        return p

    def leaks(self) -> list[str]:
        return [
            f"{what} in {label}" for what, value in secret_forms().items() for label, blob in self.blobs if value.encode() in blob
        ]


async def test_secrets_never_appear_in_logs_exports_lists_api_or_database(tmp_path):
    chain = SimChain(start_time=MARCH_5_2026)
    addrs = {k: chain.address(f"secrets-{k}") for k in ("hot", "exchange")}
    for i in range(5):
        chain.fund(addrs["hot"], 40 * COIN + i)
    chain.mine()
    chain.pay([addrs["hot"]], [(addrs["exchange"], 30 * COIN)], fee=3_000)  # a sale before the backfill
    chain.mine()

    cert, key = await asyncio.to_thread(self_signed_cert, tmp_path)
    server_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_tls.load_cert_chain(cert, key)
    smtp = RefusingSmtp()
    controller = Controller(
        smtp,
        hostname="127.0.0.1",
        port=free_port(),
        tls_context=server_tls,
        require_starttls=True,
        authenticator=smtp.authenticator,
        auth_required=True,
    )
    # aiosmtpd's Controller starts and stops its server thread synchronously (it waits for it): off the loop
    await asyncio.to_thread(controller.start)

    def verifying(req: RecordedRequest) -> Reply | None:
        ok = verify_standard(HMAC_SECRET, req.headers, req.body, now=SystemClock().time())
        return None if ok else Reply(401, "bad signature")

    db = tmp_path / "tm.db"
    http_port = free_port()
    try:
        async with EsploraServer(chain) as esplora, Receiver() as slack, Receiver(on_request=verifying) as hook:
            # Slack answers 500 first, echoing the request path (with its token) in the error body
            slack.script(Reply(500, f"no_service: {SLACK_PATH}"))
            env = {
                "TM_SEC_SLACK_URL": slack.url(SLACK_PATH),
                "TM_SEC_SMTP_PASSWORD": SMTP_PASSWORD,
                "TM_SEC_HOOK_URL": hook.url(f"/ingest?token={HOOK_URL_TOKEN}"),
                "TM_SEC_HOOK_SECRET": HMAC_SECRET,
                "TM_SEC_DAEMON_TOKEN": DAEMON_TOKEN,
                "TM_SEC_ESPLORA_KEY": ESPLORA_KEY,
                "SSL_CERT_FILE": str(cert),  # the product's default TLS context trusts the test's certificate
            }
            cfg = await asyncio.to_thread(
                secrets_config,
                tmp_path / "secrets.toml",
                db=db,
                esplora=esplora.url,
                addrs=addrs,
                smtp_port=controller.port,
                http_port=http_port,
            )
            out = Captured(cfg, env)

            await asyncio.gather(out.run("check-config"), out.run("check-config", fmt="json"))
            await out.run("backfill", "--no-progress")
            chain.pay([addrs["hot"]], [(addrs["exchange"], 25 * COIN)], fee=3_000)
            chain.mine()
            await out.run("poll", fmt="json")

            # deliver: Slack 500 then 200, SMTP refuses the login for good, the webhook verifies and takes it
            for i in range(20):
                await out.run("alerts", "dispatch", fmt=("text", "json")[i % 2])

                def queued() -> int:
                    with sqlite3.connect(db) as conn:
                        return conn.execute("select count(*) from alert_channels where status = 'queued'").fetchone()[0]

                left = await asyncio.to_thread(queued)
                if not left:
                    break
                await asyncio.sleep(0.3)
            assert not left
            assert [r.status for r in slack.requests] == [500, 200, 200]  # two alerts, the first one retried
            assert len(hook.requests) == 2 and all(r.status == 200 for r in hook.requests)
            # every secret was really used (the Esplora key goes out as a header the fake does not record)
            assert {r.path for r in slack.requests} == {SLACK_PATH}
            assert all(r.query == {"token": HOOK_URL_TOKEN} for r in hook.requests)  # and signed with HMAC_SECRET
            assert len(smtp.passwords) >= 2 and set(smtp.passwords) == {SMTP_PASSWORD} and smtp.envelopes == []

            # read-only commands, a few at a time (each one is a process that starts in about a second)
            slack.script(Reply(500, f"no_service: {SLACK_PATH}"))  # for `alerts test`: the error is printed
            exports = {fmt: tmp_path / f"export.{fmt}" for fmt in ("jsonl", "csv")}
            limit = asyncio.Semaphore(3)

            async def limited(*args: str, fmt: str = "text", ok: bool = True):
                async with limit:
                    return await out.run(*args, fmt=fmt, ok=ok)

            results = await asyncio.gather(
                limited("alerts", "list"),
                limited("alerts", "list", "--json", fmt="json"),
                limited("alerts", "list", "--status", "failed", "--json"),
                limited("alerts", "test", "--channel", "slack", fmt="json", ok=False),
                limited("alerts", "test", "--channel", "mail", ok=False),
                limited("export", "--format", "json", fmt="json"),
                limited("export", "--format", "jsonl", "--out", str(exports["jsonl"])),
                limited("export", "--format", "csv", "--out", str(exports["csv"]), fmt="json"),
                limited("status", "--json"),
                limited("entities", "--json", fmt="json"),
            )
            listing, listing_json, _, test_slack, test_mail, export_json = results[:6]
            assert "mail: failed" in listing.stdout and "authentication failed" in listing.stdout
            assert "bad password" in listing.stdout  # the server echoed the password (scrubbed: see the end)
            assert "HTTP 500" in test_slack.stderr and "no_service:" in test_slack.stderr  # and Slack the path
            assert test_slack.returncode == test_mail.returncode == 1 and "authentication failed" in test_mail.stderr
            assert len(json.loads(listing_json.stdout)) == 2 and len(json.loads(export_json.stdout)) == 7  # 5 fundings, 2 sales
            for f in exports.values():
                out.add(f"export file {f.name}", await asyncio.to_thread(f.read_bytes))

            # the daemon: a new sale is polled, classified, alerted (Slack 500 again, then 200)
            slack.script(Reply(500, f"no_service: {SLACK_PATH}"))
            n_slack = len(slack.requests)
            proc = await spawn(cli(cfg, "run", log=("--log-level", "debug", "--log-format", "json")), env)
            try:
                base = f"http://127.0.0.1:{http_port}"
                auth = {"Authorization": f"Bearer {DAEMON_TOKEN}"}
                async with aiohttp.ClientSession() as s:

                    async def get(path: str, headers=auth) -> tuple[int, str]:
                        async with s.get(base + path, headers=headers) as r:
                            return r.status, await r.text()

                    async def up() -> bool:
                        assert proc.poll() is None, await asyncio.to_thread(proc.stderr.read)
                        try:
                            return (await get("/healthz"))[0] in (200, 503)
                        except aiohttp.ClientError:
                            return False

                    await until(up, timeout=20)
                    chain.pay([addrs["hot"]], [(addrs["exchange"], 11 * COIN)], fee=3_000)
                    chain.mine()
                    await until(
                        lambda: sum(r.status == 200 for r in slack.requests[n_slack:]) >= 1,
                        timeout=20,
                        what="the daemon's alert delivered to Slack",
                    )
                    assert slack.requests[n_slack].status == 500
                    for path in (
                        "/healthz",
                        "/metrics",
                        "/api/alerts",
                        "/api/alerts?status=failed",
                        "/api/flows",
                        "/api/entities",
                        "/api/events",
                    ):
                        status, body = await get(path)
                        assert status in (200, 503), (path, status)
                        out.add(f"GET {path}", body)
                    status, body = await get("/api/alerts", headers={"Authorization": "Bearer wrong"})
                    assert status == 401
                    out.add("GET /api/alerts with a wrong token", body)
            finally:
                proc.send_signal(signal.SIGTERM)
                code = await asyncio.to_thread(proc.wait, 20)
                out.add("run stdout", await asyncio.to_thread(proc.stdout.read))
                out.add("run stderr", await asyncio.to_thread(proc.stderr.read))
            assert code == 0
    finally:
        await asyncio.to_thread(controller.stop)

    # the database file itself (and its WAL/SHM when they exist), byte for byte
    for suffix in ("", "-wal", "-shm"):
        f = Path(f"{db}{suffix}")
        if await asyncio.to_thread(f.exists):
            out.add(f"database file {f.name}", await asyncio.to_thread(f.read_bytes))
    assert sum(label.startswith("database file") for label, _ in out.blobs) >= 1
    # there was a lot to look at: debug logs in both formats
    assert sum(len(b) for _, b in out.blobs) > 50_000
    assert {r["level"] for r in out.json_records} >= {"debug", "info"}
    leaks = out.leaks()
    assert not leaks, "secrets shown:\n" + "\n".join(leaks)


# --- 3. the log redaction itself, in both formats ------------------------------------------------------


def test_redaction_holds_in_json_log_lines_when_the_secret_has_characters_json_escapes():
    """`monitor.run.logs` redacts "in every formatted line": also when JSON escaping changes how the secret
    is written (a quote or backslash in a password), and in the traceback of a logged exception."""
    import io
    import logging

    from monitor.run.logs import configure_logging, redact

    secret = 'pw"with\\quote-and-backslash-8c1e'
    redact(secret)
    root = logging.getLogger()
    before = (root.level, logging.getLogger("apscheduler").level)
    try:
        for fmt in ("text", "json"):
            stream = io.StringIO()
            configure_logging(level="debug", fmt=fmt, stream=stream)
            log = logging.getLogger("tests.alert_safety")
            log.warning("login with %s refused", secret)
            try:
                raise ValueError(f"server said: bad password {secret}")
            except ValueError:
                log.exception("send failed")
            text = stream.getvalue()
            shown = (
                text
                if fmt == "text"
                else "\n".join(" ".join(str(v) for v in json.loads(line).values()) for line in text.splitlines())
            )
            assert "login with *** refused" in shown and "bad password ***" in shown, (fmt, text)
            for form in (secret, json.dumps(secret)[1:-1]):
                assert form not in text, (fmt, text)
    finally:
        for h in [h for h in root.handlers if getattr(h, "_treasury_monitor", False)]:
            root.removeHandler(h)
        root.setLevel(before[0])
        logging.getLogger("apscheduler").setLevel(before[1])
