"""A preset plus a user's variables, allocated ports and overrides, made into a server spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import Struct

from manman.errors import Invalid
from manman.models import PlayerPatterns, ServerSpec, redact, to_builtins
from manman.presets.model import (
    PLACEHOLDER_RE,
    Preset,
    coerce,
    combined_ready_pattern,
    flat_args,
    placeholders,
)


class NamedPort(Struct, frozen=True):
    name: str
    port: int
    protocol: str


class ExpandedQuery(Struct, frozen=True):
    type: str
    port: int | None = None


class PresetExtras(Struct, frozen=True, kw_only=True):
    """What a preset says that today's ServerSpec has no field for; kept beside the spec."""

    preset: str
    preset_version: int
    stop_signal: str | None = None
    query: ExpandedQuery | None = None
    player_patterns: PlayerPatterns | None = None
    restart_needed_patterns: list[str] = msgspec.field(default_factory=list)
    ready_patterns: list[str] = msgspec.field(default_factory=list)
    ports: list[NamedPort] = msgspec.field(default_factory=list)


@dataclass(frozen=True, repr=False)
class Expansion:
    """The spec (a dict ServerSpec accepts, defaults filled in) and the extras. The spec
    holds secret values where the game needs them: show `redacted_spec()` instead."""

    spec: dict[str, Any]
    extras: PresetExtras
    secrets: tuple[str, ...] = ()

    def redacted_spec(self) -> dict[str, Any]:
        return redact(self.spec, self.secrets)

    def __repr__(self) -> str:
        return f"Expansion(spec={self.redacted_spec()!r}, extras={self.extras!r})"


def resolve_variables(preset: Preset, values: Mapping[str, object]) -> tuple[dict[str, str],
                                                                             tuple[str, ...]]:
    """Each variable's substitution text, and the secret values among them."""
    unknown = sorted(set(values) - {v.name for v in preset.variables})
    if unknown:
        raise Invalid(f"vars: {unknown[0][:64]!r} is not a variable of preset {preset.name}")
    texts: dict[str, str] = {}
    secrets: list[str] = []
    whole_args = {a[2:-2] for a in flat_args(preset.args)
                  if PLACEHOLDER_RE.fullmatch(a) is not None}
    for var in preset.variables:
        value = values.get(var.name, var.default)
        if value is None:
            if var.required:
                raise Invalid(f"vars.{var.name}: required by preset {preset.name}")
            value = False if var.type == "bool" else ""  # an int has a default (checked)
        try:
            text = coerce(var, value)
        except ValueError as e:
            raise Invalid(f"vars.{var.name}: {e}") from None
        # a user's text that is a whole argument must not turn into an option of the game
        if var.type in ("string", "secret") and var.name in whole_args \
                and text[:1] in ("-", "+"):
            raise Invalid(f"vars.{var.name}: must not start with '-' or '+'")
        if var.type == "secret" and text:
            secrets.append(text)
        texts[var.name] = text
    return texts, tuple(secrets)


def resolve_ports(preset: Preset, ports: Mapping[str, int] | None) -> list[NamedPort]:
    given = dict(ports or {})
    unknown = sorted(set(given) - {p.name for p in preset.ports})
    if unknown:
        raise Invalid(f"ports: {unknown[0][:64]!r} is not a port of preset {preset.name}")
    numbers: dict[str, int] = {}
    named: list[NamedPort] = []
    for p in preset.ports:
        if p.follows is not None:
            if p.name in given:
                raise Invalid(f"ports.{p.name}: the game derives it from {p.follows}; "
                              f"allocate {p.follows} instead")
            number: object = numbers[p.follows] + p.offset
        else:
            number = given.get(p.name, p.default)
        if number == "auto":
            raise Invalid(f"ports.{p.name}: needs an allocated port number")
        if isinstance(number, bool) or not isinstance(number, int) or not 1 <= number <= 65535:
            raise Invalid(f"ports.{p.name}: must be a port number 1-65535")
        numbers[p.name] = number
        named.append(NamedPort(p.name, number, p.protocol))
    return named


def _fill(template: str, texts: Mapping[str, str]) -> str:
    # one pass, literal text: a value holding `{{x}}` stays as written
    return PLACEHOLDER_RE.sub(lambda m: texts[m.group(1)], template)


def _fill_args(args: list[str | list[str]], texts: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for item in args:
        if isinstance(item, str):
            out.append(_fill(item, texts))
        elif all(texts[ref] for part in item for ref in placeholders(part)):
            out.extend(_fill(part, texts) for part in item)
    return out


def expand(preset: Preset, vars: Mapping[str, object], overrides: Mapping[str, Any],
           ports: Mapping[str, int] | None = None) -> Expansion:
    """The spec `preset` makes with `vars`; `overrides` (any spec field, `name` among them)
    replace what the preset gives, field by field. Raises Invalid naming the variable."""
    texts, secrets = resolve_variables(preset, vars)
    named = resolve_ports(preset, ports)
    texts.update({f"port.{p.name}": str(p.port) for p in named})
    spec: dict[str, Any] = {
        "game_id": preset.game_id,
        "args": _fill_args(preset.args, texts),
        "env": {k: _fill(v, texts) for k, v in preset.env.items()},
        "stop_command": preset.stop_command,
        "stop_timeout": preset.stop_timeout,
        "ready_pattern": combined_ready_pattern(preset.ready_patterns),
        "ports": [{"port": p.port, "protocol": proto} for p in named
                  for proto in p.protocol.split("+")],
    }
    if preset.executable is not None:
        spec["executable"] = _fill(preset.executable, texts)
    spec.update(overrides)
    try:
        checked = msgspec.convert(spec, ServerSpec)
    except (msgspec.ValidationError, ValueError) as e:
        raise Invalid(redact(str(e), secrets)) from None
    query = None
    if preset.query is not None:
        port = int(texts[preset.query.port[2:-2]]) if preset.query.port else None
        query = ExpandedQuery(preset.query.type, port)
    extras = PresetExtras(
        preset=preset.name, preset_version=preset.version,
        # a stop_command given beside the preset is how the user wants it stopped
        stop_signal=None if "stop_command" in overrides else preset.stop_signal,
        query=query, player_patterns=preset.player_patterns,
        restart_needed_patterns=list(preset.restart_needed_patterns),
        ready_patterns=list(preset.ready_patterns), ports=named)
    return Expansion(to_builtins(checked), extras, secrets)
