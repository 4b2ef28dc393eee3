# Developer tasks (https://github.com/casey/just). CI runs the same commands from .ci/run.

# the whole test suite (README's test command)
test:
    .venv/bin/python -m pytest

# lint and format check (ruff) and type-check (mypy: strict on monitor/core/, basic elsewhere but pyproject's baseline), as CI does
lint:
    .venv/bin/ruff check .
    .venv/bin/ruff format --check .
    .venv/bin/mypy

# the benchmarks (figures and ratios against a baseline measured in the same run; never part of `test`)
bench:
    .venv/bin/python bench/bench_block_mode.py
    .venv/bin/python bench/bench_backfill.py
    .venv/bin/python bench/bench_miners.py
    .venv/bin/python bench/bench_latency.py

# format the tree (ruff format), as CI checks it
fmt:
    .venv/bin/ruff format .
