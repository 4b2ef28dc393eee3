"""Bitcoin Core's JSON-RPC client: calls and batches over one aiohttp session, auth, errors, retries.

Errors: HTTP 401 → "bitcoind at host:port rejected the RPC credentials (check rpcuser/rpcpassword or the
cookie file)" (`SourceError`; a cookie file is re-read once first, as the node writes a new one at each
start); HTTP 403 → allow this machine with `rpcallowip=`; warm-up (-28) and initial block download (-10)
→ `TransientError`; HTTP 503 "Work queue depth exceeded", other 5xx without a JSON-RPC body, timeouts and
refused connections → `TransientError`, retried `retries` times with jittered backoff inside one call
(the shared `watchers.http.retry`); a reply that is not JSON-RPC → `MalformedError`; any other RPC
error → `SourceError` whose code `rpc_code()` gives. Credentials (user/password, cookie) never appear in
logs or messages: only `host:port` does. Replies are decoded with `parse_float=Decimal` so that amounts
stay exact (see `watchers.bitcoind.parse`).
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import logging
import random
from collections.abc import Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import aiohttp
from yarl import URL

from monitor.model import Clock, MalformedError, SourceError, TransientError
from watchers.bitcoind.parse import show
from watchers.http import RequestTally, RetryPolicy, retry

__all__ = [
    "BitcoindRpc",
    "RPC_CLIENT_IN_INITIAL_DOWNLOAD",
    "RPC_INVALID_ADDRESS_OR_KEY",
    "RPC_IN_WARMUP",
    "rpc_code",
    "source_error",
]

_DEFAULT_MAX_BODY = 256 * 1024 * 1024  # a verbosity-3 block of a full 4 MWU block is ~10-30 MB of JSON

# Core RPC error codes (src/rpc/protocol.h)
RPC_INVALID_ADDRESS_OR_KEY = -5
RPC_IN_WARMUP = -28
RPC_CLIENT_IN_INITIAL_DOWNLOAD = -10


def source_error(
    cls: type[SourceError], message: str, *, kind: str, code: int | None = None, status: int | None = None, rpc_message: str = ""
) -> SourceError:
    """An error of the model's tree carrying `kind` (for counters), the RPC code and message, the HTTP status."""
    exc = cls(message)
    exc.kind = kind  # type: ignore[attr-defined]
    exc.rpc_code = code  # type: ignore[attr-defined]
    exc.rpc_message = rpc_message  # type: ignore[attr-defined]
    exc.status = status  # type: ignore[attr-defined]
    return exc


def rpc_code(exc: BaseException) -> int | None:
    """The JSON-RPC error code behind a SourceError raised by BitcoindRpc (e.g. -5), or None."""
    return getattr(exc, "rpc_code", None)


def _parse_json(text: str) -> Any:
    def reject(name: str) -> Any:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_float=Decimal, parse_constant=reject)


class BitcoindRpc:
    """JSON-RPC 1.0 calls and batches to one bitcoind over a shared aiohttp session.

    Credentials: `user`/`password`, or `cookie_file` (Core's `<datadir>/.cookie`, `__cookie__:<token>`,
    re-read after a 401 because the node writes a new one at each start), or none. Credentials in the
    URL (`http://user:pass@host:port`) are accepted and moved to the Authorization header. Only
    `host:port` ever appears in messages and logs.
    """

    def __init__(
        self,
        url: str,
        session: aiohttp.ClientSession,
        *,
        clock: Clock,
        user: str | None = None,
        password: str | None = None,
        cookie_file: str | Path | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        backoff_base: float = 0.5,
        backoff_cap: float = 10.0,
        max_body: int = _DEFAULT_MAX_BODY,
        rng: random.Random | None = None,
        log: logging.Logger | None = None,
    ):
        u = URL(url)
        if u.user is not None and user is None:
            user, password = u.user, u.password or ""
        self._url = str(u.with_user(None).with_password(None))
        self.where = f"{u.host}:{u.port}"
        self._session = session
        self._clock = clock
        self._user, self._password = user, password
        self._cookie_file = Path(cookie_file) if cookie_file is not None else None
        self._cookie_auth: str | None = None
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self.retries = max(0, retries)
        self._backoff_base, self._backoff_cap = backoff_base, backoff_cap
        self._max_body = max_body
        self._rng = rng or random.Random()
        self._log = log or logging.getLogger("watchers.bitcoind")
        self._ids = itertools.count(1)

    def __repr__(self) -> str:
        return f"BitcoindRpc({self.where})"

    # credentials

    async def _auth(self, reload: bool = False) -> str | None:
        """The Authorization header value (never logged); the cookie file is read off the event loop."""
        if self._user is not None:
            return _basic(self._user, self._password or "")
        if self._cookie_file is None:
            return None
        if self._cookie_auth is None or reload:
            try:
                text = (await asyncio.to_thread(self._cookie_file.read_text)).strip()
            except OSError as exc:
                raise source_error(
                    SourceError,
                    f"cannot read the bitcoind cookie file {self._cookie_file} ({exc.strerror}); "
                    f"is bitcoind at {self.where} running with that datadir?",
                    kind="auth",
                ) from exc
            user, sep, password = text.partition(":")
            if not sep:
                raise source_error(
                    SourceError, f"the bitcoind cookie file {self._cookie_file} is not of the form user:password", kind="auth"
                )
            self._cookie_auth = _basic(user, password)
        return self._cookie_auth

    # calls

    async def call(self, method: str, *params: Any, tally: RequestTally | None = None) -> Any:
        """One RPC; returns its `result`. :raises SourceError: (rpc_code() tells JSON-RPC errors apart)"""
        reply = await self._post(
            {"jsonrpc": "1.0", "id": next(self._ids), "method": method, "params": list(params)}, method, tally
        )
        return self._unwrap(reply, method)

    async def batch(self, calls: Sequence[tuple[str, Sequence[Any]]], *, tally: RequestTally | None = None) -> list[Any]:
        """Several RPCs in one HTTP request; each item is the result or the SourceError of that call.

        :raises SourceError: when the request as a whole fails (transport, auth, malformed reply).
        """
        if not calls:
            return []
        ids = [next(self._ids) for _ in calls]
        payload = [{"jsonrpc": "1.0", "id": i, "method": m, "params": list(p)} for i, (m, p) in zip(ids, calls, strict=True)]
        label = f"batch of {len(calls)} ({calls[0][0]}...)"
        replies = await self._post(payload, label, tally)
        if not isinstance(replies, list):
            raise source_error(
                MalformedError,
                f"bitcoind at {self.where}: {label}: expected an array of replies, got {show(replies)}",
                kind="malformed",
            )
        by_id: dict[Any, Any] = {}
        for r in replies:
            if isinstance(r, dict) and "id" in r:
                by_id[r["id"]] = r
        out: list[Any] = []
        for i, (method, _) in zip(ids, calls, strict=True):
            reply = by_id.get(i)
            if reply is None:
                raise source_error(
                    MalformedError, f"bitcoind at {self.where}: {label}: no reply for {method} (id {i})", kind="malformed"
                )
            try:
                out.append(self._unwrap(reply, method))
            except SourceError as exc:
                if isinstance(exc, MalformedError):
                    raise
                out.append(exc)
        return out

    def _unwrap(self, reply: Any, method: str) -> Any:
        if not isinstance(reply, dict):
            raise source_error(
                MalformedError,
                f"bitcoind at {self.where}: {method}: expected a JSON-RPC reply object, got {show(reply)}",
                kind="malformed",
            )
        err = reply.get("error")
        if err is not None:
            if not isinstance(err, dict):
                raise source_error(
                    MalformedError,
                    f"bitcoind at {self.where}: {method}: error: expected an object, got {show(err)}",
                    kind="malformed",
                )
            code = err.get("code")
            code = code if isinstance(code, int) and not isinstance(code, bool) else None
            message = str(err.get("message", ""))[:300]
            if code == RPC_IN_WARMUP:
                raise source_error(
                    TransientError, f"bitcoind at {self.where} is starting ({message}); waiting", kind="warmup", code=code
                )
            if code == RPC_CLIENT_IN_INITIAL_DOWNLOAD:
                raise source_error(
                    TransientError,
                    f"bitcoind at {self.where} is in initial block download ({message}); waiting",
                    kind="ibd",
                    code=code,
                )
            raise source_error(
                SourceError,
                f"bitcoind at {self.where}: {method} failed with error {code}: {message}",
                kind="rpc",
                code=code,
                rpc_message=message,
            )
        if "result" not in reply:
            raise source_error(
                MalformedError, f"bitcoind at {self.where}: {method}: reply has neither result nor error", kind="malformed"
            )
        return reply["result"]

    async def _post(self, payload: Any, label: str, tally: RequestTally | None) -> Any:
        body = json.dumps(payload, separators=(",", ":")).encode()
        reloaded = False

        async def once() -> Any:
            nonlocal reloaded
            while True:
                try:
                    return await self._attempt(body, label, tally, reload_cookie=reloaded)
                except _CookieStale:
                    if reloaded:
                        raise source_error(SourceError, self._auth_message(), kind="auth", status=401) from None
                    reloaded = True

        def before_retry(exc: SourceError, attempt: int) -> float:
            self._log.debug("bitcoind retry rpc=%s attempt=%d error=%s", label, attempt + 1, exc)
            return policy.full_jitter(attempt, self._rng)

        # Only transport trouble is retried: a malformed reply from one node would be malformed again.
        policy = RetryPolicy(self.retries, self._backoff_base, self._backoff_cap)
        return await retry(
            once,
            policy,
            sleep=self._clock.sleep,
            rng=self._rng,
            retryable=lambda exc: isinstance(exc, TransientError),
            delay=before_retry,
        )

    def _auth_message(self) -> str:
        return f"bitcoind at {self.where} rejected the RPC credentials (check rpcuser/rpcpassword or the cookie file)"

    async def _attempt(self, body: bytes, label: str, tally: RequestTally | None, *, reload_cookie: bool) -> Any:
        auth = await self._auth(reload=reload_cookie)
        headers = {"Content-Type": "application/json"}
        if auth is not None:
            headers["Authorization"] = auth
        if tally is not None:
            tally.requests += 1
        where = f"bitcoind at {self.where}: {label}"
        try:
            # A JSON-RPC server never redirects; following one would send the credentials elsewhere.
            async with self._session.post(
                self._url, data=body, timeout=self._timeout, headers=headers, allow_redirects=False
            ) as resp:
                status = resp.status
                if status == 401:
                    if self._cookie_file is not None and self._user is None:
                        raise _CookieStale()
                    raise source_error(SourceError, self._auth_message(), kind="auth", status=401)
                if status == 403:
                    raise source_error(
                        SourceError,
                        f"bitcoind at {self.where} refused the RPC connection (HTTP 403: allow this machine with rpcallowip=)",
                        kind="http_4xx",
                        status=403,
                    )
                raw = await self._read(resp, where)
        except SourceError:
            raise
        except _CookieStale:
            raise
        except TimeoutError as exc:
            raise source_error(TransientError, f"{where}: timeout after {self._timeout.total}s", kind="timeout") from exc
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, OSError) as exc:
            raise source_error(
                TransientError, f"{where}: connection error: {type(exc).__name__}: {exc}", kind="connection"
            ) from exc
        except aiohttp.ClientError as exc:
            raise source_error(TransientError, f"{where}: {type(exc).__name__}: {exc}", kind="client") from exc
        try:
            text = raw.decode("utf-8")
            value = _parse_json(text) if text.strip() else None
        except (UnicodeDecodeError, ValueError) as exc:
            excerpt = " ".join(raw[:200].decode("utf-8", "replace").split())[:120]
            if status >= 500:
                # Core answers 503 "Work queue depth exceeded" when -rpcworkqueue is full: try again.
                raise source_error(
                    TransientError, f"{where}: HTTP {status}: {excerpt!r}", kind="http_5xx", status=status
                ) from exc
            if status == 200:
                raise source_error(MalformedError, f"{where}: reply is not JSON ({exc}): {excerpt!r}", kind="malformed") from exc
            raise source_error(SourceError, f"{where}: HTTP {status}: {excerpt!r}", kind="http_4xx", status=status) from exc
        if value is None and status != 200:
            kind, cls = ("http_5xx", TransientError) if status >= 500 else ("http_4xx", SourceError)
            raise source_error(cls, f"{where}: HTTP {status} with an empty body", kind=kind, status=status)
        # Core answers RPC errors with HTTP 500/404/400 and a JSON-RPC body: the body decides.
        return value

    async def _read(self, resp: aiohttp.ClientResponse, where: str) -> bytes:
        chunks: list[bytes] = []
        size = 0
        async for chunk in resp.content.iter_chunked(1 << 16):
            size += len(chunk)
            if size > self._max_body:
                raise source_error(MalformedError, f"{where}: reply larger than {self._max_body} bytes", kind="malformed")
            chunks.append(chunk)
        return b"".join(chunks)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


class _CookieStale(Exception):
    """A 401 with cookie auth: re-read the cookie file once before giving up."""
