"""The events of manman.events, as the host's webhooks name them (re-exported here)."""

from manman.events import (
    BACKUP_EVENTS,
    EVENTS,
    PLAYER_EVENTS,
    SCHEDULE_EVENTS,
    SERVER_EVENTS,
    SERVER_SIDE,
    TEST_EVENT,
    WORKER_EVENTS,
    Derived,
    backup_events,
    server_events,
    worker_event,
)

__all__ = ["BACKUP_EVENTS", "EVENTS", "PLAYER_EVENTS", "SCHEDULE_EVENTS", "SERVER_EVENTS",
           "SERVER_SIDE", "TEST_EVENT", "WORKER_EVENTS", "Derived", "backup_events",
           "server_events", "worker_event"]
