"""The connection of a webhook delivery goes to an address that was checked, not to what
the name resolves to a moment later.

A URL check and then a connection that resolves the name again leave a gap: a name whose
DNS answer changes in between (DNS rebinding) would pass the check with a harmless address
and connect to a refused one (a cloud metadata service, the host's own API). Here the
HTTP client's network backend resolves the name once, refuses the addresses a hook may not
reach, and connects to the remaining ones by number; TLS still checks the certificate
against the name (httpcore passes it to the TLS handshake apart from the address).
"""

from __future__ import annotations

import ssl
import typing
from collections.abc import Callable

import httpcore
import httpx
import trio
from httpcore._backends.trio import TrioStream

from manman import errors
from manman.host.webhooks.model import OwnApi, refusal, resolve


class CheckedBackend(httpcore.AsyncNetworkBackend):
    def __init__(self, own: Callable[[], OwnApi]) -> None:
        self.own = own  # the host learns its own address after the client is made

    async def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                          local_address: str | None = None,
                          socket_options: typing.Iterable[typing.Any] | None = None,
                          ) -> httpcore.AsyncNetworkStream:
        try:
            ips = await resolve(host, port)
        except errors.Invalid as e:
            raise httpcore.ConnectError(e.message) from None
        allowed = []
        for ip in ips:
            reason = refusal(host, ip, port, self.own())
            if reason is not None:  # one bad answer refuses the name, as the URL check does
                raise httpcore.ConnectError(reason)
            allowed.append(ip)
        error: OSError | None = None
        with trio.move_on_after(float("inf") if timeout is None else timeout) as scope:
            for ip in allowed:
                try:
                    stream = await trio.open_tcp_stream(str(ip), port,
                                                        local_address=local_address)
                except OSError as e:
                    error = e
                    continue
                return TrioStream(stream)
        if scope.cancelled_caught:
            raise httpcore.ConnectTimeout(f"no connection to {host[:100]} within {timeout:g} s")
        raise httpcore.ConnectError(f"cannot connect to {host[:100]}: {error}")

    async def connect_unix_socket(self, path: str, timeout: float | None = None,
                                  socket_options: typing.Iterable[typing.Any] | None = None,
                                  ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("a webhook never connects to a unix socket")

    async def sleep(self, seconds: float) -> None:
        await trio.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport, connecting through `CheckedBackend` (no proxy: a proxy would
    resolve the name itself, out of reach of the check)."""

    def __init__(self, own: Callable[[], OwnApi],
                 ssl_context: ssl.SSLContext | None = None) -> None:
        super().__init__()
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context or httpx.create_ssl_context(),
            network_backend=CheckedBackend(own))


def checked_client(own: Callable[[], OwnApi], timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=CheckedTransport(own), follow_redirects=False,
                             timeout=timeout, trust_env=False)
