"""A real local Bitcoin node for tests: bcoin 1.0.2 in regtest, installed into a cache dir on first use.

bcoin speaks Bitcoin Core-style JSON-RPC (`getblockchaininfo`, `getblockhash`, `getblock`,
`generatetoaddress`, ...), with HTTP basic auth against `--api-key`. It predates `getblock` verbosity 3:
its `getblock <hash> <verbose: bool> <details: bool>` answers a numeric verbosity with error -3 "Param #1
must be a boolean." — a real "older node" for the Core source's version error.

Install (NOTES.md recipe): npm `bcoin@1.0.2` whose `leveldown@4` dependency does not build on Node 20,
so it is overridden with a stub package (bcoin runs with `--memory=true` and never opens LevelDB; bdb
only `require`s it). The stub exports a function that throws when called. `npm install --ignore-scripts`
builds no native addon (secp256k1, bstring, mrmr, ...): the node runs with `NODE_BACKEND=js`, bcoin's
switch to its pure-JS implementations, so no C++ toolchain is needed. `--no-wallet` keeps the wallet's
fixed HTTP port (48334) free for parallel runs. A few seconds to ~40 s the
first time, then cached in `$TM_BCOIN_DIR` (default `~/.cache/treasury-monitor/bcoin-1.0.2`); CI may
cache that directory. Needs `node` (20) and `npm` on PATH and access to the npm registry once.

    def test_x(bcoin):            # fixture: a fresh regtest node per test
        bcoin.url, bcoin.api_key
        bcoin.rpc("generatetoaddress", [2, bcoin.address])
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from fakes.net import free_port

BCOIN_VERSION = "1.0.2"
START_TIMEOUT_S = 30.0
INSTALL_TIMEOUT_S = 600
#: The regtest genesis coinbase's address as bcoin writes it (R... prefix): a valid regtest payout address.
REGTEST_ADDRESS = "RJJBTXXfgE5DjiPQpZSnYrQe73NhrBZ3ao"

_PACKAGE_JSON = {
    "name": "treasury-monitor-bcoin",
    "private": True,
    "description": "bcoin for treasury-monitor's tests (see tests/fakes/bcoin.py)",
    "dependencies": {"bcoin": BCOIN_VERSION},
    "overrides": {"leveldown": "file:./leveldown-stub"},
}
_STUB_PACKAGE = {"name": "leveldown", "version": "4.0.2", "main": "index.js"}
_STUB_INDEX = (
    "// bcoin runs with --memory=true in tests: LevelDB is never opened, only required.\n"
    "module.exports = function leveldown() {\n"
    "  throw new Error('leveldown is stubbed out (treasury-monitor tests): run bcoin with --memory=true');\n"
    "};\n"
)


def cache_dir() -> Path:
    """Where bcoin is installed: $TM_BCOIN_DIR, else ~/.cache/treasury-monitor/bcoin-<version>."""
    env = os.environ.get("TM_BCOIN_DIR")
    if env:
        return Path(env)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "treasury-monitor" / f"bcoin-{BCOIN_VERSION}"


def ensure_bcoin() -> Path:
    """Path of bcoin's node entry script; installs bcoin into `cache_dir()` first if it is missing."""
    root = cache_dir()
    launcher = root / "node_modules" / "bcoin" / "bin" / "node"  # the JS entry (bin/bcoin is a shell wrapper)
    if launcher.exists():
        return launcher
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer even when several pytest processes start
        try:
            if not launcher.exists():
                stub = root / "leveldown-stub"
                stub.mkdir(exist_ok=True)
                (stub / "package.json").write_text(json.dumps(_STUB_PACKAGE, indent=2) + "\n")
                (stub / "index.js").write_text(_STUB_INDEX)
                (root / "package.json").write_text(json.dumps(_PACKAGE_JSON, indent=2) + "\n")
                subprocess.run(
                    ["npm", "install", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"],
                    cwd=root,
                    check=True,
                    timeout=INSTALL_TIMEOUT_S,
                    stdin=subprocess.DEVNULL,
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    if not launcher.exists():
        raise RuntimeError(f"npm install ran but {launcher} is still missing")
    return launcher


def rpc_call(url: str, method: str, params: list[Any] | None = None, *, api_key: str = "", timeout: float = 10.0) -> Any:
    """One blocking JSON-RPC call (fixture setup and mining; tests use the async client)."""
    body = json.dumps({"method": method, "params": params or [], "id": 1}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = "Basic " + base64.b64encode(f"x:{api_key}".encode()).decode()
    req = urllib.request.Request(url, body, headers)
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    if answer.get("error"):
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


@dataclass
class BcoinNode:
    """A running bcoin regtest node and how to reach it."""

    url: str
    port: int
    api_key: str
    process: subprocess.Popen = field(repr=False)
    prefix: tempfile.TemporaryDirectory = field(repr=False)
    address: str = REGTEST_ADDRESS
    started_in_s: float = 0.0

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        return rpc_call(self.url, method, params, api_key=self.api_key)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.prefix.cleanup()


def start_bcoin(api_key: str = "test-api-key") -> BcoinNode:
    """Start bcoin (regtest, in memory, no P2P) on a free port; wait until `getblockcount` answers."""
    launcher = ensure_bcoin()
    for _ in range(3):
        port = free_port()
        prefix = tempfile.TemporaryDirectory(prefix="tm-bcoin-")
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                "node",
                str(launcher),
                "--network=regtest",
                "--memory=true",
                "--no-wallet",
                "--http-host=127.0.0.1",
                f"--http-port={port}",
                f"--api-key={api_key}",
                "--listen=false",
                "--max-outbound=1",
                "--workers=false",
                f"--prefix={prefix.name}",
                "--log-level=error",
                "--log-console=false",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "NODE_BACKEND": "js"},  # pure-JS crypto and hashing: no native addon needed
        )
        node = BcoinNode(f"http://127.0.0.1:{port}", port, api_key, proc, prefix)
        while time.monotonic() - started < START_TIMEOUT_S:
            if proc.poll() is not None:
                break
            try:
                node.rpc("getblockcount")
                node.started_in_s = time.monotonic() - started
                return node
            except (OSError, urllib.error.URLError, RuntimeError, ValueError):
                time.sleep(0.05)
        node.stop()
    raise RuntimeError("bcoin did not start (see tests/fakes/bcoin.py for the command line)")


@pytest.fixture
def bcoin() -> Iterator[BcoinNode]:
    """A fresh bcoin regtest node for one test; stopped afterwards."""
    node = start_bcoin()
    try:
        yield node
    finally:
        node.stop()
