"""HttpClient against tiny real aiohttp servers on 127.0.0.1; sleeps are recorded by FrozenClock."""

from __future__ import annotations

import asyncio
import logging
import random

import aiohttp
import pytest
from aiohttp import web
from fakes.net import free_port

from monitor.clock import FrozenClock
from monitor.model import MalformedError, RateLimitedError, SourceError, TransientError
from watchers.http import FailureLog, HttpClient, RequestTally, RetryPolicy, http_status, parse_retry_after, retry

SECRET = "Bearer sk-live-0123456789abcdef"


class Script:
    """A server whose answers are scripted per request: a list of (status, body, headers, delay)."""

    def __init__(self):
        self.answers: list[tuple[int, bytes, dict, float]] = []
        self.default = (200, b'{"ok": true}', {"Content-Type": "application/json"}, 0.0)
        self.seen: list[tuple[str, dict]] = []

    def then(
        self,
        status: int = 200,
        body: bytes | str = b'{"ok": true}',
        headers: dict | None = None,
        delay: float = 0.0,
        times: int = 1,
    ) -> Script:
        raw = body.encode() if isinstance(body, str) else body
        self.answers.extend([(status, raw, headers or {}, delay)] * times)
        return self

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.path, dict(request.headers)))
        status, body, headers, delay = self.answers.pop(0) if self.answers else self.default
        if delay:
            await asyncio.sleep(delay)
        if status == -1:  # a body cut short: Content-Length promises more than is sent
            resp = web.StreamResponse(status=200, headers={"Content-Length": str(len(body) + 100)})
            await resp.prepare(request)
            await resp.write(body)
            request.transport.close()
            return resp
        return web.Response(status=status, body=body, headers=headers)


@pytest.fixture
async def script_server(aiohttp_server):
    script = Script()
    app = web.Application()
    app.router.add_get("/{tail:.*}", script.handle)
    server = await aiohttp_server(app)
    script.url = str(server.make_url("/api"))
    return script


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def make_client(session, urls, clock, **kw) -> HttpClient:
    kw.setdefault("rate_limit", None)
    kw.setdefault("rng", random.Random(7))
    return HttpClient("esplora-test", urls, session, clock=clock, **kw)


async def test_json_success_counts_request(script_server, session):
    clock = FrozenClock()
    script_server.then(200, '{"height": 5}')
    client = make_client(session, [script_server.url], clock)
    tally = RequestTally()
    assert await client.get_json("/x", tally=tally) == {"height": 5}
    assert client.stats.requests == 1 and tally.requests == 1
    assert client.stats.last_success_at == clock.now
    assert script_server.seen[0][0] == "/api/x"


async def test_429_with_retry_after_waits_exactly_that(script_server, session):
    clock = FrozenClock()
    notice = "Blockstream Explorer API NOTICE: Your request rate exceeds the current limit"
    script_server.then(429, f'{{"notice": "{notice}"}}', {"Retry-After": "7"}).then(200, "[1, 2]")
    client = make_client(session, [script_server.url], clock)
    assert await client.get_json("/a") == [1, 2]
    assert clock.sleeps == [7.0]
    assert client.stats.errors == {"rate_limited": 1}
    assert client.stats.retries == 1


async def test_429_retry_after_http_date_and_cap(script_server, session):
    clock = FrozenClock()
    # An HTTP date 30 s after the frozen now, then a huge delay that is capped at max_retry_after.
    date = "Thu, 01 Jan 2026 00:00:30 GMT"
    script_server.then(429, "<html>slow down</html>", {"Retry-After": date})
    script_server.then(429, "<html>slow down</html>", {"Retry-After": "99999"}).then(200, "{}")
    client = make_client(session, [script_server.url], clock, max_retry_after=60)
    assert await client.get_json("/a") == {}
    assert clock.sleeps == [30.0, 60.0]


async def test_429_body_never_parsed_and_without_retry_after_backs_off(script_server, session):
    clock = FrozenClock()
    script_server.then(429, '{"txid": "not data"}', times=3)
    client = make_client(session, [script_server.url], clock, retries=2, backoff_base=1.0)
    with pytest.raises(RateLimitedError) as info:
        await client.get_json("/a")
    assert info.value.retry_after is None
    assert "status=429" in str(info.value)
    # Two waits (after attempts 1 and 2), each at least half of its exponential step (1 s, 2 s).
    assert len(clock.sleeps) == 2
    assert 0.5 <= clock.sleeps[0] <= 1.0 and 1.0 <= clock.sleeps[1] <= 2.0


async def test_three_500s_then_success(script_server, session):
    clock = FrozenClock()
    script_server.then(500, "oops", times=2).then(503, "busy").then(200, '{"ok": 1}')
    client = make_client(session, [script_server.url], clock, retries=3, backoff_base=0.25, backoff_cap=10)
    assert await client.get_json("/a") == {"ok": 1}
    assert client.stats.requests == 4 and client.stats.retries == 3
    assert client.stats.errors == {"http_5xx": 3}
    assert len(clock.sleeps) == 3
    for attempt, delay in enumerate(clock.sleeps):  # full jitter within the exponential step
        assert 0.0 <= delay <= 0.25 * 2**attempt


async def test_5xx_exhausted_raises_transient(script_server, session):
    clock = FrozenClock()
    script_server.then(502, "bad gateway", times=10)
    client = make_client(session, [script_server.url], clock, retries=2)
    with pytest.raises(TransientError) as info:
        await client.get_json("/a")
    assert "status=502" in str(info.value) and "bad gateway" in str(info.value)
    assert client.stats.requests == 3


async def test_timeout_is_transient_and_retried(script_server, session):
    clock = FrozenClock()
    script_server.then(200, "{}", delay=1.0).then(200, '{"late": false}')
    client = make_client(session, [script_server.url], clock, timeout=0.2, retries=1)
    assert await client.get_json("/a") == {"late": False}
    assert client.stats.errors == {"timeout": 1}


async def test_timeout_exhausted(script_server, session):
    clock = FrozenClock()
    script_server.then(200, "{}", delay=1.0, times=2)
    client = make_client(session, [script_server.url], clock, timeout=0.2, retries=1)
    with pytest.raises(TransientError, match="timeout") as info:
        await client.get_json("/a")
    assert isinstance(info.value.__cause__, TimeoutError)


@pytest.mark.parametrize(
    "body",
    [b"<html><body>Mempool Enterprise</body></html>", b'{"txid": "ab", "vout": [1, 2', b"\xff\xfe\x00garbage", b"NaN"],
    ids=["html", "truncated-json", "binary", "nan"],
)
async def test_malformed_body_retried_then_raised(script_server, session, body):
    clock = FrozenClock()
    script_server.then(200, body, times=3)
    client = make_client(session, [script_server.url], clock, retries=2)
    with pytest.raises(MalformedError, match="not"):
        await client.get_json("/a")
    assert client.stats.requests == 3
    assert client.stats.errors == {"malformed": 3}


async def test_malformed_then_good_answer(script_server, session):
    clock = FrozenClock()
    script_server.then(200, '[{"txid": ').then(200, "[]")
    client = make_client(session, [script_server.url], clock)
    assert await client.get_json("/a") == []


async def test_body_cut_short_is_transient(script_server, session):
    clock = FrozenClock()
    script_server.then(-1, '{"a": 1').then(200, '{"a": 1}')
    client = make_client(session, [script_server.url], clock)
    assert await client.get_json("/a") == {"a": 1}
    assert client.stats.errors == {"payload": 1}


async def test_text_and_bytes(script_server, session):
    clock = FrozenClock()
    script_server.then(200, "698767\n").then(200, b"\x00\x01")
    client = make_client(session, [script_server.url], clock)
    assert await client.get_text("/blocks/tip/height") == "698767\n"
    assert await client.get_bytes("/block/raw") == b"\x00\x01"


async def test_404_is_permanent_not_retried(script_server, session):
    clock = FrozenClock()
    script_server.then(404, "Transaction not found", times=5)
    client = make_client(session, [script_server.url], clock)
    with pytest.raises(SourceError) as info:
        await client.get_json("/tx/00")
    assert not isinstance(info.value, (TransientError, MalformedError))
    assert "status=404" in str(info.value) and "Transaction not found" in str(info.value)
    assert http_status(info.value) == 404
    assert client.stats.requests == 1 and clock.sleeps == []
    assert client.stats.errors == {"http_4xx": 1}


async def test_connection_refused_fails_over_and_sticks(script_server, session):
    clock = FrozenClock()
    dead = f"http://127.0.0.1:{free_port()}/api"
    client = make_client(session, [dead, script_server.url], clock, retries=1, failback_after=300)
    assert await client.get_json("/a") == {"ok": True}
    assert client.stats.errors == {"connection": 2}
    assert client.stats.failovers == 1
    assert client.active_url == script_server.url
    # Sticky: the next call goes straight to the second URL.
    assert await client.get_json("/b") == {"ok": True}
    assert client.stats.requests_by_url == {dead: 2, script_server.url: 2}
    # After failback_after, the first URL is tried again (still dead: fail over once more).
    clock.advance(301)
    assert await client.get_json("/c") == {"ok": True}
    assert client.stats.requests_by_url == {dead: 4, script_server.url: 3}


async def test_failback_when_first_url_recovers(aiohttp_server, session):
    clock = FrozenClock()
    first, second = Script(), Script()
    servers = []
    for s in (first, second):
        app = web.Application()
        app.router.add_get("/{tail:.*}", s.handle)
        servers.append(await aiohttp_server(app))
    first.then(503, "down", times=2)
    client = make_client(session, [str(x.make_url("/api")) for x in servers], clock, retries=1)
    await client.get_json("/a")
    assert client.active_url == str(servers[1].make_url("/api"))
    clock.advance(300)
    await client.get_json("/b")
    assert client.active_url == str(servers[0].make_url("/api"))
    assert [p for p, _ in first.seen] == ["/api/a", "/api/a", "/api/b"]


async def test_all_urls_fail_raises_last_error(session):
    clock = FrozenClock()
    urls = [f"http://127.0.0.1:{free_port()}/api", f"http://127.0.0.1:{free_port()}/api"]
    client = make_client(session, urls, clock, retries=0)
    with pytest.raises(TransientError, match="connection") as info:
        await client.get_json("/a")
    assert isinstance(info.value.__cause__, aiohttp.ClientError)
    assert client.stats.requests == 2


async def test_rate_limit_spacing(script_server, session):
    clock = FrozenClock()
    client = make_client(session, [script_server.url], clock, rate_limit=2.0)
    for _ in range(4):
        await client.get_json("/a")
    assert clock.sleeps == [0.5, 0.5, 0.5]
    clock.advance(10)  # idle time is not banked as a burst beyond one request
    await client.get_json("/a")
    await client.get_json("/a")
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5]


async def test_rate_limit_concurrent_callers_queue(script_server, session):
    clock = FrozenClock()
    start = clock.now
    client = make_client(session, [script_server.url], clock, rate_limit=1.0)
    await asyncio.gather(*(client.get_json(f"/p{i}") for i in range(3)))
    # Slots are reserved before sleeping: the three requests start at +0 s, +1 s and +2 s.
    assert clock.sleeps == [1.0, 1.0] and clock.now - start == 2.0


async def test_secrets_in_headers_never_logged(script_server, session, caplog):
    caplog.set_level(logging.DEBUG, logger="watchers.http")
    clock = FrozenClock()
    script_server.then(500, f"echo {SECRET}").then(429, "slow", {"Retry-After": "1"}).then(200, "{}")
    script_server.then(401, f"bad token {SECRET}")
    client = make_client(session, [script_server.url], clock, headers={"Authorization": SECRET})
    await client.get_json("/a")
    with pytest.raises(SourceError) as info:
        await client.get_json("/b")
    assert script_server.seen[0][1]["Authorization"] == SECRET  # it was sent
    assert SECRET not in caplog.text and SECRET not in str(info.value)
    assert SECRET not in (client.stats.last_error or "")
    assert "***" in str(info.value)


async def test_logs_first_failure_and_recovery_only(script_server, session, caplog):
    caplog.set_level(logging.INFO, logger="watchers.http")
    clock = FrozenClock()
    script_server.then(500, "x", times=3).then(200, "{}")
    client = make_client(session, [script_server.url], clock)
    await client.get_json("/a")
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("http failing source=esplora-test") and "status=500" in messages[0]
    assert messages[1].startswith("http recovered") and "failed_attempts=3" in messages[1]


def test_parse_retry_after():
    now = 1_767_225_600.0
    assert parse_retry_after("120", now) == 120.0
    assert parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", now) == 60.0
    assert parse_retry_after("Wed, 31 Dec 2025 00:00:00 GMT", now) == 0.0
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("inf", now) is None


async def test_parse_errors_are_retried_like_garbled_bodies(script_server, session):
    clock = FrozenClock()
    script_server.then(200, '{"error": "try later"}').then(200, '{"height": 7}')

    def parse(data):
        if "height" not in data:
            raise MalformedError("height: missing")
        return data["height"]

    client = make_client(session, [script_server.url], clock)
    assert await client.get_json("/h", parse=parse) == 7
    assert client.stats.errors == {"malformed": 1} and client.stats.requests == 2
    assert await client.get_text("/t", parse=str.upper) == '{"OK": TRUE}'


async def test_a_redirect_to_another_host_is_refused_and_gets_no_configured_header(aiohttp_server, session, caplog):
    """An API key must never follow a 302 to another host, nor that host's answer become the source's data."""
    elsewhere_seen: list[dict] = []

    async def elsewhere(request: web.Request) -> web.Response:
        elsewhere_seen.append(dict(request.headers))
        return web.json_response({"height": 666})

    other_app = web.Application()
    other_app.router.add_get("/{tail:.*}", elsewhere)
    other = await aiohttp_server(other_app, host="127.0.0.2")

    async def origin(request: web.Request) -> web.Response:
        if request.path == "/api/moved":  # same host: followed, with the header
            raise web.HTTPFound("/api/here")
        if request.path == "/api/here":
            return web.json_response({"height": 5, "key": request.headers.get("X-Api-Key")})
        raise web.HTTPFound(str(other.make_url(request.path)) + "?token=leak")

    app = web.Application()
    app.router.add_get("/{tail:.*}", origin)
    server = await aiohttp_server(app)
    client = make_client(session, [str(server.make_url("/api"))], FrozenClock(), headers={"X-Api-Key": "key-0123456789"})

    assert await client.get_json("/moved") == {"height": 5, "key": "key-0123456789"}
    caplog.set_level(logging.WARNING, logger="watchers.http")
    for _ in range(2):
        with pytest.raises(SourceError) as info:
            await client.get_json("/tip")
        assert not isinstance(info.value, TransientError)  # permanent: not retried against the other host
        assert "another host" in str(info.value) and "key-0123456789" not in str(info.value)
    assert elsewhere_seen == []
    refused = [r.getMessage() for r in caplog.records if "redirect refused" in r.getMessage()]
    assert refused == [
        f"http redirect refused source=esplora-test url={server.make_url('/api')} to=http://127.0.0.2:{other.port}"
    ]
    assert "leak" not in caplog.text and "key-0123456789" not in caplog.text


# --- the shared retry policy and failure log (every source uses them) ------------------------------


class Flaky:
    """A call that raises the scripted errors in turn, then answers "ok"; counts its calls."""

    def __init__(self, *errors: SourceError):
        self.errors = list(errors)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return "ok"


async def test_retry_sleeps_jittered_capped_steps_through_the_injected_sleep():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    call = Flaky(*[TransientError("503")] * 4)
    policy = RetryPolicy(retries=4, base=1.0, cap=3.0)
    assert await retry(call, policy, sleep=sleep, rng=random.Random(7)) == "ok"
    assert call.calls == 5 and len(slept) == 4
    assert all(0 <= s <= step for s, step in zip(slept, [1.0, 2.0, 3.0, 3.0], strict=True))  # full jitter, capped
    assert [policy.step(n) for n in range(4)] == [1.0, 2.0, 3.0, 3.0]


async def test_retry_gives_up_after_the_budget_and_never_retries_a_permanent_error():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    failures: list[int] = []
    spent = Flaky(*[TransientError("timeout")] * 3)
    with pytest.raises(TransientError):
        await retry(
            spent,
            RetryPolicy(retries=2),
            sleep=sleep,
            rng=random.Random(1),
            on_failure=lambda exc, attempt: failures.append(attempt),
        )
    assert spent.calls == 3 and len(slept) == 2 and failures == [0, 1, 2]

    refused = Flaky(SourceError("HTTP 404"))
    with pytest.raises(SourceError, match="404"):
        await retry(refused, RetryPolicy(retries=5), sleep=sleep, rng=random.Random(1))
    assert refused.calls == 1 and len(slept) == 2  # no sleep, no second attempt

    garbled = Flaky(MalformedError("not JSON"))
    with pytest.raises(MalformedError):  # a caller may narrow what is retryable
        await retry(
            garbled,
            RetryPolicy(retries=5),
            sleep=sleep,
            rng=random.Random(1),
            retryable=lambda exc: isinstance(exc, TransientError),
        )
    assert garbled.calls == 1


async def test_retry_delay_hook_replaces_the_wait_or_skips_it():
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)

    call = Flaky(RateLimitedError("429", 7.0), TransientError("503"))
    delays = iter([None, 0.5])
    assert (
        await retry(call, RetryPolicy(retries=3), sleep=sleep, rng=random.Random(1), delay=lambda exc, attempt: next(delays))
        == "ok"
    )
    assert slept == [0.5]  # None: the caller waits elsewhere (HttpClient blocks the URL instead)


def test_equal_jitter_always_pauses_at_least_half_the_step():
    policy = RetryPolicy(base=2.0, cap=8.0)
    rng = random.Random(3)
    for attempt, step in enumerate([2.0, 4.0, 8.0, 8.0]):
        assert all(step / 2 <= policy.equal_jitter(attempt, rng) <= step for _ in range(50))


def test_failure_log_logs_the_first_failure_and_the_recovery_per_key(caplog):
    caplog.set_level(logging.DEBUG, logger="test.failures")
    failures = FailureLog(logging.getLogger("test.failures"))
    assert failures.failed("boom", "down key=%s", "still down key=%s", "a", key="a") is True
    assert failures.failed("boom", "down key=%s", "still down key=%s", "a", key="a") is False
    assert failures.failed("other", "down key=%s", "still down key=%s", "b", key="b") is True
    assert "a" in failures and failures.reason("a") == "boom" and failures.reason("c") is None
    assert failures.recovered("up key=%s", "a", key="a") == "boom"
    assert failures.recovered("up key=%s", "a", key="a") is None  # not failing: nothing logged
    got = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert got == [("WARNING", "down key=a"), ("DEBUG", "still down key=a"), ("WARNING", "down key=b"), ("INFO", "up key=a")]


def test_failure_log_with_changes_warns_when_the_reason_changes(caplog):
    caplog.set_level(logging.DEBUG, logger="test.failures")
    failures = FailureLog(logging.getLogger("test.failures"), changes=True)
    for reason in ("ibd", "ibd", "auth"):
        failures.failed(reason, "failed %s", "still failing %s", reason)
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "failed ibd"),
        ("DEBUG", "still failing ibd"),
        ("WARNING", "still failing auth"),
    ]
