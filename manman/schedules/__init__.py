"""Schedules (docs/spec.md, "Schedules"): pure logic shared by the host and the worker —
when a cron fires, what a schedule may hold, and how its runs are shown."""
