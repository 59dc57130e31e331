"""Presets: the shipped files load and expand into valid specs; variables, secrets, files and
overrides behave as docs/presets.md says."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from manman.errors import Invalid, NotFound, StartupError
from manman.models import ServerSpec
from manman.presets import PresetCatalog, expand, operator_dir, shipped_dir

# the required variables of each shipped preset, with values that pass their rules
REQUIRED: dict[str, dict[str, object]] = {
    "valheim": {"password": "hunter22"},
    "project-zomboid": {"admin_password": "zomboid-admin"},
    "rust": {"rcon_password": "rcon-secret-1"},
    "minecraft": {"eula": True},
}
# what issue 12 asks to ship, by install method and identifier
EXPECTED_GAMES = {
    "cs2": "steamcmd:730", "valheim": "steamcmd:896660", "palworld": "steamcmd:2394010",
    "satisfactory": "steamcmd:1690800", "project-zomboid": "steamcmd:380870",
    "rust": "steamcmd:258550", "7-days-to-die": "steamcmd:294420",
    "tmodloader": "steamcmd:1281930", "minecraft": "docker:itzg/minecraft-server",
    "openttd": "exec:/usr/games/openttd",
}
SECRET = "s3cret-Value-42"

MINIMAL = """
name = "{name}"
version = 1
title = "Test game"
game_id = "exec:/bin/true"
args = {args}
{extra}
"""


def write_preset(folder: Path, filename: str, *, name: str = "testgame",
                 args: str = '["--port", "{{port.game}}"]', extra: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    path.write_text(MINIMAL.format(name=name, args=args, extra=extra
                                   + '\n[[ports]]\nname = "game"\ndefault = 4000\n'))
    return path


@pytest.fixture(scope="module")
def catalog() -> PresetCatalog:
    return PresetCatalog.load()


def test_the_issue_s_games_are_shipped(catalog: PresetCatalog) -> None:
    assert {p.name: p.game_id for p in catalog} == EXPECTED_GAMES
    listing = catalog.listing()["presets"]
    assert [p["name"] for p in listing] == sorted(EXPECTED_GAMES)
    for entry in listing:
        assert set(entry) == {"name", "version", "title", "game_id", "variables", "ports"}


@pytest.mark.parametrize("name", sorted(EXPECTED_GAMES))
def test_every_shipped_preset_expands_to_a_valid_spec(catalog: PresetCatalog,
                                                      name: str) -> None:
    preset = catalog.get(name)
    assert {v.name for v in preset.variables if v.required} == set(REQUIRED.get(name, {}))
    expansion = expand(preset, REQUIRED.get(name, {}), {"name": f"{name}-1"})
    spec = msgspec.convert(expansion.spec, ServerSpec)
    assert spec == expansion.server_spec
    assert spec.name == f"{name}-1" and spec.game_id == preset.game_id
    assert "{{" not in json.dumps(expansion.spec["args"] + list(expansion.spec["env"].values()))
    assert [p.name for p in spec.ports] == [p.name for p in preset.ports]
    assert all(isinstance(p.port, int) for p in spec.ports)  # every shipped default a number
    assert spec.preset == name and spec.preset_version == preset.version
    assert spec.stop_signal == preset.stop_signal
    assert spec.restart_needed_patterns == preset.restart_needed_patterns
    assert spec.player_patterns == preset.player_patterns
    if preset.query is not None:
        assert spec.health.query is not None and spec.health.query.type == preset.query.type
        assert spec.health.query.port == preset.query.port
    # the source of every value is cited in the file
    text = (shipped_dir() / f"{name}.toml").read_text()
    assert "Sources" in text and "https://" in text


def test_variables_and_ports_fill_the_placeholders(catalog: PresetCatalog) -> None:
    valheim = catalog.get("valheim")
    e = expand(valheim, {"password": "hunter22", "world": "Midgard", "public": "false"},
               {"name": "vh"}, ports={"game": 30000})
    assert e.spec["args"] == ["-nographics", "-batchmode", "-name", "manman Valheim",
                              "-port", "30000", "-world", "Midgard", "-password", "hunter22",
                              "-public", "0"]
    assert e.spec["ports"] == [
        {"name": "game", "port": 30000, "protocol": "udp", "follows": None, "offset": 1},
        {"name": "query", "port": 30001, "protocol": "udp", "follows": "game", "offset": 1}]
    assert e.spec["ready_pattern"] == "(?:Game server connected)|(?:DungeonDB Start)"
    assert e.spec["stop_command"] is None and e.spec["stop_signal"] == "SIGINT"
    assert e.spec["health"]["query"]["type"] == "a2s"
    assert e.spec["health"]["query"]["port"] == "{{port.query}}"
    assert e.spec["secret_values"] == ["hunter22"]
    minecraft = expand(catalog.get("minecraft"), {"eula": True, "max_players": "7"},
                       {"name": "mc"}, ports={"game": 25600})
    assert minecraft.spec["env"]["EULA"] == "TRUE"
    assert minecraft.spec["env"]["SERVER_PORT"] == "25600"
    assert minecraft.spec["env"]["MAX_PLAYERS"] == "7"
    assert minecraft.spec["stop_command"] == "stop"


def test_an_empty_variable_leaves_its_argument_group_out(catalog: PresetCatalog) -> None:
    cs2 = catalog.get("cs2")
    without = expand(cs2, {}, {"name": "cs"}).spec["args"]
    assert "+sv_setsteamaccount" not in without
    token = "0123456789abcdef0123456789ABCDEF"
    with_token = expand(cs2, {"gslt": token}, {"name": "cs"}).spec["args"]
    assert with_token[-2:] == ["+sv_setsteamaccount", token]


def test_a_missing_required_variable_is_invalid_and_named(catalog: PresetCatalog) -> None:
    with pytest.raises(Invalid) as e:
        expand(catalog.get("rust"), {}, {"name": "r"})
    assert "vars.rcon_password" in e.value.message and "required" in e.value.message


@pytest.mark.parametrize(("game", "values", "named"), [
    ("rust", {"max_players": "many"}, "vars.max_players"),         # not an int
    ("rust", {"world_size": 99999}, "vars.world_size"),            # out of its range
    ("rust", {"max_players": True}, "vars.max_players"),           # a bool is not an int
    ("valheim", {"public": "maybe"}, "vars.public"),               # not a bool
    ("valheim", {"world": "../../etc"}, "vars.world"),             # breaks its regex
    ("valheim", {"world": 5}, "vars.world"),                       # not a string
    ("valheim", {"server_name": "x\ny"}, "vars.server_name"),      # two lines
    ("valheim", {"server_name": "a\x00b"}, "vars.server_name"),    # NUL
    ("valheim", {"server_name": "a" * 5000}, "vars.server_name"),  # too long
    ("valheim", {"nope": "1"}, "nope"),                            # not a variable
])
def test_a_value_that_breaks_its_type_or_rule_is_invalid_and_named(
        catalog: PresetCatalog, game: str, values: dict[str, object], named: str) -> None:
    with pytest.raises(Invalid) as e:
        expand(catalog.get(game), {**REQUIRED.get(game, {}), **values}, {"name": "g"})
    assert named in e.value.message


def test_a_value_stays_one_argument_and_literal(catalog: PresetCatalog) -> None:
    e = expand(catalog.get("valheim"),
               {"password": "pass{{port.game}}$(id)", "server_name": "a; rm -rf / {{world}}"},
               {"name": "vh"})
    args = e.spec["args"]
    assert args[args.index("-password") + 1] == "pass{{port.game}}$(id)"
    assert args[args.index("-name") + 1] == "a; rm -rf / {{world}}"
    assert len(args) == 12
    # a whole-argument value that would read as an option of the game is refused
    with pytest.raises(Invalid) as err:
        expand(catalog.get("valheim"), {"password": "-public0"}, {"name": "vh"})
    assert "vars.password" in err.value.message


@pytest.mark.parametrize("bad", [
    {"password": "abc"},            # too short for its rule
    {"password": "-" + SECRET},     # would read as an option
    {"password": SECRET + "\n"},    # two lines
])
def test_a_secret_never_appears_in_an_error(catalog: PresetCatalog,
                                            bad: dict[str, object]) -> None:
    with pytest.raises(Invalid) as e:
        expand(catalog.get("valheim"), bad, {"name": "vh"})
    value = str(bad["password"]).strip("-\n")
    assert "vars.password" in e.value.message
    assert value not in e.value.message and value not in str(e.value)


def test_a_secret_is_absent_from_repr_listing_and_override_errors(
        catalog: PresetCatalog) -> None:
    valheim = catalog.get("valheim")
    e = expand(valheim, {"password": SECRET}, {"name": "vh"})
    assert SECRET in e.spec["args"]  # the game needs it …
    assert SECRET not in repr(e) and SECRET not in str(e.redacted_spec())  # … nobody else
    assert e.spec["secret_values"] == [SECRET]  # (what the answers mask)
    assert SECRET not in json.dumps(catalog.listing())
    # a spec override that fails validation reports without the secret
    with pytest.raises(Invalid) as err:
        expand(valheim, {"password": SECRET}, {"name": "vh", "args": [SECRET, "a\x00"]})
    assert SECRET not in err.value.message


def test_overrides_win_over_the_preset(catalog: PresetCatalog) -> None:
    valheim = catalog.get("valheim")
    e = expand(valheim, {"password": "hunter22"},
               {"name": "vh", "worker_id": "w-1", "stop_timeout": 5, "args": ["-custom"],
                "ready_pattern": None, "stop_command": "save",
                "restart": {"policy": "never"}, "desired_state": "running"})
    assert e.spec["args"] == ["-custom"] and e.spec["stop_timeout"] == 5
    assert e.spec["ready_pattern"] is None and e.spec["stop_command"] == "save"
    assert e.spec["restart"]["policy"] == "never" and e.spec["worker_id"] == "w-1"
    assert e.spec["desired_state"] == "running"
    assert e.spec["stop_signal"] is None  # the user's stop_command is how it stops now
    cs2 = expand(catalog.get("cs2"), {}, {"name": "cs", "stop_signal": "SIGINT"}).spec
    assert cs2["stop_signal"] == "SIGINT" and cs2["stop_command"] is None
    for fixed in ("preset", "preset_version", "secret_values"):
        with pytest.raises(Invalid) as err:
            expand(valheim, {"password": "hunter22"}, {"name": "vh", fixed: None})
        assert fixed in err.value.message
    with pytest.raises(Invalid) as err:
        expand(valheim, {"password": "hunter22"}, {"name": "vh", "no_such_field": 1})
    assert "no_such_field" in err.value.message
    with pytest.raises(Invalid):
        expand(valheim, {"password": "hunter22"}, {})  # a server needs a name


def test_backup_hooks_and_file_denylist_come_from_the_preset(catalog: PresetCatalog) -> None:
    mc = expand(catalog.get("minecraft"), {"eula": True}, {"name": "mc"}).spec
    assert [h["command"] for h in mc["backup"]["before"]] == ["save-off", "save-all flush"]
    assert mc["backup"]["before"][1]["wait_for"] is not None
    assert [h["command"] for h in mc["backup"]["after"]] == ["save-on"]
    assert mc["file_denylist"] == [".rcon-cli.env", ".rcon-cli.yaml"]
    # a `backup` beside the preset replaces its backup whole
    own = expand(catalog.get("minecraft"), {"eula": True},
                 {"name": "mc", "backup": {"stop_during": True}}).spec
    assert own["backup"]["stop_during"] and own["backup"]["before"] == []
    assert expand(catalog.get("cs2"), {}, {"name": "cs"}).spec["file_denylist"] == []


def test_ports_allocation(catalog: PresetCatalog) -> None:
    valheim = catalog.get("valheim")
    with pytest.raises(Invalid) as e:
        expand(valheim, {"password": "hunter22"}, {"name": "vh"}, ports={"query": 4000})
    assert "ports.query" in e.value.message  # the game derives it from its game port
    with pytest.raises(Invalid) as e:
        expand(valheim, {"password": "hunter22"}, {"name": "vh"}, ports={"nope": 4000})
    assert "nope" in e.value.message
    with pytest.raises(Invalid) as e:
        expand(valheim, {"password": "hunter22"}, {"name": "vh"}, ports={"game": 65535})
    assert "ports.query" in e.value.message  # 65535 + 1 is no port


def test_an_auto_port_stays_for_the_worker_to_allocate(tmp_path: Path,
                                                       catalog: PresetCatalog) -> None:
    path = write_preset(tmp_path, "auto.toml")
    path.write_text(path.read_text().replace("default = 4000", 'default = "auto"'))
    preset = PresetCatalog.load(tmp_path, shipped=tmp_path / "none").get("testgame")
    e = expand(preset, {}, {"name": "t"})
    assert e.spec["args"] == ["--port", "{{port.game}}"]  # the worker fills it in
    assert e.spec["ports"][0]["port"] == "auto"
    assert expand(preset, {}, {"name": "t"}, ports={"game": 4100}).spec["args"] == [
        "--port", "4100"]
    # a number made `auto` by the request; the port that follows it moves with it
    vh = expand(catalog.get("valheim"), {"password": "hunter22"}, {"name": "vh"},
                ports={"game": "auto"})
    assert [(p["name"], p["port"]) for p in vh.spec["ports"]] == [("game", "auto"),
                                                                  ("query", "auto")]
    assert vh.spec["args"][vh.spec["args"].index("-port") + 1] == "{{port.game}}"
    with pytest.raises(Invalid) as err:
        expand(preset, {}, {"name": "t"}, ports={"game": "any"})
    assert "ports.game" in err.value.message


def test_operator_presets_join_the_shipped_ones(tmp_path: Path) -> None:
    folder = operator_dir(tmp_path)
    write_preset(folder, "mine.toml", name="my-game")
    catalog = PresetCatalog.load(folder)
    assert "my-game" in catalog and "valheim" in catalog
    assert catalog.source("my-game") == str(folder / "mine.toml")
    assert PresetCatalog.load(tmp_path / "absent").get("valheim").name == "valheim"
    with pytest.raises(NotFound):
        catalog.get("no-such-game")


def test_one_name_in_two_files_stops_start_up(tmp_path: Path) -> None:
    folder = operator_dir(tmp_path)
    mine = write_preset(folder, "my-valheim.toml", name="valheim")
    with pytest.raises(StartupError) as e:
        PresetCatalog.load(folder)
    assert str(mine) in e.value.message and "valheim.toml" in e.value.message.replace(
        str(mine), "")
    # and within one folder
    (folder / "my-valheim.toml").unlink()
    first = write_preset(folder, "a.toml")
    second = write_preset(folder, "b.toml")
    with pytest.raises(StartupError) as e:
        PresetCatalog.load(folder)
    assert str(first) in e.value.message and str(second) in e.value.message


@pytest.mark.parametrize(("args", "extra", "key"), [
    ('["{{nope}}"]', "", "args[0]"),                          # no such variable
    ('["-x", "{{port.other}}"]', "", "args[1]"),              # no such port
    ('["{{ bad"]', "", "args[0]"),                            # unclosed
    ('["{{Bad-Name}}"]', "", "args[0]"),                      # not a placeholder
    ('[["-p", "{{nope}}"]]', "", "args[0][1]"),               # inside a group
    ("[]", '[env]\nX = "{{nope}}"', "env.X"),
    ("[]", 'stop_command = "say {{x}}"', "stop_command"),     # not a template field
    ("[]", '[query]\ntype = "a2s"\nport = "{{port.nope}}"', "query.port"),
    ("[]", 'ready_patterns = ["(unclosed"]', "ready_patterns[0]"),
    ("[]", 'ready_patterns = ["(?i)a", "b"]', "ready_patterns"),  # breaks once combined
    ("[]", 'stop_command = "quit"\nstop_signal = "SIGINT"', "stop_signal"),
    ("[]", 'surprise = 1', "surprise"),                       # unknown field
    ("[]", '[[variables]]\nname = "pw"\ntype = "secret"\ndefault = "x"',
     "variables[0].default"),
    ("[]", '[[variables]]\nname = "n"\ntype = "int"\ndefault = 5\nrule = "1..3"',
     "variables[0].default"),
    ("[]", '[[variables]]\nname = "n"\ntype = "int"\nrule = "3..1"\ndefault = 2',
     "variables[0].rule"),
    ("[]", '[[variables]]\nname = "s"\nrule = "(x"', "variables[0].rule"),
    ("[]", '[player_patterns]\njoin = ["joined"]', "player_patterns.join[0]"),
    ("[]", '[backup]\nbefore = [{ command = "save", wait_for = "(x" }]',
     "backup.before[0].wait_for"),
    ("[]", '[backup]\nafter = [{ command = "say {{x}}" }]', "backup.after[0].command"),
    ("[]", '[backup]\nkeep_last = -1', "backup.keep_last"),
    ("[]", 'file_denylist = [""]', "file_denylist"),
])
def test_a_broken_file_names_the_file_and_the_key(tmp_path: Path, args: str, extra: str,
                                                  key: str) -> None:
    path = write_preset(tmp_path, "broken.toml", args=args, extra=extra)
    with pytest.raises(StartupError) as e:
        PresetCatalog.load(tmp_path)
    assert str(path) in e.value.message and key in e.value.message


def test_a_file_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('name = "x"\nargs = [\n')
    with pytest.raises(StartupError) as e:
        PresetCatalog.load(tmp_path)
    assert str(path) in e.value.message and "TOML" in e.value.message


def test_the_steamcmd_executable_stays_inside_the_install(tmp_path: Path) -> None:
    path = write_preset(tmp_path, "escape.toml", extra='executable = "../../bin/sh"')
    path.write_text(path.read_text().replace("exec:/bin/true", "steamcmd:1"))
    with pytest.raises(StartupError) as e:
        PresetCatalog.load(tmp_path)
    assert "executable" in e.value.message


def test_a_file_too_big_is_refused_by_name(tmp_path: Path) -> None:
    path = write_preset(tmp_path, "huge.toml", extra="# " + "x" * (300 * 1024))
    with pytest.raises(StartupError) as e:
        PresetCatalog.load(tmp_path)
    assert str(path) in e.value.message and "bytes" in e.value.message
