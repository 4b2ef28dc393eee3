"""What every CLI command shares: the lazily loaded config, the database, running a coroutine."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import click

from monitor.clock import parse_iso
from monitor.config import Config, load_config
from monitor.model import ConfigError, MonitorError

__all__ = ["State", "run_async", "open_existing_store"]


class State:
    def __init__(self, config_path: str, db: str | None):
        self.config_path = config_path
        self.db = db
        self._config: Config | None = None

    def config(self) -> Config:
        """The validated config; on problems print them all and exit with status 2."""
        if self._config is None:
            try:
                self._config = load_config(self.config_path)
            except ConfigError as exc:
                click.echo(f"error: invalid configuration ({self.config_path}):", err=True)
                for p in exc.problems:
                    click.echo(f"  {p}", err=True)
                sys.exit(2)
            for w in self._config.warnings:
                click.echo(f"warning: {w}", err=True)
        return self._config


def parse_time_option(text: str | None, param_hint: str | None = None) -> int | None:
    """An ISO date/time option as Unix seconds (None when not given); a bad value is a usage error."""
    try:
        return parse_iso(text) if text else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=param_hint) from exc


def run_async(coro):
    """Run a coroutine to completion; domain errors become a click error (exit status 1)."""
    try:
        return asyncio.run(coro)
    except MonitorError as exc:
        raise click.ClickException(str(exc)) from exc


def open_existing_store(state: State):
    """The database the config (or --db) names; a clear error when it does not exist yet."""
    from storage import Store

    cfg = state.config()
    db = Path(state.db) if state.db else cfg.storage
    if not db.exists():
        raise click.ClickException(f"no database at {db}: nothing has been stored yet")
    return Store(db)
