"""Alert delivery: renderers, channels and the per-channel rate limit (router and outbox come next).

Modules: `render` (message model → Slack / email / webhook / console), `channels` (the Channel protocol,
its implementations and `build_channel`), `ratelimit` (minimum interval between sends per channel).
This room imports nothing of ours but `monitor.model`.
"""

__all__ = ["channels", "ratelimit", "render"]
