"""Who owns which address and how we know: discovery jobs, pools, tracing, label imports, reconciliation.

Provisional addresses, co-spend learning and the miner view (pools → miners' production) live here too.
"""

__all__: list[str] = []
