"""Shared pytest fixtures: environment isolation and small builders.

Area-specific fixtures (servers, nodes) live beside their tests or in `tests/fakes/`.
"""

from __future__ import annotations

import os
import socket
import tempfile

# bitcoinlib creates ~/.bitcoinlib at first import unless told otherwise; keep tests off $HOME.
os.environ.setdefault("BCL_DATA_DIR", os.path.join(tempfile.gettempdir(), "treasury-monitor-bitcoinlib"))

import pytest  # noqa: E402


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for servers that cannot bind port 0)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def db_path(tmp_path):
    """Path of a fresh SQLite file for one test."""
    return tmp_path / "treasury-monitor.db"
