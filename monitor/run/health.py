"""Source health after one pass of `backfill` or `poll`: the stored row updated, and the command's exit code.

The daemon keeps the same row per source (`monitor.run.daemon.SourceState`); the one-shot commands update it
here, so `status` shows the outcome of whatever ran last. Exit codes of `backfill` and `poll`:

    0  every source answered for every key
    3  partial failure: some keys (addresses) or some sources failed; what was read is stored, the rest
       is retried by the next pass (its cursors did not move)
    4  total failure: no source answered at all (unreachable, or every key failed)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["EXIT_OK", "EXIT_PARTIAL", "EXIT_FAILED", "PassOutcome", "health_row", "exit_code"]

EXIT_OK = 0
EXIT_PARTIAL = 3
EXIT_FAILED = 4


@dataclass(frozen=True)
class PassOutcome:
    """How one source's pass went: `ok`, `partial` (some keys failed) or `failed`, with the error."""

    source: str
    state: str
    error: str = ""
    tip_height: int | None = None


def health_row(previous: dict[str, Any] | None, outcome: PassOutcome, now: int) -> dict[str, Any]:
    """The source_health row after `outcome`, from the stored one (None when the source never ran)."""
    p = previous or {}
    row = {
        "source": outcome.source,
        "last_success_at": p.get("last_success_at"),
        "last_error": p.get("last_error") or "",
        "last_error_at": p.get("last_error_at"),
        "failing_since": p.get("failing_since"),
        "polls": p.get("polls") or 0,
        "errors": p.get("errors") or 0,
        "tip_height": outcome.tip_height if outcome.tip_height is not None else p.get("tip_height"),
        "updated_at": now,
    }
    if outcome.state == "failed":
        row["errors"] += 1
        row["last_error"], row["last_error_at"] = outcome.error, now
        row["failing_since"] = row["failing_since"] or now
        return row
    row["polls"] += 1
    row["last_success_at"] = now
    row["failing_since"] = None
    if outcome.state == "partial":
        row["errors"] += 1
        row["last_error"], row["last_error_at"] = outcome.error, now
    return row


def exit_code(outcomes: list[PassOutcome]) -> int:
    """0 when every source was read in full, 4 when none answered, 3 otherwise."""
    if outcomes and all(o.state == "failed" for o in outcomes):
        return EXIT_FAILED
    if any(o.state != "ok" for o in outcomes):
        return EXIT_PARTIAL
    return EXIT_OK
