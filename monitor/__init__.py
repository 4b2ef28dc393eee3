"""treasury-monitor: watch miner and sovereign Bitcoin treasuries and explain their sales."""

__version__ = "0.1.0"
__all__ = ["__version__"]
