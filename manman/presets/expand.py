"""A preset plus a user's variables, ports and overrides, made into a server spec."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec

from manman.errors import Invalid
from manman.models import ServerSpec, redact, to_builtins
from manman.presets.model import (
    PLACEHOLDER_RE,
    Preset,
    coerce,
    combined_ready_pattern,
    flat_args,
    placeholders,
)

# what the expansion sets and nobody gives beside a preset
_EXPANSION_ONLY = ("preset_version", "secret_values")


@dataclass(frozen=True, repr=False)
class Expansion:
    """The spec (the builtins of a valid ServerSpec, defaults filled in) and the ServerSpec
    itself. It holds secret values where the game needs them: show `redacted_spec()`."""

    spec: dict[str, Any]
    server_spec: ServerSpec
    secrets: tuple[str, ...] = ()

    def redacted_spec(self) -> dict[str, Any]:
        return redact(self.spec, self.secrets)

    def __repr__(self) -> str:
        return f"Expansion(spec={self.redacted_spec()!r})"


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


def resolve_ports(preset: Preset, ports: Mapping[str, object] | None) -> list[dict[str, Any]]:
    """The spec's `ports`, named as in the preset: a number, or `auto` for the worker to
    allocate (a port that follows an `auto` one is `auto` too, moved with it)."""
    given = dict(ports or {})
    unknown = sorted(set(given) - {p.name for p in preset.ports})
    if unknown:
        raise Invalid(f"ports: {unknown[0][:64]!r} is not a port of preset {preset.name}")
    numbers: dict[str, int | str] = {}
    out: list[dict[str, Any]] = []
    for p in preset.ports:
        entry: dict[str, Any] = {"name": p.name, "protocol": p.protocol}
        if p.follows is not None:
            if p.name in given:
                raise Invalid(f"ports.{p.name}: the game derives it from {p.follows}; "
                              f"give {p.follows} instead")
            leader = numbers[p.follows]
            number: object = leader if leader == "auto" else int(leader) + p.offset
            entry.update(follows=p.follows, offset=p.offset)
        else:
            number = given.get(p.name, p.default)
        if number != "auto" and (isinstance(number, bool) or not isinstance(number, int)
                                 or not 1 <= number <= 65535):
            raise Invalid(f"ports.{p.name}: must be a port number 1-65535 or \"auto\"")
        assert isinstance(number, int | str)
        numbers[p.name] = number
        entry["port"] = number
        out.append(entry)
    return out


def _fill(template: str, texts: Mapping[str, str]) -> str:
    # one pass, literal text: a value holding `{{x}}` stays as written; an `auto` port's
    # placeholder stays for the worker, which fills it with the number it allocates
    return PLACEHOLDER_RE.sub(lambda m: texts.get(m.group(1), m.group(0)), template)


def _fill_args(args: list[str | list[str]], texts: Mapping[str, str]) -> list[str]:
    out: list[str] = []
    for item in args:
        if isinstance(item, str):
            out.append(_fill(item, texts))
        elif all(texts.get(ref, ref) for part in item for ref in placeholders(part)):
            out.extend(_fill(part, texts) for part in item)
    return out


def expand(preset: Preset, vars: Mapping[str, object], overrides: Mapping[str, Any],
           ports: Mapping[str, object] | None = None) -> Expansion:
    """The spec `preset` makes with `vars` and `ports` (numbers or "auto" by name);
    `overrides` (any spec field, `name` among them) replace what the preset gives, field by
    field. Raises Invalid naming the variable, never quoting a secret."""
    given = sorted(set(overrides) & {"preset", *_EXPANSION_ONLY})
    if given:
        raise Invalid(f"{given[0]}: set by the preset, not given beside it")
    texts, secrets = resolve_variables(preset, vars)
    named = resolve_ports(preset, ports)
    texts.update({f"port.{p['name']}": str(p["port"]) for p in named if p["port"] != "auto"})
    spec: dict[str, Any] = {
        "game_id": preset.game_id,
        "args": _fill_args(preset.args, texts),
        "env": {k: _fill(v, texts) for k, v in preset.env.items()},
        "stop_command": preset.stop_command,
        "stop_signal": preset.stop_signal,
        "stop_timeout": preset.stop_timeout,
        "ready_pattern": combined_ready_pattern(preset.ready_patterns),
        "ports": named,
        "restart_needed_patterns": list(preset.restart_needed_patterns),
        "file_denylist": list(preset.file_denylist),
        "preset": preset.name,
        "preset_version": preset.version,
        "secret_values": list(secrets),
    }
    if preset.executable is not None:
        spec["executable"] = _fill(preset.executable, texts)
    if preset.query is not None:
        # the port stays a `{{port.NAME}}` reference: it follows the port wherever it is put
        spec["health"] = {"query": {"type": preset.query.type, "port": preset.query.port}}
    if preset.player_patterns is not None:
        spec["player_patterns"] = to_builtins(preset.player_patterns)
    if preset.backup is not None:  # a `backup` beside the preset replaces it whole
        spec["backup"] = to_builtins(preset.backup)
    spec.update(overrides)
    # a stop given beside the preset is how the user wants it stopped: the other way goes
    if overrides.get("stop_command") is not None and "stop_signal" not in overrides:
        spec["stop_signal"] = None
    if overrides.get("stop_signal") is not None and "stop_command" not in overrides:
        spec["stop_command"] = None
    try:
        checked = msgspec.convert(spec, ServerSpec)
    except (msgspec.ValidationError, ValueError) as e:
        raise Invalid(redact(str(e), secrets)) from None
    return Expansion(to_builtins(checked), checked, secrets)
