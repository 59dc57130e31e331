"""Is anything on this machine using a port? Asked by binding it, as the game would."""

from __future__ import annotations

import errno
import socket

_KIND = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}


def _binds(address: str, port: int, protocol: str) -> bool | None:
    """True: bound; False: in use; None: this address cannot be used here."""
    with socket.socket(socket.AF_INET, _KIND[protocol]) as s:
        if protocol == "tcp":  # a closed connection in TIME_WAIT does not hold it for a game
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((address, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                return False
            return None
        if protocol == "tcp":
            try:
                s.listen(1)  # Linux: another socket bound but not listening is not "in use"
            except OSError:
                return False
    return True


def port_free(port: int, protocol: str) -> bool:
    """Nothing listens on `port`/`protocol`: binding it on 0.0.0.0 (or, where that is not
    allowed, 127.0.0.1) works."""
    for address in ("0.0.0.0", "127.0.0.1"):
        bound = _binds(address, port, protocol)
        if bound is not None:
            return bound
    return False
