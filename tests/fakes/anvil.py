"""A real local EVM node for tests: finds (or installs) the anvil binary, starts it, stops it.

anvil comes from the npm package `@foundry-rs/anvil-linux-amd64` pinned in the repo's package.json
(the binary is inside the package; no download at install time). CI installs it with
`.ci/install-node-deps.sh`; on a fresh clone the first test that needs it runs `npm ci` once.

Use from a test module (pytest puts tests/ on the path) through the `anvil` fixture, which yields an
`AnvilNode` for one test:

    from fakes.anvil import anvil  # noqa: F401  (a fixture)

    def test_x(anvil):
        anvil.url        # http://127.0.0.1:PORT
        anvil.rpc("evm_mine", [])
"""

from __future__ import annotations

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

REPO = Path(__file__).resolve().parents[2]
ANVIL_BIN = REPO / "node_modules" / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"
#: anvil's default dev accounts are funded with 10,000 ETH each; this is the first one's key
#: (the well-known "test test ... junk" mnemonic), used to sign the test transactions.
DEV_KEYS = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80",
    "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d",
    "0x5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3ae0a6a4a6d6b41c",
)
DEFAULT_CHAIN_ID = 31337
START_TIMEOUT_S = 20.0


def ensure_anvil() -> Path:
    """Path of the anvil binary; runs `npm ci` in the repo once when node_modules lacks it."""
    if os.access(ANVIL_BIN, os.X_OK):
        return ANVIL_BIN
    lock_path = REPO / "node_modules.install.lock"
    with open(lock_path, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one installer even when several pytest processes start
        try:
            if not os.access(ANVIL_BIN, os.X_OK):
                subprocess.run(
                    ["npm", "ci", "--no-audit", "--no-fund"],
                    cwd=REPO,
                    check=True,
                    timeout=600,
                    stdin=subprocess.DEVNULL,
                )
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    with contextlib.suppress(FileNotFoundError):
        lock_path.unlink()
    if not os.access(ANVIL_BIN, os.X_OK):
        raise RuntimeError(f"npm ci ran but {ANVIL_BIN} is still missing")
    return ANVIL_BIN


def rpc_call(url: str, method: str, params: list[Any] | None = None, timeout: float = 10.0) -> Any:
    """One blocking JSON-RPC call (for fixture setup and control methods, not inside the loop)."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params or []}).encode()
    req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        answer = json.loads(resp.read())
    if "error" in answer:
        raise RuntimeError(f"{method}: {answer['error']}")
    return answer["result"]


@dataclass
class AnvilNode:
    """A running anvil process and how to reach it."""

    url: str
    port: int
    chain_id: int
    process: subprocess.Popen = field(repr=False)
    started_in_s: float = 0.0
    stderr: Any = field(default=None, repr=False)

    def rpc(self, method: str, params: list[Any] | None = None) -> Any:
        """Blocking JSON-RPC call to this node (setup/teardown only; async tests use web3)."""
        return rpc_call(self.url, method, params)

    def stop(self) -> None:
        """Terminate the process and reap it."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        if self.stderr is not None:
            self.stderr.close()


def start_anvil(*, chain_id: int = DEFAULT_CHAIN_ID, extra_args: tuple[str, ...] = ()) -> AnvilNode:
    """Start anvil on a free 127.0.0.1 port and wait until it answers `eth_chainId`.

    Blocks are mined on demand (anvil's default automine: one block per transaction), so tests
    decide the chain's shape. Retries with another port if the chosen one was taken meanwhile.
    """
    binary = ensure_anvil()
    last_error = ""
    for _ in range(3):
        port = free_port()
        err_file = tempfile.TemporaryFile()  # a file, not a pipe: an unread pipe could block anvil
        started = time.monotonic()
        proc = subprocess.Popen(
            [str(binary), "--host", "127.0.0.1", "--port", str(port), "--silent", "--chain-id", str(chain_id), *extra_args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=err_file,
        )
        node = AnvilNode(f"http://127.0.0.1:{port}", port, chain_id, proc, stderr=err_file)
        deadline = started + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                err_file.seek(0)
                last_error = err_file.read().decode(errors="replace")
                node.stop()
                break
            try:
                if int(node.rpc("eth_chainId"), 16) == chain_id:
                    node.started_in_s = time.monotonic() - started
                    return node
            except (OSError, urllib.error.URLError, RuntimeError, ValueError):
                time.sleep(0.01)
        else:
            node.stop()
            raise RuntimeError(f"anvil did not answer on port {port} within {START_TIMEOUT_S}s")
    raise RuntimeError(f"anvil failed to start: {last_error.strip()}")


@pytest.fixture
def anvil() -> Iterator[AnvilNode]:
    """A fresh anvil node (chain id 31337) for one test; stopped afterwards."""
    node = start_anvil()
    try:
        yield node
    finally:
        node.stop()
