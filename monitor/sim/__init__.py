"""Offline stand-ins for the outside world: a simulated Bitcoin chain and a local Esplora server over it.

Used by tests, benchmarks and the offline demo. `chain` holds `SimChain` (real serialized transactions
and blocks, in memory); `esplora_server` serves it with the exact Esplora REST shapes, with fault
injection. Import the submodules directly; this package imports nothing on its own.
"""

__all__ = ["chain", "esplora_server"]
