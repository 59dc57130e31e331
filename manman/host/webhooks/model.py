"""A webhook as the API takes and shows it, and the URLs it refuses."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass, field
from typing import Annotated, Literal
from urllib.parse import urlsplit

import msgspec
import trio
from msgspec import UNSET, Meta, Struct, UnsetType

from manman import errors
from manman.host.webhooks.events import EVENTS

Kind = Literal["generic", "discord", "slack"]
Url = Annotated[str, Meta(min_length=1, max_length=2048)]
Events = Annotated[list[str], Meta(min_length=1, max_length=32)]
Secret = Annotated[str, Meta(min_length=1, max_length=256)]
RESOLVE_TIMEOUT = 5.0


def shown_url(url: str, kind: str) -> str:
    """A hook's URL as the audit shows it: no user or password, no query string or
    fragment; for discord and slack hooks, whose path is the credential, no path either."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return "(not a URL)"
    if ":" in host:
        host = f"[{host}]"
    origin = f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")
    return origin + ("/\u2026" if kind != "generic" else parts.path)


class WebhookIn(Struct, forbid_unknown_fields=True):
    url: Url
    events: Events
    kind: Kind = "generic"
    server_id: str | None = None  # id or name; none: every server's (and the workers')
    secret: Secret | None = None  # signs a generic hook's bodies
    enabled: bool = True


class WebhookUpdate(Struct, forbid_unknown_fields=True):
    url: Url | UnsetType = UNSET
    events: Events | UnsetType = UNSET
    kind: Kind | UnsetType = UNSET
    server_id: str | UnsetType | None = UNSET
    secret: Secret | UnsetType | None = UNSET
    enabled: bool | UnsetType = UNSET


class Webhook(Struct):
    """As answered: the secret itself is never shown."""

    id: str
    url: str
    kind: Kind
    events: list[str]
    server_id: str | None
    has_secret: bool
    enabled: bool
    created_at: float
    updated_at: float


class WebhookList(Struct):
    webhooks: list[Webhook]


@dataclass(eq=False)
class HookRec:
    id: str
    url: str
    kind: Kind
    events: list[str]
    server_id: str | None
    secret: str | None
    enabled: bool
    created_at: float
    updated_at: float

    def view(self) -> Webhook:
        return Webhook(self.id, self.url, self.kind, list(self.events), self.server_id,
                       self.secret is not None, self.enabled, self.created_at, self.updated_at)

    def wants(self, event: str, server_id: str | None) -> bool:
        return self.enabled and event in self.events and (
            self.server_id is None or self.server_id == server_id)


def check_fields(kind: str, events: list[str], secret: str | None) -> None:
    unknown = sorted(set(events) - EVENTS)
    if unknown:
        raise errors.Invalid(f"events: unknown {', '.join(unknown)[:200]} (known: "
                             f"{', '.join(sorted(EVENTS))})")
    if secret is not None and kind != "generic":
        raise errors.Invalid("secret: only a generic hook's bodies are signed")


@dataclass
class OwnApi:
    """Where the host's own API listens: a hook may not call it."""

    port: int = 0
    addresses: set[ipaddress.IPv4Address | ipaddress.IPv6Address] = field(default_factory=set)
    any_address: bool = False  # listening on 0.0.0.0 or ::

    @classmethod
    def of(cls, url: str) -> OwnApi:
        parts = urlsplit(url)
        host = parts.hostname or ""
        own = cls(port=parts.port or (443 if parts.scheme == "https" else 80))
        try:
            ip = _plain(ipaddress.ip_address(host))
        except ValueError:
            return own
        own.any_address = ip.is_unspecified
        own.addresses.add(ip)
        if own.any_address:  # every address of this machine: those its name resolves to
            try:
                for info in socket.getaddrinfo(socket.gethostname(), None):
                    own.addresses.add(_plain(ipaddress.ip_address(info[4][0])))
            except (OSError, ValueError):
                pass
        return own

    def is_own(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> bool:
        if port != self.port:
            return False
        return ip in self.addresses or (ip.is_loopback and (
            self.any_address or any(a.is_loopback for a in self.addresses))) or \
            ip.is_unspecified


def _plain(ip: ipaddress.IPv4Address | ipaddress.IPv6Address
           ) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4-mapped IPv6 address (::ffff:169.254.169.254) as the IPv4 address it is."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


async def check_url(url: str, own: OwnApi) -> None:
    """422 for a URL a hook may not call: not http(s), a name that does not resolve, a
    link-local address (169.254.0.0/16 holds cloud metadata services; fe80::/10), or the
    host's own API. Checked again before each delivery (a name may resolve elsewhere
    later)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.Invalid("url: expected an http:// or https:// URL with a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise errors.Invalid("url: the port is not a number from 0 to 65535") from None
    for ip in await resolve(parts.hostname, port):
        reason = refusal(parts.hostname, ip, port, own)
        if reason is not None:
            raise errors.Invalid(reason)


def refusal(host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int,
            own: OwnApi) -> str | None:
    """Why a hook may not connect to `ip`, or None."""
    if ip.is_link_local:
        return f"url: {host[:100]} is a link-local address ({ip}): refused"
    if own.is_own(ip, port):
        return "url: that is this host's own API: refused"
    return None


async def resolve(host: str, port: int) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    try:
        return [_plain(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    try:
        with trio.fail_after(RESOLVE_TIMEOUT):
            infos = await trio.socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, trio.TooSlowError):
        raise errors.Invalid(f"url: {host[:100]} does not resolve") from None
    out = []
    for info in infos:
        addr = str(info[4][0]).split("%", 1)[0]  # fe80::1%eth0: the zone is not the address
        out.append(_plain(ipaddress.ip_address(addr)))
    return out


def hook_of(row: dict[str, object]) -> HookRec:
    return HookRec(id=str(row["id"]), url=str(row["url"]), kind=msgspec.convert(row["kind"], Kind),
                   events=msgspec.convert(row["events"], list[str]),
                   server_id=msgspec.convert(row["server_id"], str | None),
                   secret=msgspec.convert(row["secret"], str | None),
                   enabled=bool(row["enabled"]), created_at=float(str(row["created_at"])),
                   updated_at=float(str(row["updated_at"])))
