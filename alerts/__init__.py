"""Alert delivery: routing rules, the durable outbox, renderers, channels and the per-channel rate limit.

Modules: `router` (rules → routes, pure), `outbox` (the Dispatcher: retries with backoff until delivered or
given up), `render` (message model → Slack / email / webhook / console / apprise), `channels` (the Channel
protocol, its implementations and `build_channel`), `ratelimit` (minimum interval between sends per channel).
This room imports nothing of ours but `monitor.model`.
"""

__all__ = ["channels", "ratelimit", "render"]
