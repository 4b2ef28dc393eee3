"""The pure core: registry, flows, attribution, co-spend clustering, dated facts, hashprice, the classifier.

No I/O, no asyncio, no storage, watchers or alerts (tests/test_architecture.py enforces): every function
here takes its inputs and `now` as arguments, so a verdict can be replayed from what was stored.
"""

__all__: list[str] = []
