"""A scriptable HTTP sink on 127.0.0.1 for alert channels (Slack, webhook) and the outbox/daemon tests.

It records every request and answers from a script, then with a default reply (200 `ok`):

    async with Receiver() as rx:                       # listens on 127.0.0.1, a port picked by the OS
        url = rx.url("/services/T0/B0/token")          # any path is accepted and recorded
        rx.fail(3)                                     # 500, 500, 500, then the default 200
        rx.rate_limit(retry_after="2")                 # one 429 with Retry-After: 2
        rx.delay(30)                                   # hold one answer 30 s (stop() releases it)
        rx.drop()                                      # close one connection without answering
        rx.script(Reply(400, "invalid_payload"))       # any replies, consumed in order
        ...
        reqs = await rx.wait_for(1)                    # [RecordedRequest(method, path, query, headers,
                                                       #                  body, json, status)]

Refused connections: `Receiver()` whose `url()` is asked before `start()` reserves its port, so a
client can be pointed at a port where nothing listens yet; `await rx.stop()` then `await rx.start()`
listens again on the same port (the URL stays valid across restarts).

`on_request(recorded) -> Reply | None` is an optional hook called before the script, e.g. to verify
a signature and answer 401. No access log is written: request paths may carry secrets (Slack tokens)
and tests grep the logs for them.

`block_kit_problems(body)` checks a Slack message against Block Kit structure and limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from fakes.net import free_port
from multidict import CIMultiDict, CIMultiDictProxy

__all__ = ["Receiver", "Reply", "OK", "RecordedRequest", "free_port", "block_kit_problems"]


@dataclass(frozen=True)
class Reply:
    """One scripted answer. `delay` holds it (seconds, released early by stop()); `drop` hangs up instead."""

    status: int = 200
    body: bytes | str = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    drop: bool = False


OK = Reply()


@dataclass(frozen=True)
class RecordedRequest:
    """What the receiver got. `json` is the parsed body or None; `status` what was answered (None: dropped)."""

    method: str
    path: str
    query: dict[str, str]
    headers: CIMultiDictProxy[str]
    body: bytes
    json: Any
    status: int | None

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


class Receiver:
    """The sink; see the module docstring. Usable as an async context manager."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        default: Reply = OK,
        on_request: Callable[[RecordedRequest], Reply | None] | None = None,
    ):
        self.host = host
        self._port = port
        self.default = default
        self.on_request = on_request
        self.requests: list[RecordedRequest] = []
        self._script: deque[Reply] = deque()
        self._runner: web.AppRunner | None = None
        self._release = asyncio.Event()
        self._arrived = asyncio.Condition()

    # --- lifecycle --------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        """The port: reserved on first use when not started yet, then kept across restarts."""
        if self._port == 0:
            self._port = free_port()
        return self._port

    @property
    def is_running(self) -> bool:
        return self._runner is not None

    def url(self, path: str = "/") -> str:
        """`http://127.0.0.1:<port><path>`."""
        return f"http://{self.host}:{self.port}{path if path.startswith('/') else '/' + path}"

    async def start(self) -> Receiver:
        """Listen (on the same port as before, if there was a before)."""
        if self._runner is not None:
            return self
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self._port, reuse_address=True)
        try:
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        if self._port == 0:
            self._port = runner.addresses[0][1]
        self._release = asyncio.Event()
        self._runner = runner
        return self

    async def stop(self) -> None:
        """Stop listening; held (delayed) answers are released first. Connections are then refused."""
        if self._runner is None:
            return
        self._release.set()
        runner, self._runner = self._runner, None
        await runner.cleanup()

    async def restart(self) -> None:
        """Stop, then listen again on the same port."""
        await self.stop()
        await self.start()

    async def __aenter__(self) -> Receiver:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- scripting --------------------------------------------------------------------------------

    def script(self, *replies: Reply) -> None:
        """Queue replies, answered in order before the default."""
        self._script.extend(replies)

    def fail(self, times: int = 1, status: int = 500, body: str = "internal error") -> None:
        """Answer `status` the next `times` requests."""
        self.script(*[Reply(status, body)] * times)

    def rate_limit(self, retry_after: str | None = "2", times: int = 1) -> None:
        """Answer 429 (with `Retry-After: retry_after` unless None) the next `times` requests."""
        headers = {"Retry-After": retry_after} if retry_after is not None else {}
        self.script(*[Reply(429, "rate_limited", headers)] * times)

    def delay(self, seconds: float, times: int = 1, reply: Reply = OK) -> None:
        """Hold the next `times` answers `seconds` (real time; a client timeout is what tests want)."""
        self.script(*[Reply(reply.status, reply.body, reply.headers, delay=seconds)] * times)

    def drop(self, times: int = 1) -> None:
        """Close the next `times` connections without an answer."""
        self.script(*[Reply(drop=True)] * times)

    def clear(self) -> None:
        """Forget recorded requests and pending script entries."""
        self.requests.clear()
        self._script.clear()

    @property
    def pending(self) -> int:
        """Scripted replies not consumed yet."""
        return len(self._script)

    # --- observing --------------------------------------------------------------------------------

    async def wait_for(self, count: int, timeout: float = 5.0) -> list[RecordedRequest]:
        """Wait until at least `count` requests were recorded; returns them all.

        :raises TimeoutError: after `timeout` seconds (a safety net, not a timing assertion).
        """
        async with asyncio.timeout(timeout):
            async with self._arrived:
                await self._arrived.wait_for(lambda: len(self.requests) >= count)
        return list(self.requests)

    def json_bodies(self) -> list[Any]:
        """Parsed JSON bodies of the requests answered with 2xx, in arrival order."""
        return [r.json for r in self.requests if r.status is not None and 200 <= r.status < 300]

    # --- the handler ------------------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        try:
            parsed = json.loads(body) if body else None
        except ValueError:
            parsed = None
        provisional = RecordedRequest(
            request.method,
            request.path,
            dict(request.query),
            CIMultiDictProxy(CIMultiDict(request.headers)),
            body,
            parsed,
            None,
        )
        reply = self.on_request(provisional) if self.on_request else None
        if reply is None:
            reply = self._script.popleft() if self._script else self.default
        recorded = RecordedRequest(
            *[getattr(provisional, f) for f in ("method", "path", "query", "headers", "body", "json")],
            None if reply.drop else reply.status,
        )
        async with self._arrived:
            self.requests.append(recorded)
            self._arrived.notify_all()
        if reply.delay > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._release.wait(), reply.delay)
        if reply.drop:
            if request.transport is not None:
                request.transport.abort()
            raise asyncio.CancelledError  # nothing to answer on an aborted connection
        body_bytes = reply.body.encode() if isinstance(reply.body, str) else reply.body
        return web.Response(status=reply.status, body=body_bytes, headers=reply.headers)


# --- Slack sink checks ----------------------------------------------------------------------------

_TEXT_TYPES = {"plain_text", "mrkdwn"}
_BLOCK_TYPES = {"header", "section", "context", "actions", "divider", "image"}


def _text_problems(obj: Any, where: str, limit: int, *, plain_only: bool = False) -> list[str]:
    if not isinstance(obj, dict) or obj.get("type") not in _TEXT_TYPES:
        return [f"{where}: not a text object: {obj!r:.80}"]
    if plain_only and obj["type"] != "plain_text":
        return [f"{where}: must be plain_text"]
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        return [f"{where}: empty text"]
    if len(text) > limit:
        return [f"{where}: {len(text)} chars > {limit}"]
    return []


def block_kit_problems(body: Any) -> list[str]:
    """What makes `body` an invalid Slack Incoming Webhook message (Block Kit limits); [] if valid.

    Checked: a string `text` fallback; ≤ 50 blocks of known types; header plain_text ≤ 150; section
    text ≤ 3000 and/or ≤ 10 fields of ≤ 2000; context ≤ 10 elements; actions ≤ 25 buttons with
    plain_text ≤ 75 and an http(s) url ≤ 3000.
    """
    if not isinstance(body, dict):
        return ["body is not a JSON object"]
    problems = []
    if not isinstance(body.get("text"), str) or not body["text"]:
        problems.append("text: missing fallback")
    blocks = body.get("blocks")
    if not isinstance(blocks, list) or not blocks:
        return problems + ["blocks: missing"]
    if len(blocks) > 50:
        problems.append(f"blocks: {len(blocks)} > 50")
    for i, b in enumerate(blocks):
        where = f"blocks[{i}]"
        t = b.get("type") if isinstance(b, dict) else None
        if t not in _BLOCK_TYPES:
            problems.append(f"{where}: unknown type {t!r}")
            continue
        if t == "header":
            problems += _text_problems(b.get("text"), f"{where}.text", 150, plain_only=True)
        elif t == "section":
            if "text" not in b and "fields" not in b:
                problems.append(f"{where}: neither text nor fields")
            if "text" in b:
                problems += _text_problems(b["text"], f"{where}.text", 3000)
            if "fields" in b:
                fields = b["fields"]
                if not isinstance(fields, list) or not 1 <= len(fields) <= 10:
                    problems.append(f"{where}.fields: need 1..10")
                else:
                    for j, f in enumerate(fields):
                        problems += _text_problems(f, f"{where}.fields[{j}]", 2000)
        elif t == "context":
            els = b.get("elements")
            if not isinstance(els, list) or not 1 <= len(els) <= 10:
                problems.append(f"{where}.elements: need 1..10")
            else:
                for j, e in enumerate(els):
                    problems += _text_problems(e, f"{where}.elements[{j}]", 3000)
        elif t == "actions":
            els = b.get("elements")
            if not isinstance(els, list) or not 1 <= len(els) <= 25:
                problems.append(f"{where}.elements: need 1..25")
            else:
                for j, e in enumerate(els):
                    if e.get("type") != "button":
                        problems.append(f"{where}.elements[{j}]: not a button")
                        continue
                    problems += _text_problems(e.get("text"), f"{where}.elements[{j}].text", 75, plain_only=True)
                    url = e.get("url")
                    if url is not None and (
                        not isinstance(url, str) or not url.startswith(("http://", "https://")) or len(url) > 3000
                    ):
                        problems.append(f"{where}.elements[{j}].url: invalid")
    return problems
