"""What the product shows: the export schema and writers, the HTML report and charts, the daily digest, the dashboard."""

__all__: list[str] = []
