"""One tick and the long-running process: pipeline, runtime, daemon, HTTP API, metrics, logs, health, and the
alert hook's planning (alert_plan; incidents and incident_alerts; watch_alerts for balance and dormancy).
"""

__all__: list[str] = []
