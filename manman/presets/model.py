"""What a preset file holds (msgspec Structs) and the checks that make a loaded preset usable."""

from __future__ import annotations

import re
import tomllib
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from manman.models import (
    BackupSpec,
    ConsoleLine,
    FileDenylist,
    GameId,
    Pattern,
    PlayerPatterns,
    Port,
    Seconds,
    ServerSpec,
    StopSignal,
)

PRESET_NAME = r"^[a-z0-9][a-z0-9_-]{0,62}$"
VARIABLE_NAME = r"^[a-z][a-z0-9_]{0,31}$"
MAX_FILE_BYTES = 256 * 1024
MAX_RULE = 1024
# `{{name}}` or `{{port.name}}`; anything else between braces is an error at load
PLACEHOLDER_RE = re.compile(r"\{\{([^{}]*)\}\}")
_VAR_REF_RE = re.compile(VARIABLE_NAME[1:-1])
_PORT_REF_RE = re.compile(r"port\.([a-z][a-z0-9_]{0,31})")
_QUERY_PORT_RE = re.compile(r"\{\{port\.([a-z][a-z0-9_]{0,31})\}\}")
_RANGE_RE = re.compile(r"(-?[0-9]{1,10})\.\.(-?[0-9]{1,10})")
INT_MIN, INT_MAX = -(2**31), 2**31 - 1

PresetName = Annotated[str, Meta(pattern=PRESET_NAME)]
VariableName = Annotated[str, Meta(pattern=VARIABLE_NAME)]
Text = Annotated[str, Meta(max_length=1024)]
Template = Annotated[str, Meta(max_length=4096)]


class PortDef(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """A named port: a `default` number (`auto`: whoever places the server allocates one), or
    a port the game derives itself, `offset` above the port it `follows` (Valheim's query port
    is its game port + 1)."""

    name: VariableName
    default: Port | Literal["auto"] | None = None
    follows: VariableName | None = None
    offset: Annotated[int, Meta(ge=1, le=100)] = 1
    # `tcp+udp`: the same number on both (one `ports` entry each in the spec)
    protocol: Literal["tcp", "udp", "tcp+udp"] = "tcp"
    description: Text = ""


class Variable(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    name: VariableName
    type: Literal["string", "int", "bool", "secret"] = "string"
    default: str | int | bool | None = None
    required: bool = False
    # strings and secrets: a regex the whole value must match; ints: "min..max"
    rule: Annotated[str, Meta(max_length=MAX_RULE)] | None = None
    description: Text = ""
    # how a bool is written where it is substituted (`-public 1`, `ONLINE_MODE=FALSE`)
    true_text: Annotated[str, Meta(max_length=64)] = "true"
    false_text: Annotated[str, Meta(max_length=64)] = "false"


class Query(Struct, forbid_unknown_fields=True, frozen=True):
    type: Literal["a2s", "minecraft", "tcp", "console"]
    port: Annotated[str, Meta(max_length=64)] | None = None  # `{{port.NAME}}`


class Preset(Struct, forbid_unknown_fields=True, frozen=True, kw_only=True):
    """One game's recipe: expands, with a user's variables, into a server spec."""

    name: PresetName
    version: Annotated[int, Meta(ge=1, le=INT_MAX)]
    title: Annotated[str, Meta(min_length=1, max_length=128)]
    game_id: GameId
    executable: Template | None = None
    # a list inside args is a group, left out whole when a variable in it is empty
    args: Annotated[list[Template | Annotated[list[Template], Meta(min_length=1, max_length=8)]],
                    Meta(max_length=256)] = msgspec.field(default_factory=list)
    env: dict[str, Template] = msgspec.field(default_factory=dict)
    ports: Annotated[list[PortDef], Meta(max_length=64)] = msgspec.field(default_factory=list)
    ready_patterns: Annotated[list[Pattern], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    stop_command: ConsoleLine | None = None
    stop_signal: StopSignal | None = None
    stop_timeout: Seconds = 30.0
    query: Query | None = None
    player_patterns: PlayerPatterns | None = None
    variables: Annotated[list[Variable], Meta(max_length=64)] = msgspec.field(
        default_factory=list)
    restart_needed_patterns: Annotated[list[Pattern], Meta(max_length=16)] = msgspec.field(
        default_factory=list)
    # the spec's `backup` (hooks that make the game save first) and `file_denylist`
    backup: BackupSpec | None = None
    file_denylist: FileDenylist = msgspec.field(default_factory=list)

    def variable(self, name: str) -> Variable | None:
        for v in self.variables:
            if v.name == name:
                return v
        return None

    def summary(self) -> dict[str, Any]:
        """What `GET /preset` lists: no secret value can be in it (a secret has no default)."""
        return {"name": self.name, "version": self.version, "title": self.title,
                "game_id": self.game_id,
                "variables": [_variable_summary(v) for v in self.variables],
                "ports": [msgspec.to_builtins(p) for p in self.ports]}


def _variable_summary(var: Variable) -> dict[str, Any]:
    out: dict[str, Any] = msgspec.to_builtins(var)
    if var.type != "bool":
        del out["true_text"], out["false_text"]
    return out


def combined_ready_pattern(patterns: list[str]) -> str | None:
    """Today's spec holds one regex: any of the preset's patterns marks ready."""
    if not patterns:
        return None
    if len(patterns) == 1:
        return patterns[0]
    return "|".join(f"(?:{p})" for p in patterns)


def flat_args(args: list[str | list[str]]) -> list[str]:
    return [a for item in args for a in ([item] if isinstance(item, str) else item)]


def parse_range(rule: str) -> tuple[int, int]:
    m = _RANGE_RE.fullmatch(rule)
    if m is None:
        raise ValueError(f"an int rule is a range 'min..max', not {rule[:64]!r}")
    low, high = int(m.group(1)), int(m.group(2))
    if not INT_MIN <= low <= high <= INT_MAX:
        raise ValueError("an int rule needs min <= max, both 32-bit integers")
    return low, high


def placeholders(template: str) -> list[str]:
    """The names inside `{{…}}` in `template`; ValueError for a malformed one."""
    names = PLACEHOLDER_RE.findall(template)
    rest = PLACEHOLDER_RE.sub("", template)
    if "{{" in rest or "}}" in rest:
        raise ValueError("has an unclosed or nested '{{' placeholder")
    return names


def _compile(pattern: str, where: str) -> re.Pattern[str]:
    try:
        return re.compile(pattern)
    except (re.error, OverflowError, RecursionError) as e:
        raise ValueError(f"{where}: not a valid regular expression: {e}") from None


_CONTROL_RE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
MAX_VALUE = 1024
_TRUE = ("true", "1", "yes", "on")
_FALSE = ("false", "0", "no", "off")


def coerce(var: Variable, value: object) -> str:
    """The text `value` puts in place of `{{var}}`; ValueError never quotes the value (it may
    be a secret)."""
    if var.type == "bool":
        if isinstance(value, str) and value.lower() in _TRUE + _FALSE:
            value = value.lower() in _TRUE
        if not isinstance(value, bool):
            raise ValueError("must be a bool (true or false)")
        return var.true_text if value else var.false_text
    if var.type == "int":
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,10}", value):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be an integer")
        low, high = parse_range(var.rule) if var.rule else (INT_MIN, INT_MAX)
        if not low <= value <= high:
            raise ValueError(f"must be in {low}..{high}")
        return str(value)
    if not isinstance(value, str):
        raise ValueError("must be a string")
    if len(value) > MAX_VALUE:
        raise ValueError(f"must be at most {MAX_VALUE} characters")
    if _CONTROL_RE.search(value):
        raise ValueError("must be one line without control characters or NUL")
    if var.rule is not None and re.fullmatch(var.rule, value) is None:
        raise ValueError(f"must match {var.rule}")
    return value


def check_variable(var: Variable, where: str) -> None:
    if var.type == "int" and var.default is None and not var.required:
        raise ValueError(f"{where}: an int that is not required needs a default")
    if var.type == "secret" and var.default is not None:
        raise ValueError(f"{where}.default: a secret has no default (it would not be secret)")
    if var.type != "bool" and (var.true_text != "true" or var.false_text != "false"):
        raise ValueError(f"{where}: true_text and false_text are for bool variables")
    if var.rule is not None:
        if var.type == "bool":
            raise ValueError(f"{where}.rule: a bool takes no rule")
        if var.type == "int":
            try:
                parse_range(var.rule)
            except ValueError as e:
                raise ValueError(f"{where}.rule: {e}") from None
        else:
            _compile(var.rule, f"{where}.rule")
    if var.default is not None:
        wanted = {"bool": bool, "int": int}.get(var.type, str)
        if type(var.default) is not wanted:
            raise ValueError(f"{where}.default: must be a {wanted.__name__} for a {var.type}")
        try:
            coerce(var, var.default)
        except ValueError as e:
            raise ValueError(f"{where}.default: {e}") from None


def check_preset(preset: Preset) -> None:
    """Everything msgspec's declarations cannot say; ValueError names the key at fault."""
    seen: set[str] = set()
    for i, var in enumerate(preset.variables):
        if var.name in seen:
            raise ValueError(f"variables[{i}].name: {var.name!r} is declared twice")
        seen.add(var.name)
        check_variable(var, f"variables[{i}]")
    port_names: set[str] = set()
    followers: set[str] = set()
    for i, port in enumerate(preset.ports):
        if port.name in port_names:
            raise ValueError(f"ports[{i}].name: {port.name!r} is declared twice")
        if (port.default is None) == (port.follows is None):
            raise ValueError(f"ports[{i}]: give default or follows, one of them")
        if port.follows is not None:
            if port.follows not in port_names or port.follows in followers:
                raise ValueError(f"ports[{i}].follows: must name a port with a default, "
                                 "declared before it")
            followers.add(port.name)
        elif port.offset != 1:
            raise ValueError(f"ports[{i}].offset: only for a port that follows another")
        port_names.add(port.name)

    def check_template(template: str, where: str) -> None:
        try:
            names = placeholders(template)
        except ValueError as e:
            raise ValueError(f"{where}: {e}") from None
        for ref in names:
            port = _PORT_REF_RE.fullmatch(ref)
            if port is not None:
                if port.group(1) not in port_names:
                    raise ValueError(f"{where}: {{{{{ref}}}}} names no port in `ports`")
            elif not _VAR_REF_RE.fullmatch(ref):
                raise ValueError(f"{where}: {{{{{ref}}}}} is not a placeholder")
            elif ref not in seen:
                raise ValueError(f"{where}: {{{{{ref}}}}} names no variable in `variables`")

    if preset.executable is not None:
        check_template(preset.executable, "executable")
    for i, arg in enumerate(preset.args):
        if isinstance(arg, str):
            check_template(arg, f"args[{i}]")
        else:
            for j, part in enumerate(arg):
                check_template(part, f"args[{i}][{j}]")
    for key, value in preset.env.items():
        check_template(value, f"env.{key}")
    # fields that are not templates must not look like one: a `{{` there is a mistake
    plain = [("stop_command", preset.stop_command or ""), ("title", preset.title)]
    plain += [(f"ready_patterns[{i}]", p) for i, p in enumerate(preset.ready_patterns)]
    for kind in ("before", "after"):
        plain += [(f"backup.{kind}[{i}].command", h.command)
                  for i, h in enumerate(getattr(preset.backup or BackupSpec(), kind))]
    for where, text in plain:
        if "{{" in text or "}}" in text:
            raise ValueError(f"{where}: placeholders are only expanded in executable, args, "
                             "env and query.port")
    if preset.stop_command is not None and preset.stop_signal is not None:
        raise ValueError("stop_signal: give stop_command or stop_signal, not both")
    if preset.query is not None:
        q = preset.query
        if q.type == "console":
            if q.port is not None:
                raise ValueError("query.port: a console query has no port")
        else:
            ref = _QUERY_PORT_RE.fullmatch(q.port or "")
            if ref is None or ref.group(1) not in port_names:
                raise ValueError("query.port: must be {{port.NAME}} of a port in `ports`")
    for i, p in enumerate(preset.ready_patterns):
        _compile(p, f"ready_patterns[{i}]")
    combined = combined_ready_pattern(preset.ready_patterns)
    if combined is not None:
        if len(combined) > 1024:
            raise ValueError("ready_patterns: more than 1,024 characters once combined")
        _compile(combined, "ready_patterns (combined; use scoped flags like (?i:…))")
    for i, p in enumerate(preset.restart_needed_patterns):
        _compile(p, f"restart_needed_patterns[{i}]")
    if preset.player_patterns is not None:
        for kind in ("join", "leave"):
            for i, p in enumerate(getattr(preset.player_patterns, kind)):
                where = f"player_patterns.{kind}[{i}]"
                if "player" not in _compile(p, where).groupindex:
                    raise ValueError(f"{where}: needs a (?P<player>…) group")
    # the fixed parts of the spec (game_id, executable's place) checked by the spec itself
    try:
        msgspec.convert({"name": "preset-check", "game_id": preset.game_id,
                         "env": {k: "" for k in preset.env}, "stop_command": preset.stop_command,
                         "stop_timeout": preset.stop_timeout,
                         "backup": msgspec.to_builtins(preset.backup or BackupSpec()),
                         "file_denylist": list(preset.file_denylist)}, ServerSpec)
    except (msgspec.ValidationError, ValueError) as e:
        raise ValueError(str(e)) from None
    if preset.executable is not None and preset.game_id.startswith("steamcmd:"):
        exe = preset.executable
        if exe.startswith("/") or ".." in exe.split("/"):
            raise ValueError("executable: must be a path inside the install directory")


def parse_preset(data: bytes) -> Preset:
    """A preset from a TOML file's bytes; ValueError says which key is wrong."""
    if len(data) > MAX_FILE_BYTES:
        raise ValueError(f"more than {MAX_FILE_BYTES} bytes")
    try:
        raw = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"not valid TOML: {e}") from None
    try:
        preset = msgspec.convert(raw, Preset)
    except msgspec.ValidationError as e:
        raise ValueError(str(e)) from None
    check_preset(preset)
    return preset
