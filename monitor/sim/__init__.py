"""Offline stand-ins for the outside world, served from the installed package (tests, benchmarks, demo).

- `chain`: `SimChain`, real serialized transactions and blocks in memory (mempool, RBF, reorgs);
- `esplora_server`: the exact Esplora REST shapes over a SimChain, with fault injection;
- `bitcoind_server`: Bitcoin Core JSON-RPC (getblock verbosity 3, mempool, versions, IBD, auth);
- `mempool_ws`: mempool.space's `track-addresses` websocket protocol;
- `scenario`: the simulated early-2026 sell-off the demo plays, calibrated to published figures.

Import the submodules directly; this package imports nothing on its own.
"""

__all__ = ["chain", "esplora_server", "bitcoind_server", "mempool_ws", "scenario"]
