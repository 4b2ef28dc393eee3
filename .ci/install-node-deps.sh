#!/usr/bin/env bash
# Install the test-only npm dependencies pinned in package-lock.json: the anvil EVM node binary
# (@foundry-rs/anvil-linux-amd64, binary inside the package, no install script) and solc-js.
# Called from .ci/run before pytest; tests/fakes/anvil.py runs the same command for a fresh clone.
set -euo pipefail
cd "$(dirname "$0")/.."
npm ci --no-audit --no-fund
test -x node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil
