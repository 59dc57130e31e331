"""Field types, limits and states every other model module shares."""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from msgspec import Meta

NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,62}$"
# a docker reference as `docker pull` takes it; never starts with '-' (it goes into argv)
_IMAGE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}$")
_NAME_RE = re.compile(NAME_PATTERN[1:-1])
_ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
MAX_ARGS_BYTES = 64 * 1024
MAX_ENV_BYTES = 64 * 1024
MAX_LINE = 4096

Seconds = Annotated[float, Meta(ge=0, le=86400 * 7)]
PositiveSeconds = Annotated[float, Meta(gt=0, le=86400)]
Port = Annotated[int, Meta(ge=1, le=65535)]
# Patterns tell OpenAPI what validate_spec (and the edge's NUL check) enforce with messages
# a person can read; as `extra_json_schema` they document without replacing those messages.


def _schema_pattern(pattern: str) -> dict[str, str]:
    return {"pattern": pattern}


_TEXT = _schema_pattern(r"^[^\x00]*$")
Executable = Annotated[str, Meta(min_length=1, max_length=4096, extra_json_schema=_TEXT)]
ConsoleLine = Annotated[str, Meta(max_length=MAX_LINE,
                                  extra_json_schema=_schema_pattern(r"^[^\x00\r\n]*$"))]
Arg = Annotated[str, Meta(max_length=MAX_ARGS_BYTES, extra_json_schema=_TEXT)]
EnvKey = Annotated[str, Meta(extra_json_schema=_schema_pattern(
    r"^(?!MANMAN_)[A-Za-z_][A-Za-z0-9_]{0,127}$"))]
EnvValue = Annotated[str, Meta(max_length=MAX_ENV_BYTES, extra_json_schema=_TEXT)]
GameId = Annotated[str, Meta(min_length=3, max_length=4096, extra_json_schema=_schema_pattern(
    r"^(steamcmd:[0-9]{1,12}|docker:[A-Za-z0-9][A-Za-z0-9._/:@+-]{0,254}"
    r"|exec:[^\x00-][^\x00]*)$"))]
WorkerId = Annotated[str, Meta(max_length=64,
                               extra_json_schema=_schema_pattern(r"^[a-z0-9-]{1,64}$"))]
Pattern = Annotated[str, Meta(max_length=1024, extra_json_schema=_TEXT)]
# integers bounded to what SQLite and PostgreSQL `integer` columns hold
Int32 = Annotated[int, Meta(ge=-(2**31), le=2**31 - 1)]
Count = Annotated[int, Meta(ge=0, le=2**31 - 1)]
Generation = Annotated[int, Meta(ge=1, le=2**31 - 1)]

STATES = ("created", "installing", "stopped", "starting", "running", "stopping", "crashed",
          "failed", "unknown")
ServerState = Literal["created", "installing", "stopped", "starting", "running", "stopping",
                      "crashed", "failed", "unknown"]
WorkerStatus = Literal["alive", "frozen", "shutdown", "unknown"]
# what a worker says of itself, and what the host holds of it: never `unknown`
KnownWorkerStatus = Literal["alive", "frozen", "shutdown"]


def _no_nul(value: str, what: str) -> None:
    if "\x00" in value:
        raise ValueError(f"{what} must not contain a NUL byte")

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def check_console_line(data: str) -> None:
    if not data:  # the host's words too: both answer an empty line alike
        raise ValueError("a console command needs `data`")
    _no_nul(data, "data")
    if "\n" in data or "\r" in data:
        raise ValueError("data must be one line")


REDACTED = "********"


def redact(obj: Any, secrets: list[str] | tuple[str, ...]) -> Any:
    """`obj` with every secret value replaced, in any string of any list or dict."""
    if not secrets:
        return obj
    if isinstance(obj, str):
        return _mask(obj, secrets)
    if isinstance(obj, list):
        return [redact(x, secrets) for x in obj]
    if isinstance(obj, dict):
        return {k: redact(v, secrets) for k, v in obj.items()}
    return obj


def _mask(text: str, secrets: list[str] | tuple[str, ...]) -> str:
    """Every character inside any occurrence of a secret is masked, overlapping ones too
    (replacing one secret after another could leave a piece of the next in sight)."""
    spans: list[tuple[int, int]] = []
    for secret in secrets:
        start = text.find(secret) if secret else -1
        while start != -1:
            spans.append((start, start + len(secret)))
            start = text.find(secret, start + 1)
    if not spans:
        return text
    spans.sort()
    out, pos, end = [], 0, -1
    for a, b in spans:
        if a > end:  # a new masked stretch begins
            if end >= 0:
                out.append(REDACTED)
            out.append(text[pos:a])
            end = b
        else:
            end = max(end, b)
        pos = end
    out.append(REDACTED)
    out.append(text[pos:])
    return "".join(out)
