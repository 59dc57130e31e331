"""An emulator of Valve's steamcmd for the tests, faithful to docs/steamcmd.md.

Called as `steamcmd +force_install_dir DIR +login anonymous +app_update ID validate +quit`;
like steamcmd.sh, the first process runs the one that does the work as its child.
What it does depends on the app id (see SCENARIOS). Output comes in bursts with partial
lines, some lines end in a bare '\\r', a stalled download repeats its line, and the first run
in a STEAMCMD_EMU_HOME self-updates first. STEAMCMD_EMU_GAME is the command the installed
`game/server.sh` runs. STEAMCMD_EMU_EXECUTABLES, JSON {app id: path}, makes those apps
install like app 1000, with that game command also at the path (a preset's executable).

Builds: what "Steam" offers is a JSON file, STEAMCMD_EMU_HOME/published.json, which tests
write with `publish()` (an app not in it has DEFAULT_BUILD on branch public). `+app_update ID
[-beta NAME]` installs that branch's build and writes `steamapps/appmanifest_<id>.acf` in the
real shape. `+app_info_print ID` prints the app's info block in the real shape, answered like
steamcmd from its cache, `appcache/appinfo.vdf` beside the executable: an app found there is
printed as cached, however old (`+app_info_update 1` does not refresh it, LinuxGSM#301); one
not there is fetched and cached. An app update refreshes the cache for its app. App 1090
prints `No app info for AppID 1090 found, requesting...` and no block (steam-for-linux#11521);
app 1050 hangs, app 1095 prints without end, app 1040 fails its login.
"""

import json
import os
import sys
import time

HOME = os.environ.get("STEAMCMD_EMU_HOME", "/tmp/steamcmd-emu")
# steamcmd.sh keeps appcache/, config/, logs/ … in its own directory
CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "appcache", "appinfo.vdf")
DEFAULT_BUILD = 8000000
BRANCH = "public"  # `+app_update ID -beta NAME` sets it
EXECUTABLES = json.loads(os.environ.get("STEAMCMD_EMU_EXECUTABLES") or "{}")
out = sys.stdout


def emit(text, end="\n", burst=False):
    """Write like steamcmd to a pipe: bursts, sometimes split mid-line."""
    data = text + end
    if burst and len(data) > 8:
        out.write(data[:len(data) // 2])
        out.flush()
        time.sleep(0.002)
        data = data[len(data) // 2:]
    out.write(data)
    out.flush()


def header():
    for line in ("Redirecting stderr to '/home/steam/Steam/logs/stderr.txt'",
                 "Logging directory: '/home/steam/Steam/logs'",
                 "[  0%] Checking for available updates...",
                 "[----] Verifying installation...",
                 "UpdateUI: skip show logo",
                 "Steam Console Client (c) Valve Corporation - version 1785186678",
                 "-- type 'quit' to exit --",
                 "Loading Steam API...OK", ""):
        emit(line)


def self_update():
    os.makedirs(HOME, exist_ok=True)
    marker = os.path.join(HOME, "updated")
    if os.path.exists(marker):
        return
    for line in ("[  0%] Downloading update...", "[----] Extracting package...",
                 "[----] Installing update...", "[----] Update complete, launching Steamcmd..."):
        emit(line)
    open(marker, "w").close()


def login(fail=False):
    emit("Connecting anonymously to Steam Public...OK")
    emit("Waiting for client config...OK")
    if fail:
        emit("Waiting for user info...FAILED (Timed out)")
        emit("Login Failure: No Connection")
        return False
    emit("Waiting for user info...OK")
    return True


def progress(code, phase, pct, done, total, comma=False, cr=False):
    num = f"{pct:.2f}"
    if comma:
        num = num.replace(".", ",")
    emit(f" Update state ({code}) {phase}, progress: {num} ({done} / {total})",
         end="\r" if cr else "\n", burst=True)


def _write_json(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, path)  # a reader sees the old file or the new, never half of one


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return {}


def publish(home, app_id, buildid, branch="public", **fields):
    """For tests: Steam now offers `buildid` on the app's `branch` (extra fields such as
    description="…" or pwdrequired="1" go into the branch's block)."""
    path = os.path.join(home, "published.json")
    state = _read_json(path)
    app = state.setdefault(str(int(app_id)), {})
    app[branch] = {"buildid": str(buildid), "timeupdated": str(int(time.time())),
                   **{k: str(v) for k, v in fields.items()}}
    app.setdefault("_change", 0)
    state["_change"] = state.get("_change", 26584392) + 1
    app["_change"] = state["_change"]
    _write_json(path, state)


def fail_updates(home, app_id, failing=True):
    """For tests: `+app_update` of the app fails (as on a full disk) until called with
    failing=False; its app info is still served."""
    path = os.path.join(home, "published.json")
    state = _read_json(path)
    app = state.setdefault(str(int(app_id)), {})
    app["_fail"] = bool(failing)
    _write_json(path, state)


def published(app_id):
    """What Steam's servers hold for the app: {"change": n, "branches": {name: {...}},
    "fail": updates fail}."""
    state = _read_json(os.path.join(HOME, "published.json"))
    app = dict(state.get(str(int(app_id)), {}))
    change = app.pop("_change", 26584392)
    fail = app.pop("_fail", False)
    if "public" not in app:
        app["public"] = {"buildid": str(DEFAULT_BUILD), "timeupdated": "1700000000"}
    return {"change": change, "branches": app, "fail": fail}


def cache_app(app_id, info):
    """Remember the app's info in appinfo.vdf (the real file is binary KeyValues; only its
    being there or not matters here)."""
    cache = _read_json(CACHE)
    cache[str(int(app_id))] = info
    _write_json(CACHE, cache)


def app_info(app_id):
    """The app's info as steamcmd has it: from its cache if there, else fetched and cached."""
    cached = _read_json(CACHE).get(str(int(app_id)))
    if cached is not None:
        return cached
    info = published(app_id)
    cache_app(app_id, info)
    return info


def vdf(key, value, depth):
    """KeyValues text as steamcmd prints it: tabs, quoted keys and values, escapes."""
    pad = "\t" * depth

    def q(text):
        return '"' + str(text).replace("\\", "\\\\").replace('"', '\\"') + '"'

    if not isinstance(value, dict):
        return [f"{pad}{q(key)}\t\t{q(value)}"]
    lines = [f"{pad}{q(key)}", f"{pad}{{"]
    for k, v in value.items():
        lines += vdf(k, v, depth + 1)
    return [*lines, f"{pad}}}"]


def print_app_info(app_id):
    app = str(int(app_id))
    if app == "1090":
        emit(f"No app info for AppID {app} found, requesting...")
        return
    info = app_info(app)
    depot = str(int(app) + 1)
    block = {
        "common": {"name": f"Emulated Dedicated Server {app}", "type": "Tool",
                   "oslist": "windows,linux", "gameid": app},
        "config": {"installdir": f"emulated {app}", "launch": {"0": {
            "executable": "game/server.sh", "type": "default",
            "config": {"oslist": "linux"}}}},
        "depots": {
            depot: {"config": {"oslist": "linux"},
                    # a "public" that is no branch: a parser must follow depots → branches
                    "manifests": {"public": {"gid": "5396213741391547316", "size": "2730000",
                                             "download": "1100000"}}},
            "branches": info["branches"],
        },
    }
    last = time.strftime("%a %b %d %H:%M:%S %Y", time.gmtime(1700000000))
    emit(f"AppID : {app}, change number : {info['change']}/0, last change : {last}")
    for line in vdf(app, block, 0):
        emit(line, burst=True)


def manifest(app_id, buildid, branch):
    """appmanifest_<id>.acf as steamcmd writes it after an update."""
    depot = str(int(app_id) + 1)
    state = {
        "appid": app_id, "Universe": "1", "name": f"Emulated Dedicated Server {app_id}",
        "StateFlags": "4", "installdir": f"emulated {app_id}",
        "LastUpdated": str(int(time.time())), "LastPlayed": "0", "SizeOnDisk": "2730000",
        "StagingSize": "0", "buildid": buildid, "LastOwner": "0", "DownloadType": "1",
        "UpdateResult": "0", "BytesToDownload": "1100000", "BytesDownloaded": "1100000",
        "BytesToStage": "2730000", "BytesStaged": "2730000", "TargetBuildID": buildid,
        "AutoUpdateBehavior": "0", "AllowOtherDownloadsWhileRunning": "0",
        "ScheduledAutoUpdate": "0",
        "InstalledDepots": {depot: {"manifest": "5396213741391547316", "size": "2730000"}},
        "UserConfig": {} if branch == "public" else {"BetaKey": branch},
        "MountedConfig": {} if branch == "public" else {"BetaKey": branch},
    }
    return "\n".join(vdf("AppState", state, 0)) + "\n"


def install_files(directory, app_id):
    branch = BRANCH
    info = published(app_id)  # an update asks Steam afresh, and refreshes the cache
    cache_app(app_id, info)
    build = info["branches"].get(branch, info["branches"]["public"])["buildid"]
    os.makedirs(os.path.join(directory, "steamapps"), exist_ok=True)
    with open(os.path.join(directory, "steamapps", f"appmanifest_{app_id}.acf"), "w") as f:
        f.write(manifest(app_id, build, branch))
    os.makedirs(os.path.join(directory, "game"), exist_ok=True)
    script = os.path.join(directory, "game", "server.sh")
    game = os.environ.get("STEAMCMD_EMU_GAME", "echo no game")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nexec {game} \"$@\"\n")
    os.chmod(script, 0o755)
    exe = EXECUTABLES.get(str(app_id))
    if exe:  # the game's own executable, where a preset looks for it
        path = os.path.join(directory, exe)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(f"#!/bin/sh\nexec {game} \"$@\"\n")
        os.chmod(path, 0o755)
    with open(os.path.join(directory, "game", "version.txt"), "a") as f:
        f.write(f"installed {time.time()}\n")


def full_install(directory, app_id, validate, comma=False, cr=False, slow=0.0):
    total = 2730000
    if validate:
        progress("0x5", "verifying install", 50.0, total // 2, total, comma, cr)
    progress("0x3", "reconfiguring", 0.0, 0, 0, comma, cr)
    progress("0x11", "preallocating", 33.46, 843614, total, comma, cr)
    steps = [0.76, 12.5, 45.21, 45.21, 45.21, 80.0, 100.0]  # 45.21 three times: stalled
    for pct in steps:
        progress("0x61", "downloading", pct, int(total * pct / 100), total, comma, cr)
        if slow:
            time.sleep(slow / len(steps))
    progress("0x81", "verifying update", 98.16, total - 1000, total, comma, cr)
    progress("0x101", "committing", 8.62, 1000, total, comma, cr)
    install_files(directory, app_id)
    emit(f"Success! App '{app_id}' fully installed.")
    emit("Unloading Steam API...OK")


def main():
    global BRANCH
    args = sys.argv[1:]
    directory, app_id, validate, info_app = None, None, False, None
    logged_in = False
    i = 0
    while i < len(args):
        a = args[i]
        if a == "+force_install_dir":
            if logged_in:
                emit("Please use force_install_dir before logon!")
            directory = args[i + 1]
            i += 2
        elif a == "+login":
            logged_in = True
            i += 2
        elif a == "+app_update":
            app_id = args[i + 1]
            i += 2
            if i + 1 < len(args) and args[i] == "-beta":
                BRANCH = args[i + 1]
                i += 2
            if i < len(args) and args[i] == "validate":
                validate = True
                i += 1
        elif a in ("+app_info_update", "+app_info_print"):
            if a == "+app_info_print":
                info_app = args[i + 1]
            i += 2
        else:
            i += 1
    self_update()
    header()
    scenario = app_id or info_app
    if scenario == "1040":
        login(fail=True)
        return 5
    login()
    if app_id is not None and published(app_id)["fail"]:
        progress("0x61", "downloading", 10.0, 100, 1000)
        emit(f"Error! App '{app_id}' state is 0x202 after update job.")
        return 8
    if app_id is None and info_app is not None:
        if info_app == "1050":  # hangs
            time.sleep(3600)
        while info_app == "1095":  # prints without end
            emit("Waiting for app info... " * 10)
        print_app_info(info_app)
        emit("Unloading Steam API...OK")
        return 0
    if scenario == "1000" or (app_id is not None and app_id in EXECUTABLES):
        full_install(directory, app_id, validate)
    elif scenario == "1010":
        full_install(directory, app_id, validate, comma=True, cr=True)
    elif scenario == "1020":
        os.makedirs(HOME, exist_ok=True)
        running = os.path.join(HOME, f"running-{app_id}")
        try:
            fd = os.open(running, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            emit(f"ERROR! Failed to install app '{app_id}' (another steamcmd is running)")
            return 8
        try:
            full_install(directory, app_id, validate, slow=1.0)
        finally:
            os.close(fd)
            os.unlink(running)
    elif scenario == "1080":
        install_files(directory, app_id)
        emit(f"Success! App '{app_id}' already up to date.")
    elif scenario == "380870":
        emit(f"ERROR! Failed to install app '{app_id}' (No subscription)")
        return 8
    elif scenario == "222860":
        emit(f"ERROR! Failed to install app '{app_id}' (Invalid platform)")
        emit("Unloading Steam API...OK")
        return 0
    elif scenario == "740":
        progress("0x61", "downloading", 10.0, 100, 1000)
        emit(f"Error! App '{app_id}' state is 0x202 after update job.")
        return 8
    elif scenario == "1030":
        emit("ERROR! Timed out waiting for AppInfo update.")
        return 1
    elif scenario == "1050":
        progress("0x61", "downloading", 1.0, 10, 1000)
        time.sleep(3600)
    elif scenario == "1060":
        return 7
    elif scenario == "1070":
        return 0
    else:
        emit(f"ERROR! Failed to install app '{app_id}' (No subscription)")
        return 8
    return 0


if __name__ == "__main__":
    if os.environ.get("STEAMCMD_EMU_CHILD") != "1":
        # like steamcmd.sh, which runs linux32/steamcmd as its child with the same
        # arguments: killing only the first process would leave the real one running
        import subprocess

        child = subprocess.run([sys.executable, os.path.abspath(__file__), *sys.argv[1:]],
                               env={**os.environ, "STEAMCMD_EMU_CHILD": "1"}, check=False)
        sys.exit(child.returncode)
    sys.exit(main())
