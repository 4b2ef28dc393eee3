"""Keeps: the SQLite database (sqlite-utils, WAL), its schema migrations and typed reads and writes."""

from storage.store import AsyncStore, Store

__all__ = ["Store", "AsyncStore"]
