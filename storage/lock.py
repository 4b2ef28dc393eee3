"""The database's process lock: one active daemon (or outbox dispatcher) per database file.

A long-running process takes an exclusive `flock` on `<database>.lock` for its whole life and writes
who it is (pid, host, command, start time, owner token) into that file. A second one is refused with a
message naming the holder. The operating system releases the lock when the holder exits in any way,
SIGKILL included, so a crash never leaves a stale lock behind (the file's text may stay; it only names
the last holder). While a process holds the lock, no other dispatcher of this database is alive, so
deliveries another owner left "sending" are known to be orphaned (`storage.alerts.recover_in_flight`).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from monitor.model import StorageError

__all__ = ["Holder", "ProcessLock", "lock_path"]


def lock_path(db_path: str | Path) -> Path:
    """The lock file beside a database file."""
    return Path(str(db_path) + ".lock")


@dataclass(frozen=True)
class Holder:
    """Who holds (or last held) a database's lock."""

    pid: int
    host: str
    command: str
    since: int
    owner: str

    def describe(self) -> str:
        """`treasury-monitor run` (pid 123 on host h, since 1700000000) — for error messages."""
        return f"`{self.command}` (pid {self.pid} on {self.host}, started at Unix time {self.since})"


class ProcessLock:
    """The exclusive lock of one database file, held from `acquire` to `release`."""

    def __init__(self, db_path: str | Path):
        self.db_path = Path(db_path)
        self.path = lock_path(db_path)
        self._fd: int | None = None
        self.holder: Holder | None = None

    def acquire(self, command: str, *, now: int) -> Holder:
        """Take the lock for this process; returns our Holder (its `owner` token tags our deliveries).

        :raises StorageError: when another live process holds it, naming that process.
        """
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except OSError as exc:
            raise StorageError(f"cannot open the lock file {self.path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            other = _read_holder(fd)
            os.close(fd)
            who = other.describe() if other is not None else "another process"
            raise StorageError(
                f"database {self.db_path} is in use by {who}; one daemon per database: stop that one first, "
                f"or give this one another database (--db)"
            ) from None
        me = Holder(os.getpid(), socket.gethostname(), command, now, uuid.uuid4().hex)
        text = json.dumps(me.__dict__, sort_keys=True).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, text, 0)
        self._fd, self.holder = fd, me
        return me

    def release(self) -> None:
        """Let the next process take the database (closing the file releases the lock)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _read_holder(fd: int) -> Holder | None:
    try:
        raw = os.pread(fd, 4096, 0)
        return Holder(**json.loads(raw.decode()))
    except (OSError, ValueError, TypeError):
        return None
