"""Chaos soak: the real daemon under source faults, channel outages and SIGKILLs vs an undisturbed twin.

Not a test (pytest never collects bench/). Run from the repo root:

    .venv/bin/python bench/soak.py                  # 60 minutes (the figures in README)
    .venv/bin/python bench/soak.py --quick          # 5 minutes, kills every ~40 s
    .venv/bin/python bench/soak.py --minutes 20 --seed 3

Two daemons run as users run them (`python -m monitor -c cfg run`, subprocesses), each with its own
database and its own receivers (Slack and webhook: `tests/fakes/receiver.py`; email: a real aiosmtpd
server), both polling the SAME simulated chain through two local Esplora servers
(`monitor.sim.esplora_server`). The chain keeps producing: every few seconds the entities' wallets sell to
an exchange, pay unknown addresses, move coins internally; blocks are mined, some mempool txs are replaced
(RBF) and now and then the tip is reorganised (depth 1-2, sometimes dropping a sale for good).

Only the *disturbed* daemon suffers:
- source faults on its Esplora server: 429 with Retry-After, 500/502, answers slower than its timeout,
  garbage and truncated bodies, reset connections, and 30-second outages;
- channel outages: Slack 500s and 429s, webhook 503s, timeouts and dropped connections, the SMTP server
  down for 15-45 s;
- SIGKILL every few minutes (`--kill-every`, jittered), restarted a second later. Half of the kills wait
  for a delivery to reach a receiver and kill while the receiver holds its answer: the kill lands during
  a send, the worst moment for exactly-once.

At the end the chain stops (its mempool is mined), faults stop, both daemons drain their outboxes and are
stopped with SIGTERM. Then:
- **expected**: per channel, the dedup keys the undisturbed daemon delivered for flows confirmed in the
  final chain, under their final verdict (a sale dropped by a reorg or replaced by RBF, or a verdict that
  changed on confirmation, is alerted only if it was seen in time: timing, not loss; counted as extra);
- **delivered / lost**: expected keys the disturbed receivers got (2xx / accepted), and those they never got;
- **duplicated**: the same message (Slack/webhook body, email Message-ID) accepted more than once by a
  disturbed receiver, beyond what the undisturbed receiver got;
- **resends per kill**: deliveries found `sending` in the database right after each kill (read from the
  file of the dead process) are the ones the restart resends: at most one resend per interrupted pair;
- **crashes**: disturbed daemon exits that were not our SIGKILLs, and "failed unexpectedly"/tracebacks in
  either daemon's log;
- **database**: the export (`treasury-monitor export`) of flows confirmed in the final chain, compared
  between the two databases on txid, entity, direction, status, block height, amounts, destinations and
  verdict/severity/status of the classification.
"""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import hashlib
import json
import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # tests/fakes/receiver.py (Slack/webhook sink), tests/builders.py

from aiosmtpd.controller import Controller  # noqa: E402
from builders import (  # noqa: E402
    config_toml,
    entity_table,
    esplora_source,
    miner_profile,
    rule,
    slack_channel,
    webhook_channel,
)
from fakes.receiver import Receiver, RecordedRequest, Reply, free_port  # noqa: E402

from monitor.sim.chain import COIN, SimChain  # noqa: E402
from monitor.sim.esplora_server import EsploraServer  # noqa: E402

MARCH_5_2026 = 1_772_668_800
CHANNELS = ("slack", "webhook", "email")
STEP = 3.0  # seconds between chain actions
POLL = 2.0  # daemons' poll interval
DEDUP_IN_SLACK = re.compile(r"dedup key `([^`]+)`")
_procs: list[subprocess.Popen] = []  # every daemon started, killed on the way out


# --- receivers ----------------------------------------------------------------------------------------


class Mailbox:
    """An aiosmtpd handler recording accepted messages; the server can be stopped and started on one port."""

    def __init__(self, port: int):
        self.port = port
        self.messages: list[tuple[str, str]] = []  # (Message-ID, dedup key)
        self.controller: Controller | None = None
        self.hook = None  # called on DATA (the kill-during-send trigger)

    async def handle_DATA(self, server, session, envelope):
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        if self.hook is not None:
            await self.hook()
        self.messages.append((str(msg["Message-ID"]), str(msg["X-Treasury-Monitor-Dedup-Key"])))
        return "250 Message accepted for delivery"

    def start(self) -> None:
        if self.controller is None:
            self.controller = Controller(self, hostname="127.0.0.1", port=self.port)
            self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@dataclass
class Side:
    """One daemon and everything only it talks to."""

    name: str
    dir: Path
    server: EsploraServer
    slack: Receiver
    webhook: Receiver
    mail: Mailbox
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None
    log: object = None

    @property
    def db(self) -> Path:
        return self.dir / "monitor.db"

    @property
    def cfg(self) -> Path:
        return self.dir / "config.toml"

    def env(self) -> dict[str, str]:
        return {
            **os.environ,
            "SOAK_SLACK_URL": self.slack.url("/services/T0/B0/soak"),
            "SOAK_WEBHOOK_URL": self.webhook.url("/hook"),
            "SOAK_WEBHOOK_SECRET": "soak-secret-0123456789",
        }

    def start(self) -> None:
        self.log = open(self.dir / "daemon.log", "a")  # noqa: SIM115 (kept open across restarts)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "monitor", "-c", str(self.cfg), "--log-level", "info", "run"],
            cwd=ROOT,
            env=self.env(),
            stdout=self.log,
            stderr=self.log,
        )
        _procs.append(self.proc)

    def delivered(self) -> dict[str, list[tuple[str, str]]]:
        """Per channel, (message identity, dedup key) of every message the receiver accepted."""
        out: dict[str, list[tuple[str, str]]] = {c: [] for c in CHANNELS}
        for r in self.slack.requests:
            if r.status == 200:
                m = DEDUP_IN_SLACK.search(r.text)
                out["slack"].append((hashlib.sha256(r.body).hexdigest(), m.group(1) if m else "?"))
        for r in self.webhook.requests:
            if r.status == 200 and r.json:
                out["webhook"].append((hashlib.sha256(r.body).hexdigest(), r.json.get("dedup_key", "?")))
        out["email"] = list(self.mail.messages)
        return out


def write_config(side: Side, addrs: dict[str, list[str]]) -> None:
    side.cfg.write_text(
        config_toml(
            db=side.db,
            sources=[esplora_source("local", side.server.url, rate_limit=500.0, timeout=2.0, retries=2, poll_interval=POLL)],
            entities=[
                entity_table("Soak Miner", "miner", addrs["miner"], profile=miner_profile("soak fixture")),
                entity_table("Soak Sovereign", "sovereign", addrs["sovereign"]),
                entity_table("Soak Exchange", "exchange", addrs["exchange"]),
            ],
            alerts={"max_age": 100_000_000, "dispatch_interval": 1.0, "retry_base": 1.0, "retry_cap": 8.0},
            channels=[
                slack_channel("slack", "SOAK_SLACK_URL", timeout=3.0),
                webhook_channel("webhook", "SOAK_WEBHOOK_URL", "SOAK_WEBHOOK_SECRET", timeout=3.0),
                {
                    "name": "email",
                    "type": "email",
                    "host": "127.0.0.1",
                    "port": side.mail.port,
                    "security": "none",
                    "sender": "soak@treasury.example",
                    "recipients": ["ops@example.com"],
                    "timeout": 3.0,
                },
            ],
            rules=[rule("all", list(CHANNELS), min_severity="info")],
            daemon={"port": side.port, "shutdown_grace": 10, "unhealthy_after": 20, "digest_hour": -1},
        )
    )


# --- the chain ----------------------------------------------------------------------------------------


@dataclass
class ChainStats:
    blocks: int = 0
    reorgs: int = 0
    dropped: int = 0
    rbf: int = 0
    txs: int = 0


def build_chain(seed: int) -> tuple[SimChain, dict[str, list[str]]]:
    chain = SimChain(start_time=MARCH_5_2026, seed=seed)
    addrs = {
        "miner": [chain.address(f"soak-miner-{i}") for i in range(3)],
        "sovereign": [chain.address("soak-sovereign-0", "p2pkh")],
        "exchange": [chain.address(f"soak-exchange-{i}") for i in range(2)],
    }
    payments = [(a, 300 * COIN) for a in addrs["miner"] + addrs["sovereign"] for _ in range(60)]
    chain.fund_many(payments)
    chain.mine()
    return chain, addrs


def chain_step(chain: SimChain, addrs: dict[str, list[str]], rng: random.Random, stats: ChainStats, step: int) -> None:
    """One action on the chain; actions that the wallet cannot afford right now are skipped."""
    ours = addrs["miner"] + addrs["sovereign"]
    r = rng.random()
    try:
        if r < 0.40:
            src = rng.choice(ours)
            chain.pay([src], [(rng.choice(addrs["exchange"]), rng.randint(1, 80) * COIN)], fee=rng.randint(2, 9) * 1000)
            stats.txs += 1
        elif r < 0.52:
            src = rng.choice(ours)
            chain.pay([src], [(chain.address(f"soak-unknown-{step}"), rng.randint(1, 30) * COIN)], fee=3000)
            stats.txs += 1
        elif r < 0.60:
            a, b = rng.sample(addrs["miner"], 2)
            chain.pay([a], [(b, rng.randint(1, 50) * COIN)], fee=2000)
            stats.txs += 1
        elif r < 0.70:
            ours_set = set(ours)
            mine = [t for t in chain.mempool if any(o.address in ours_set for o in _prevouts(chain, t))]
            if mine:
                chain.replace(rng.choice(mine).txid)
                stats.rbf += 1
    except ValueError:
        pass
    if step % 3 == 2:
        if rng.random() < 0.08 and chain.height > chain.start_height + 3:
            depth = rng.choice((1, 1, 2))
            drop = []
            if rng.random() < 0.5:
                recent = [t.txid for b in chain.blocks[-depth:] for t in b.txs[1:]]
                drop = recent[:1]
            before = chain.height
            chain.reorg(depth, drop_txids=drop)
            stats.reorgs += 1
            stats.dropped += len(drop)
            stats.blocks += chain.height - before + depth
        else:
            chain.mine()
            stats.blocks += 1


def _prevouts(chain: SimChain, tx) -> list:
    return [p for p in (chain.prevout(i.txid, i.vout) for i in tx.vin) if p is not None]


# --- chaos --------------------------------------------------------------------------------------------


@dataclass
class Kill:
    at: float
    during_send: bool  # the kill waited for a delivery to reach a receiver
    sending: int = -1  # pairs left `sending` in the database (what the restart resends)


@dataclass
class Chaos:
    source: Counter = field(default_factory=Counter)
    channel: Counter = field(default_factory=Counter)
    smtp_down_s: float = 0.0
    kills: list[Kill] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)


async def source_faults(side: Side, rng: random.Random, chaos: Chaos, until: float) -> None:
    faults = side.server.faults
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(10, 25))
        kind = rng.choice(("429", "500", "502", "slow", "garbage", "truncated", "reset", "outage"))
        if kind == "outage":  # every request fails for ~30 s: the source goes red, then recovers
            rule_ = faults.add(".", "502", times=None)
            await asyncio.sleep(30)
            faults.rules.remove(rule_)
        elif kind == "429":
            faults.add(".", "429", times=rng.randint(1, 6), retry_after=rng.choice((1, 2, 3)))
        elif kind == "slow":
            faults.add(".", "slow", times=rng.randint(1, 4), delay=2.5)  # beyond the 2 s timeout
        else:
            faults.add(".", kind, times=rng.randint(1, 8))
        chaos.source[kind] += 1


async def channel_outages(side: Side, rng: random.Random, chaos: Chaos, until: float) -> None:
    while time.monotonic() < until:
        await asyncio.sleep(rng.uniform(15, 40))
        kind = rng.choice(("slack_500", "slack_429", "webhook_503", "webhook_timeout", "webhook_drop", "smtp_down"))
        if kind == "slack_500":
            side.slack.fail(rng.randint(2, 10))
        elif kind == "slack_429":
            side.slack.rate_limit(retry_after=str(rng.randint(1, 5)), times=rng.randint(1, 3))
        elif kind == "webhook_503":
            side.webhook.fail(rng.randint(2, 10), status=503)
        elif kind == "webhook_timeout":
            side.webhook.delay(4.0, times=rng.randint(1, 3))  # beyond the channel's 3 s timeout
        elif kind == "webhook_drop":
            side.webhook.drop(rng.randint(1, 3))
        else:
            down = rng.uniform(15, 45)
            await asyncio.to_thread(side.mail.stop)
            await asyncio.sleep(down)
            await asyncio.to_thread(side.mail.start)
            chaos.smtp_down_s += down
        chaos.channel[kind] += 1


class SendTrap:
    """Armed, the next delivery reaching a disturbed receiver is held while the daemon is killed."""

    def __init__(self):
        self.armed = False
        self.hit = asyncio.Event()

    def http_hook(self, rec: RecordedRequest) -> Reply | None:
        if not self.armed:
            return None
        self.armed = False
        self.hit.set()
        return Reply(delay=2.0)  # the answer never reaches the daemon: it is killed meanwhile

    async def smtp_hook(self) -> None:
        if self.armed:
            self.armed = False
            self.hit.set()
            await asyncio.sleep(2.0)


def sending_pairs(db: Path) -> int:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return con.execute("select count(*) from alert_channels where status = 'sending'").fetchone()[0]
    finally:
        con.close()


async def killer(side: Side, rng: random.Random, chaos: Chaos, trap: SendTrap, until: float, every: float) -> None:
    while True:
        wait = rng.uniform(0.5 * every, 1.5 * every)
        if time.monotonic() + wait >= until:
            return
        await asyncio.sleep(wait)
        during = rng.random() < 0.5
        if during:
            trap.hit.clear()
            trap.armed = True
            try:
                await asyncio.wait_for(trap.hit.wait(), timeout=60)
            except TimeoutError:
                during = False
            trap.armed = False
            await asyncio.sleep(0.05)  # the daemon is now waiting for the held answer
        assert side.proc is not None
        side.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(side.proc.wait)
        kill = Kill(time.monotonic(), during)
        kill.sending = await asyncio.to_thread(sending_pairs, side.db)
        chaos.kills.append(kill)
        await asyncio.sleep(1.0)
        side.start()


async def watch_crashes(side: Side, chaos: Chaos, stop: asyncio.Event) -> None:
    """A disturbed daemon that exits on its own is a crash: recorded and restarted."""
    while not stop.is_set():
        await asyncio.sleep(0.5)
        proc = side.proc
        if proc is not None and proc.poll() is not None and proc.returncode != -signal.SIGKILL:
            chaos.crashes.append(f"{side.name} exited with status {proc.returncode}")
            side.start()


# --- the end ------------------------------------------------------------------------------------------


def why_resent(db: Path, channel: str, dedup_key: str) -> str:
    """Why a receiver got one alert twice, from the disturbed database's record of its attempts.

    "kill": an attempt was interrupted by a SIGKILL (it had reached the receiver) and resent once after the
    restart; "slow answer": an attempt timed out at the daemon while the receiver had the message (our
    receiver held its answer beyond the channel timeout), so it was retried; "unexplained" otherwise.
    """
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        rows = con.execute(
            """select d.status, d.error from deliveries d join alerts a on a.id = d.alert_id
                              where a.dedup_key = ? and d.channel = ?""",
            [dedup_key, channel],
        ).fetchall()
    finally:
        con.close()
    if any(status == "interrupted" for status, _ in rows):
        return "kill"
    if any(status == "retry" and ("no answer" in error or "timed out" in error.lower()) for status, error in rows):
        return "slow answer"
    return "unexplained"


def outbox_state(db: Path) -> Counter:
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return Counter(dict(con.execute("select status, count(*) from alert_channels group by status").fetchall()))
    finally:
        con.close()


async def settle(sides: list[Side], chain: SimChain, timeout: float) -> bool:
    """Wait until both outboxes hold nothing queued or sending and both daemons polled the final tip."""
    import aiohttp

    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while time.monotonic() < deadline:
            done = True
            for side in sides:
                state = await asyncio.to_thread(outbox_state, side.db)
                if state.get("queued", 0) or state.get("sending", 0):
                    done = False
                try:
                    async with s.get(f"http://127.0.0.1:{side.port}/healthz") as r:
                        body = await r.json()
                    if body["sources"]["local"]["tip_height"] != chain.height:
                        done = False
                except (aiohttp.ClientError, KeyError, ValueError):
                    done = False
            if done:
                await asyncio.sleep(2 * POLL)  # a poll that started before the last block may still queue
                queued = [(await asyncio.to_thread(outbox_state, sd.db)).get("queued", 0) for sd in sides]
                if not any(queued):
                    return True
            await asyncio.sleep(1.0)
    return False


def export(side: Side) -> list[dict]:
    out = side.dir / "export.json"
    subprocess.run(
        [sys.executable, "-m", "monitor", "-c", str(side.cfg), "export", "--format", "json", "--out", str(out)],
        cwd=ROOT,
        env=side.env(),
        check=True,
        capture_output=True,
    )
    return json.loads(out.read_text())


def projection(rec: dict) -> tuple:
    c = rec.get("classification") or {}
    return (
        rec["txid"],
        rec["entity"],
        rec["direction"],
        rec["status"],
        rec["block_height"],
        rec["spent_units"],
        rec["change_units"],
        rec["out_units"],
        tuple((d["address"], d["n"], d["value_units"], d["attribution"]) for d in rec["destinations"]),
        c.get("verdict"),
        c.get("severity"),
        c.get("status"),
    )


def log_problems(side: Side) -> int:
    text = (side.dir / "daemon.log").read_text(errors="replace")
    return text.count("failed unexpectedly") + text.count("Traceback")


async def soak(minutes: float, seed: int, kill_every: float, keep: bool) -> int:
    rng = random.Random(seed)
    chain, addrs = build_chain(seed)
    work = Path(tempfile.mkdtemp(prefix="tm-soak-"))
    sides: list[Side] = []
    trap = SendTrap()
    for name in ("undisturbed", "disturbed"):
        d = work / name
        d.mkdir()
        hook = trap.http_hook if name == "disturbed" else None
        side = Side(name, d, EsploraServer(chain), Receiver(on_request=hook), Receiver(on_request=hook), Mailbox(free_port()))
        await side.server.start()
        await side.slack.start()
        await side.webhook.start()
        side.mail.start()
        write_config(side, addrs)
        sides.append(side)
    calm, chaotic = sides
    chaotic.mail.hook = trap.smtp_hook
    for side in sides:
        side.start()
    print(f"soak: {minutes:g} min, seed {seed}, kills every ~{kill_every:g} s; work dir {work}", flush=True)

    chaos = Chaos()
    stats = ChainStats()
    started = time.monotonic()
    end = started + minutes * 60
    chaos_end = end - min(60.0, minutes * 6)  # the last minute (or tenth) is calm: outboxes can drain
    stop = asyncio.Event()
    tasks = [
        asyncio.create_task(source_faults(chaotic, random.Random(seed + 1), chaos, chaos_end)),
        asyncio.create_task(channel_outages(chaotic, random.Random(seed + 2), chaos, chaos_end)),
        asyncio.create_task(killer(chaotic, random.Random(seed + 3), chaos, trap, chaos_end, kill_every)),
        asyncio.create_task(watch_crashes(chaotic, chaos, stop)),
    ]
    step = 0
    last_report = started
    while time.monotonic() < end:
        chain_step(chain, addrs, rng, stats, step)
        step += 1
        if time.monotonic() - last_report >= 300:
            last_report = time.monotonic()
            print(
                f"  {int((last_report - started) / 60)} min: height {chain.height}, {stats.txs} txs, "
                f"{stats.reorgs} reorgs, {stats.rbf} RBF, {len(chaos.kills)} kills",
                flush=True,
            )
        await asyncio.sleep(STEP)
    for t in tasks[:3]:
        await t
    # the end: the mempool is mined, channels and the source are healthy again
    chaotic.server.faults.clear()
    chaotic.mail.start()
    if chain.mempool:
        chain.mine()
        stats.blocks += 1
    settled = await settle(sides, chain, timeout=300)
    stop.set()
    await tasks[3]
    codes = {}
    for side in sides:
        assert side.proc is not None
        side.proc.send_signal(signal.SIGTERM)
        codes[side.name] = await asyncio.to_thread(side.proc.wait, 60)
    elapsed = (time.monotonic() - started) / 60

    # --- figures ---
    final = {t.txid for b in chain.blocks for t in b.txs}
    recs = {s.name: [r for r in await asyncio.to_thread(export, s) if r["txid"] in final] for s in sides}
    # An alert is expected for a flow's FINAL verdict: a verdict that changed on confirmation (the price at
    # the block, not at first sight) was alerted first under its earlier verdict only if seen in the mempool.
    final_keys = {
        f"{r['chain']}:{r['txid']}:{r['entity']}:{r['classification']['verdict']}"
        for r in recs["undisturbed"]
        if r.get("classification")
    }
    got = {s.name: s.delivered() for s in sides}
    expected = lost = delivered = dup = extra = 0
    why: Counter = Counter()
    lost_keys: list[str] = []
    for ch in CHANNELS:
        calm_keys = {k for _, k in got["undisturbed"][ch]}
        chaotic_keys = {k for _, k in got["disturbed"][ch]}
        want = calm_keys & final_keys
        expected += len(want)
        delivered += len(want & chaotic_keys)
        lost += len(want - chaotic_keys)
        lost_keys += [f"{ch}:{k}" for k in sorted(want - chaotic_keys)]
        extra += len(chaotic_keys - final_keys)
        calm_count = Counter(i for i, _ in got["undisturbed"][ch])
        key_of = dict(got["disturbed"][ch])
        for ident, n in Counter(i for i, _ in got["disturbed"][ch]).items():
            extra_copies = max(0, n - max(1, calm_count.get(ident, 0)))
            if extra_copies:
                dup += extra_copies
                why[await asyncio.to_thread(why_resent, chaotic.db, ch, key_of[ident])] += extra_copies
    calm_rows = {projection(r) for r in recs["undisturbed"]}
    chaotic_rows = {projection(r) for r in recs["disturbed"]}
    states = {s.name: await asyncio.to_thread(outbox_state, s.db) for s in sides}
    during = [k for k in chaos.kills if k.sending > 0]
    problems = {s.name: log_problems(s) for s in sides}

    print()
    print(
        f"ran {elapsed:.1f} min (chaos for the first {(chaos_end - started) / 60:.1f}); settled: {settled}; "
        f"exit codes after SIGTERM: {codes}"
    )
    print(
        f"chain: {stats.blocks} blocks mined (height {chain.height}), {stats.txs} entity txs, {stats.rbf} RBF "
        f"replacements, {stats.reorgs} reorgs ({stats.dropped} txs dropped for good)"
    )
    print(f"source faults: {sum(chaos.source.values())} ({', '.join(f'{k} {v}' for k, v in sorted(chaos.source.items()))})")
    print(
        f"channel outages: {sum(chaos.channel.values())} ({', '.join(f'{k} {v}' for k, v in sorted(chaos.channel.items()))}); "
        f"SMTP down {chaos.smtp_down_s:.0f} s in total"
    )
    print(
        f"SIGKILLs: {len(chaos.kills)} ({sum(k.during_send for k in chaos.kills)} aimed at a send; "
        f"{len(during)} found deliveries in flight)"
    )
    print(
        f"alerts expected {expected} / delivered {delivered} / lost {lost} / duplicated {dup} "
        f"(extra, for flows not in the final chain or verdicts changed since: {extra})"
    )
    print(
        f"duplicates by cause: {why.get('kill', 0)} resends of a send a kill interrupted, "
        f"{why.get('slow answer', 0)} retries of a send the receiver answered after the channel timeout, "
        f"{why.get('unexplained', 0)} unexplained"
    )
    resends = [k.sending for k in during]
    if during:
        print(
            f"resends: {sum(resends)} interrupted deliveries over {len(during)} kills during a send, each resent "
            f"once (interrupted per kill: {', '.join(map(str, resends))}; one per channel that was sending); "
            f"duplicates caused by kills per such kill: {why.get('kill', 0) / len(during):.2f}"
        )
    else:
        print("resends: no kill landed during a send")
    print(
        f"crashes other than the injected kills: {len(chaos.crashes)} {chaos.crashes or ''}; "
        f"'failed unexpectedly'/tracebacks in logs: {problems}"
    )
    print(f"outbox at the end: {dict(states['undisturbed'])} undisturbed, {dict(states['disturbed'])} disturbed")
    print(
        f"database: {len(calm_rows)} confirmed flows undisturbed, {len(chaotic_rows)} disturbed, "
        f"{len(calm_rows & chaotic_rows)} identical, {len(calm_rows ^ chaotic_rows)} differing"
    )
    if lost_keys:
        print("lost:", *lost_keys[:20], sep="\n  ")
    for side in sides:
        await side.server.stop()
        await side.slack.stop()
        await side.webhook.stop()
        side.mail.stop()
    if not keep:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    ok = lost == 0 and not chaos.crashes and calm_rows == chaotic_rows and settled
    return 0 if ok else 1


async def soak_and_clean_up(minutes: float, seed: int, kill_every: float, keep: bool) -> int:
    try:
        return await soak(minutes, seed, kill_every, keep)
    finally:
        for proc in _procs:  # never leave a daemon behind (an interrupted or failed soak)
            if proc.poll() is None:
                proc.kill()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=60.0, help="how long the chain runs (default 60)")
    p.add_argument("--quick", action="store_true", help="5 minutes, kills every ~40 s")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--kill-every", type=float, default=None, help="mean seconds between SIGKILLs (default 180; 40 quick)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (databases, logs, exports)")
    a = p.parse_args()
    minutes = 5.0 if a.quick else a.minutes
    kill_every = a.kill_every or (40.0 if a.quick or minutes <= 10 else 180.0)
    sys.exit(asyncio.run(soak_and_clean_up(minutes, a.seed, kill_every, a.keep)))


if __name__ == "__main__":
    main()
