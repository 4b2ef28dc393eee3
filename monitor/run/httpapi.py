"""The daemon's HTTP endpoints (aiohttp.web): health, metrics and a read-only JSON API over storage.

    GET /healthz                      200 with per-source last success and lag; 503 when a source has
                                      failed for longer than [daemon].unhealthy_after
    GET /metrics                      Prometheus text (polls, errors, requests by source, flows,
                                      classifications, alerts by status, delivery latency, tip height)
    GET /api/entities                 entities with address counts, balances seen and flow counts
    GET /api/flows?since=&until=&entity=&verdict=&direction=&limit=
                                      flow records in the export schema (treasury-monitor.flow/1)
    GET /api/alerts?status=           alerts with per-channel delivery state and their flow record, their
                                      message_id, amends and incident_id (incident messages: totals)
    GET /api/incidents?status=&entity=
                                      incidents, newest first: flows, channels, message ids, latest totals
    GET /api/events?after=ID&limit=   every stored classification, update and retraction, in event-id
                                      order: {"events": [...], "last_id": N}; with `Accept:
                                      text/event-stream` (or /api/events/stream) the same events as
                                      Server-Sent Events, resuming after `after` or `Last-Event-ID`
    GET /api/miners?since=            the chain-wide miner view (treasury-monitor.miners/1): production per
                                      pool and per day, tracked miners' measured vs reported production,
                                      miners' outflows by destination kind, miner-to-exchange, MPI

    GET /, /entity/{name}, /scenarios, /static/...
                                      the dashboard (`monitor.output.dashboard`), read-only HTML

When `[daemon].token` is set every request needs `Authorization: Bearer <token>` (401 otherwise);
binding to a non-loopback address without a token is refused at start. A browser cannot send that
header, so a page opened once with `?token=<token>` sets it as an HttpOnly, SameSite=Strict cookie
(and redirects to the same address without it); the cookie is then accepted like the header.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from typing import Any, Protocol

from aiohttp import web

from monitor.clock import iso, parse_iso
from monitor.config import Config
from monitor.output.dashboard import add_routes as add_dashboard_routes
from monitor.output.export import flow_record
from monitor.run.metrics import Metrics
from monitor.run.runtime import Runtime
from storage import alerts as outbox_store
from storage import incidents as inc_store
from storage.reads import entity_summaries, events_after, flow_row, flow_rows

__all__ = ["ApiHost", "make_app", "start_http", "event_record", "incident_records"]

log = logging.getLogger("treasury_monitor.http")
DAEMON_KEY = web.AppKey("daemon", object)
MAX_LIMIT = 5000
TOKEN_COOKIE = "treasury_monitor_token"


class ApiHost(Protocol):
    """What the endpoints read of the running daemon (monitor.run.daemon.Daemon is one); no import back to it."""

    config: Config
    metrics: Metrics
    rt: Runtime
    events: asyncio.Event

    @property
    def is_stopping(self) -> bool: ...

    def health(self) -> tuple[bool, dict[str, Any]]: ...

    async def refresh_gauges(self) -> None: ...


def _json(data: Any, status: int = 200) -> web.Response:
    return web.json_response(data, status=status, dumps=lambda d: json.dumps(d, ensure_ascii=False))


def _bad(message: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(text=json.dumps({"error": message}), content_type="application/json")


def _int_param(request: web.Request, name: str, default: int, *, lo: int = 0, hi: int = MAX_LIMIT) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        v = int(raw)
    except ValueError:
        raise _bad(f"{name}: expected an integer, got {raw!r}") from None
    if not lo <= v <= hi:
        raise _bad(f"{name}: must be between {lo} and {hi}")
    return v


def _time_param(request: web.Request, name: str) -> int | None:
    raw = request.query.get(name)
    if not raw:
        return None
    try:
        return parse_iso(raw)
    except ValueError:
        raise _bad(f"{name}: expected an ISO date or date-time, got {raw!r}") from None


@web.middleware
async def _auth(request: web.Request, handler):
    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    token = daemon.config.daemon.token
    if token is not None:
        # aiohttp decodes header bytes that are not UTF-8 as surrogates: compare the bytes the client sent,
        # so a garbled header is a wrong token (401), not an encoding error (500)
        secret = token.reveal().encode()
        in_query = request.query.get("token")
        if in_query is not None and hmac.compare_digest(in_query.encode("utf-8", "surrogateescape"), secret):
            # Swap the token in the address for a cookie, so it leaves the address bar and history.
            resp = web.HTTPSeeOther(str(request.rel_url.without_query_params("token")))
            resp.set_cookie(TOKEN_COOKIE, token.reveal(), httponly=True, samesite="Strict", path="/")
            return resp
        given = request.headers.get("Authorization", "").encode("utf-8", "surrogateescape")
        expected = f"Bearer {token.reveal()}".encode()
        cookie = request.cookies.get(TOKEN_COOKIE, "").encode("utf-8", "surrogateescape")
        if not (hmac.compare_digest(given, expected) or hmac.compare_digest(cookie, secret)):
            return web.json_response(
                {"error": "missing or wrong bearer token"},
                status=401,
                headers={"WWW-Authenticate": 'Bearer realm="treasury-monitor"'},
            )
    return await handler(request)


async def healthz(request: web.Request) -> web.Response:
    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    ok, body = daemon.health()
    return _json(body, 200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    await daemon.refresh_gauges()
    return web.Response(
        text=daemon.metrics.render(), content_type="text/plain", charset="utf-8", headers={"X-Content-Type-Options": "nosniff"}
    )


async def api_entities(request: web.Request) -> web.Response:
    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    return _json(await daemon.rt.store.run(entity_summaries))


async def api_flows(request: web.Request) -> web.Response:
    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    limit = _int_param(request, "limit", 1000, lo=1)
    direction = request.query.get("direction")
    if direction not in (None, "", "out", "in", "internal"):
        raise _bad("direction: one of out, in, internal")
    filters = {
        "since": _time_param(request, "since"),
        "until": _time_param(request, "until"),
        "entity": request.query.get("entity") or None,
        "verdict": request.query.get("verdict") or None,
        "direction": direction or None,
    }

    def read(store):
        out = []
        for row in flow_rows(store, **filters):
            out.append(flow_record(row))
            if len(out) >= limit:
                break
        return out

    return _json(await daemon.rt.store.run(read))


def _alert_record(r: dict[str, Any]) -> dict[str, Any]:
    p = r["payload"]
    return {
        "id": r["id"],
        "kind": r["kind"],
        "dedup_key": r["dedup_key"],
        "status": r["status"],
        "created_at": iso(r["created_at"]),
        "changes": p.get("changes", []),
        "channels": [
            {
                "channel": c["channel"],
                "status": c["status"],
                "attempts": c["attempts"],
                "last_error": c["last_error"] or None,
                "delivered_at": iso(c["delivered_at"]),
            }
            for c in r["channels"]
        ],
        "flow": p.get("flow"),
        "message_id": p.get("message_id"),
        "amends": p.get("amends"),
        "incident_id": r.get("incident_id"),
        **({"incident": p["incident"]} if isinstance(p.get("incident"), dict) else {}),
        **({"digest": p["digest"]} if "digest" in p else {}),
    }


async def api_alerts(request: web.Request) -> web.Response:
    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    status = request.query.get("status") or None
    if status not in (None, "queued", "delivered", "failed"):
        raise _bad("status: one of queued, delivered, failed")
    limit = _int_param(request, "limit", 1000, lo=1)
    after = _int_param(request, "after", 0, hi=2**62)
    rows = await daemon.rt.store.run(outbox_store.alert_rows, status=status, after_id=after, limit=limit)
    return _json([_alert_record(r) for r in rows])


def incident_records(store, status: str | None, entity: str | None) -> list[dict[str, Any]]:
    """Incidents, newest first, each with its latest totals (from the newest message sent about it)."""
    out = []
    for r in inc_store.incident_rows(store, status=status, entity=entity):
        messages = inc_store.incident_messages(store, r["id"])
        totals = messages[-1].payload.get("incident") if messages else None
        out.append(
            {
                "id": r["id"],
                "chain": r["chain"],
                "entity": r["entity"],
                "status": r["status"],
                "opened_at": iso(r["opened_at"]),
                "last_flow_at": iso(r["last_flow_at"]),
                "closed_at": iso(r["closed_at"]),
                "flows": r["flows"],
                "channels": r["channels"],
                "messages": [m.id for m in messages],
                "totals": totals,
            }
        )
    return out


async def api_incidents(request: web.Request) -> web.Response:
    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    status = request.query.get("status") or None
    if status not in (None, "open", "closed"):
        raise _bad("status: one of open, closed")
    entity = request.query.get("entity") or None
    return _json(await daemon.rt.store.run(incident_records, status, entity))


def event_record(store, ev: dict[str, Any]) -> dict[str, Any]:
    """One event: its id and kind, and the flow record carrying the classification version it stored."""
    row = flow_row(store, ev["chain"], ev["txid"], ev["entity"])
    rec = flow_record(row, ev) if row is not None else None
    return {"id": ev["event_id"], "kind": ev["event_kind"], "at": iso(ev["event_at"]), "flow": rec}


def _read_events(store, after: int, limit: int) -> list[dict[str, Any]]:
    return [event_record(store, ev) for ev in events_after(store, after, limit=limit)]


async def api_events(request: web.Request) -> web.StreamResponse:
    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    if request.path.endswith("/stream") or "text/event-stream" in request.headers.get("Accept", ""):
        return await _sse(request, daemon)
    after = _int_param(request, "after", 0, hi=2**62)
    limit = _int_param(request, "limit", 500, lo=1)
    events = await daemon.rt.store.run(_read_events, after, limit)
    return _json({"events": events, "last_id": events[-1]["id"] if events else after})


async def _sse(request: web.Request, daemon: ApiHost) -> web.StreamResponse:
    last = request.headers.get("Last-Event-ID") or request.query.get("after") or "0"
    try:
        after = int(last)
    except ValueError:
        raise _bad(f"after / Last-Event-ID: expected an integer, got {last!r}") from None
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
    await resp.prepare(request)
    await resp.write(b"retry: 1000\n\n")  # browsers reconnect after 1 s (instead of their 3-5 s default)
    idle = 0.0
    try:
        while not daemon.is_stopping:
            daemon.events.clear()  # before reading, so an event stored meanwhile still wakes the wait below
            events = await daemon.rt.store.run(_read_events, after, 200)
            for ev in events:
                data = json.dumps(ev, ensure_ascii=False)
                await resp.write(f"id: {ev['id']}\nevent: {ev['kind']}\ndata: {data}\n\n".encode())
                after = ev["id"]
            if events:
                idle = 0.0
                continue
            try:
                # short waits so a stopping daemon is never held up by an open stream
                await asyncio.wait_for(daemon.events.wait(), timeout=1.0)
            except TimeoutError:
                idle += 1.0
                if idle >= 15.0:
                    await resp.write(b": keep-alive\n\n")
                    idle = 0.0
    except (ConnectionResetError, asyncio.CancelledError):
        pass
    return resp


async def api_miners(request: web.Request) -> web.Response:
    from monitor.discovery.miners import view_for_registry

    daemon: ApiHost = request.app[DAEMON_KEY]  # type: ignore[assignment]
    since = _time_param(request, "since")
    registry = daemon.rt.pipeline.registry
    return _json(await daemon.rt.store.run(lambda store: view_for_registry(store, registry, since=since)))


def make_app(daemon: ApiHost) -> web.Application:
    """The aiohttp application serving the daemon's endpoints."""
    app = web.Application(middlewares=[_auth])
    app[DAEMON_KEY] = daemon
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/entities", api_entities)
    app.router.add_get("/api/flows", api_flows)
    app.router.add_get("/api/alerts", api_alerts)
    app.router.add_get("/api/incidents", api_incidents)
    app.router.add_get("/api/events", api_events)
    app.router.add_get("/api/events/stream", api_events)
    app.router.add_get("/api/miners", api_miners)
    add_dashboard_routes(app, DAEMON_KEY)
    return app


async def start_http(daemon: ApiHost, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve the app; returns the runner (cleanup on stop) and the bound port (useful with port 0)."""
    runner = web.AppRunner(make_app(daemon), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1] if runner.addresses else port
    return runner, bound
