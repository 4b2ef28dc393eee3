"""Market data: the price at a time (prices.py) and the MarketContext of a flow (context.py), over storage.

The formulas (hashrate, hashprice, breakeven) are pure and live in monitor.core.hashprice; this room
fetches and caches what they need.
"""

__all__: list[str] = []
