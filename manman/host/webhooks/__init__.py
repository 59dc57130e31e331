"""Webhooks: notifications of what happens to servers and workers, sent by the host."""
