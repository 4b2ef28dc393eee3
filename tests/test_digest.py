"""The daily digest: per-entity 24 h summary, queued once a day, emailed with the PNG chart attached."""

import asyncio
import base64
import email
import email.policy

import aiohttp
from aiosmtpd.controller import Controller
from fakes.offloop import in_store
from fakes.receiver import free_port

from alerts.channels import EmailChannel
from alerts.outbox import Dispatcher
from monitor.clock import FrozenClock
from monitor.config import load_config
from monitor.output.digest import queue_digest
from monitor.run.alert_plan import StoreQueue
from monitor.run.runtime import runtime
from monitor.sim.esplora_server import EsploraServer
from monitor.sim.scenario import build_scenario
from storage import AsyncStore, Store
from storage.alerts import alert_rows


class Sink:
    def __init__(self):
        self.envelopes = []

    async def handle_DATA(self, server, session, envelope):
        self.envelopes.append(envelope)
        return "250 OK"


async def test_digest_summarises_the_day_and_emails_the_chart(tmp_path):
    sc = await asyncio.to_thread(build_scenario, seed=3, scale=0.1)
    run = sc.start()
    db = tmp_path / "d.db"
    async with EsploraServer(run.chain) as server:
        cfg = tmp_path / "c.toml"
        await asyncio.to_thread(cfg.write_text, sc.config_toml(server.url, db, alert_max_age=400 * 86_400))
        clock = FrozenClock(now=sc.start_time)
        async with runtime(await asyncio.to_thread(load_config, cfg), clock=clock) as rt:
            for step in sc.steps:
                run.apply(step)
                if step.observe or step.at > sc.end_time - 20 * 86_400:
                    clock.now = step.at + 60
                    await rt.pipeline.tick(rt.sources[0])
    day_end = int(sc.expected["MARA"].flows[-1].at) + 3_600

    def queue_twice(store):  # on the store thread, as the daemon runs it (the chart is drawn with matplotlib)
        first = queue_digest(store, ("mail",), now=day_end)
        again = queue_digest(store, ("mail",), now=day_end + 60)  # same UTC day: once only
        [row] = [r for r in alert_rows(store) if r["kind"] == "digest"]
        return first, again, row

    first, again, row = await in_store(db, queue_twice)
    assert first is not None and again is None
    digest = row["payload"]["digest"]
    mara = next(e for e in digest["entities"] if e["entity"] == "MARA")
    assert float(mara["out_amount"]) > 0 and mara["balance_change_amount"].startswith("-")
    assert set(mara["verdicts"]) <= {"balance_sheet_sale", "custody_move", "internal"}
    [att] = row["payload"]["attachments"]
    assert base64.b64decode(att["data_base64"]).startswith(b"\x89PNG\r\n\x1a\n")

    sink = Sink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    await asyncio.to_thread(controller.start)  # it waits for its server thread: off the loop
    try:
        astore = AsyncStore(await asyncio.to_thread(Store, db))
        clock = FrozenClock(now=day_end + 120)
        async with aiohttp.ClientSession():
            channel = EmailChannel("mail", "127.0.0.1", controller.port, "tm@example.com", ["desk@example.com"], security="none")
            d = Dispatcher(StoreQueue(astore), {"mail": channel}, clock)
            await d.dispatch_once()
        await astore.close()
    finally:
        await asyncio.to_thread(controller.stop)
    digests = [email.message_from_bytes(e.content, policy=email.policy.default) for e in sink.envelopes if b"digest" in e.content]
    assert digests, "the digest email did not arrive"
    msg = digests[-1]
    pngs = [p for p in msg.walk() if p.get_content_type() == "image/png"]
    assert pngs and pngs[0].get_content().startswith(b"\x89PNG")
    assert "MARA" in msg.get_body(("plain",)).get_content()
