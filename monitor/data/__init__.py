"""Bundled, sourced data files (entity registry, pools, prices)."""
