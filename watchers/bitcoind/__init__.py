"""Bitcoin Core as a source: `rpc` (the JSON-RPC client: auth, errors, retries), `parse` (Core's JSON → the
model's dataclasses, exact amounts) and `source` (`BitcoindSource`: tip follower, mempool, reorgs).

Import from the module that owns what you need, e.g. `from watchers.bitcoind.source import BitcoindSource`.
"""
