"""The `treasury-monitor` command line: thin click commands (main, common, entities, miners, demo)."""

__all__: list[str] = []
