"""Blocking test work run off the event loop of async tests (the autouse blockbuster fixture forbids it there)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from storage import Store

__all__ = ["in_store"]

T = TypeVar("T")


async def in_store(path: str | Path, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(store, *args, **kwargs)` on the database at `path`, opened and closed in a worker thread."""

    def work() -> T:
        store = Store(path)
        try:
            return fn(store, *args, **kwargs)
        finally:
            store.close()

    return await asyncio.to_thread(work)
