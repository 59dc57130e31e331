"""Tokens: generated secrets kept in files (mode 0600), hashed storage, constant-time checks;
who a request comes from (`Principal`)."""

from __future__ import annotations

import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypedDict

from manman import errors


def new_token() -> str:
    return secrets.token_urlsafe(32)


def load_or_create_token(path: Path) -> str:
    """The token in `path`, or a new one written there with mode 0600 (reused later)."""
    try:
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    token = new_token()
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(token + "\n")
    os.replace(tmp, path)  # never a half-written token file
    return token


# -- console tokens: short-lived JWTs the host signs and a worker checks on its own ----------

CONSOLE_AUDIENCE = "manman-console"
READ, WRITE = "console:read", "console:write"


@dataclass(frozen=True)
class Principal:
    """Who a request comes from: an admin; a worker joining (`join`) or calling as itself
    (`worker`); or the holder of a console token for one server (`console`)."""

    kind: Literal["admin", "join", "worker", "console"]
    worker_id: str | None = None
    server_id: str | None = None  # a console token's server
    scopes: frozenset[str] = frozenset()
    expires_at: float | None = None  # a console token's expiry; None: does not expire

    @property
    def admin(self) -> bool:
        return self.kind == "admin"

    def can_write(self) -> bool:
        return self.admin or WRITE in self.scopes

    @property
    def label(self) -> str:
        return self.kind if self.kind != "worker" else f"worker:{self.worker_id}"


class TokenRejected(errors.Unauthorized):
    """A console token that is expired (code `token_expired`), tampered with or malformed."""


class ConsoleClaims(TypedDict):
    sub: str  # the server's id
    scope: str  # READ and/or WRITE, space-separated
    exp: float


def console_key(worker_secret: str) -> bytes:
    """The signing key for one worker's console tokens, derived from the secret the host and
    that worker share, so the worker verifies without calling the host."""
    return hashlib.sha256(b"manman-console-v1\0" + worker_secret.encode()).digest()


def sign_console_token(key: bytes, server_id: str, scopes: list[str], ttl: float,
                       now: float) -> str:
    import jwt

    claims = {"sub": server_id, "scope": " ".join(scopes), "aud": CONSOLE_AUDIENCE,
              "iat": int(now), "exp": int(now + ttl)}
    return jwt.encode(claims, key, algorithm="HS256")


def verify_console_token(key: bytes, token: str) -> ConsoleClaims:
    import jwt

    try:
        claims = jwt.decode(token, key, algorithms=["HS256"], audience=CONSOLE_AUDIENCE,
                            options={"require": ["exp", "sub", "scope"]})
    except jwt.ExpiredSignatureError:
        raise TokenRejected("the console token expired", "token_expired") from None
    except jwt.PyJWTError:
        raise TokenRejected("invalid token") from None
    sub, scope, exp = claims.get("sub"), claims.get("scope"), claims.get("exp")
    if not isinstance(sub, str) or not isinstance(scope, str) or \
            not isinstance(exp, int | float):
        raise TokenRejected("invalid token")
    return ConsoleClaims(sub=sub, scope=scope, exp=exp)


def claimed_server(token: str) -> str | None:
    """The server a console token names, before its signature is checked: only to pick the
    key to check it with."""
    import jwt

    try:
        sub = jwt.decode(token, options={"verify_signature": False}).get("sub")
    except jwt.PyJWTError:
        return None
    return sub if isinstance(sub, str) else None


def derive_token(secret: str, label: str) -> str:
    """A token the host can recompute from its secret instead of storing it."""
    import base64
    import hmac

    mac = hmac.new(secret.encode(), label.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode()
