"""Shared pytest fixtures: environment isolation and small builders.

Area-specific fixtures (servers, nodes) live beside their tests or in `tests/fakes/`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator

# bitcoinlib creates ~/.bitcoinlib at first import unless told otherwise; keep tests off $HOME.
os.environ.setdefault("BCL_DATA_DIR", os.path.join(tempfile.gettempdir(), "treasury-monitor-bitcoinlib"))

# Its first import also creates that data dir and reads its config (disk I/O): do it here, once, so that
# no test's event loop pays for it (the product imports it while parsing a config, before any loop runs).
import bitcoinlib.keys  # noqa: E402,F401
import pytest  # noqa: E402
from blockbuster import BlockBuster, blockbuster_ctx  # noqa: E402


@pytest.fixture
def db_path(tmp_path):
    """Path of a fresh SQLite file for one test."""
    return tmp_path / "treasury-monitor.db"


@pytest.fixture(autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Every test runs with blocking calls (disk, sockets, sleep, SQLite) forbidden on a running event loop.

    A sync test has no running loop and is unaffected; an async test, or a sync test whose code starts a
    loop (`asyncio.run` behind a CLI command), fails with `BlockingError` at the call that would freeze
    the loop. Work that must block goes to a thread (`asyncio.to_thread`, `AsyncStore.run`).
    """
    # Nothing is allow-listed. One side effect to know: pytest's own log-file handler (/dev/null unless
    # --log-file is given) is refused records logged on a loop, and pytest drops its errors silently.
    with blockbuster_ctx() as bb:
        yield bb
