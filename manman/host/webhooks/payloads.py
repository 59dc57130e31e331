"""What a hook receives: the body and headers of one event, in the format of its kind.

- generic: `{"id", "event", "at", "server"?, "worker"?, "data"}`, signed with
  `X-Manman-Signature: sha256=<hex HMAC-SHA256 of the body with the hook's secret>`.
- discord: an "Execute Webhook" body, `{"content", "embeds": [embed], "allowed_mentions"}`
  (https://discord.com/developers/docs/resources/webhook#execute-webhook; embed limits:
  https://discord.com/developers/docs/resources/message#embed-object-embed-limits).
- slack: an incoming webhook's message, `{"text", "blocks"}`
  (https://api.slack.com/messaging/webhooks, https://api.slack.com/reference/block-kit/blocks).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from typing import Any

import msgspec


class Event(msgspec.Struct, omit_defaults=True):
    id: str
    event: str
    at: float
    data: dict[str, Any]
    server: dict[str, Any] | None = None  # {"id", "name", "worker_id"}
    worker: dict[str, Any] | None = None  # {"id", "name"}


_encode = msgspec.json.Encoder().encode
_COLORS = {"server.ready": 0x2ECC71, "worker.alive": 0x2ECC71, "server.stopped": 0x95A5A6,
           "server.crashed": 0xE67E22, "server.failed": 0xE74C3C, "worker.expired": 0xE74C3C,
           "worker.unknown": 0xE67E22, "server.update_available": 0x3498DB,
           "server.disk_full": 0xE74C3C}
_TITLES = {"server.ready": "is ready", "server.stopped": "stopped",
           "server.crashed": "crashed", "server.failed": "failed and needs a person",
           "server.update_available": "has an update available",
           "server.disk_full": "is over its disk limit: not started again until files are "
                               "deleted",
           "player.joined": "a player joined", "player.left": "a player left",
           "worker.unknown": "misses its heartbeats", "worker.alive": "is back",
           "worker.expired": "expired: retired after no heartbeat",
           "webhook.test": "a test of this webhook"}


def summary(ev: Event) -> str:
    """One line for a person: `server mc1 crashed`."""
    what = _TITLES.get(ev.event, ev.event)
    player = ev.data.get("player")
    if isinstance(player, str) and ev.event in ("player.joined", "player.left"):
        what = f"{player[:64]} {ev.event.removeprefix('player.')}"  # `mc1 Alice joined`
    if ev.server is not None:
        return f"server {ev.server.get('name', ev.server.get('id'))} {what}"
    if ev.worker is not None:
        return f"worker {ev.worker.get('name', ev.worker.get('id'))} {what}"
    return f"manman: {what}"


def _details(ev: Event) -> list[tuple[str, str]]:
    return [(k, str(v)) for k, v in ev.data.items() if v is not None]


def _discord_escape(text: str) -> str:
    return re.sub(r"([\\*_~`|>#\[\]()-])", r"\\\1", text)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _iso(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at)) + f".{int(at % 1 * 1000):03d}Z"


def discord(ev: Event) -> dict[str, Any]:
    line = summary(ev)
    embed: dict[str, Any] = {
        "title": line[:256], "timestamp": _iso(ev.at), "footer": {"text": ev.event},
        "fields": [{"name": k[:256], "value": v[:1024], "inline": True}
                   for k, v in _details(ev)[:25]]}
    if ev.event in _COLORS:
        embed["color"] = _COLORS[ev.event]
    # no mention in a server's name or a game's error pings anybody
    return {"content": _discord_escape(line)[:2000], "embeds": [embed],
            "allowed_mentions": {"parse": []}}


def slack(ev: Event) -> dict[str, Any]:
    line = summary(ev)
    blocks: list[dict[str, Any]] = [
        {"type": "section", "text": {"type": "mrkdwn", "text": f"*{_slack_escape(line)}*"[:3000]}}]
    details = _details(ev)
    if details:
        blocks.append({"type": "section", "fields": [
            {"type": "mrkdwn", "text": f"*{_slack_escape(k)}*\n{_slack_escape(v)}"[:2000]}
            for k, v in details[:10]]})
    blocks.append({"type": "context", "elements": [
        {"type": "mrkdwn", "text": f"{ev.event} at {_iso(ev.at)}"}]})
    return {"text": _slack_escape(line)[:3000], "blocks": blocks}


def sign(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def render(kind: str, ev: Event, secret: str | None) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one delivery."""
    if kind == "discord":
        body = _encode(discord(ev))
    elif kind == "slack":
        body = _encode(slack(ev))
    else:
        body = _encode(ev)
    headers = {"Content-Type": "application/json", "User-Agent": "manman-webhook",
               "X-Manman-Event": ev.event, "X-Manman-Delivery": ev.id}
    if secret is not None and kind == "generic":
        headers["X-Manman-Signature"] = sign(secret, body)
    return body, headers
