"""An emulator of Valve's steamcmd for the tests, faithful to docs/steamcmd.md.

Called as `steamcmd +force_install_dir DIR +login anonymous +app_update ID validate +quit`;
like steamcmd.sh, the first process runs the one that does the work as its child.
What it does depends on the app id (see SCENARIOS). Output comes in bursts with partial
lines, some lines end in a bare '\\r', a stalled download repeats its line, and the first run
in a STEAMCMD_EMU_HOME self-updates first. STEAMCMD_EMU_GAME is the command the installed
`game/server.sh` runs.
"""

import os
import sys
import time

HOME = os.environ.get("STEAMCMD_EMU_HOME", "/tmp/steamcmd-emu")
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


def install_files(directory, app_id):
    os.makedirs(os.path.join(directory, "steamapps"), exist_ok=True)
    with open(os.path.join(directory, "steamapps", f"appmanifest_{app_id}.acf"), "w") as f:
        f.write(f'"AppState"\n{{\n\t"appid"\t\t"{app_id}"\n}}\n')
    os.makedirs(os.path.join(directory, "game"), exist_ok=True)
    script = os.path.join(directory, "game", "server.sh")
    game = os.environ.get("STEAMCMD_EMU_GAME", "echo no game")
    with open(script, "w") as f:
        f.write(f"#!/bin/sh\nexec {game} \"$@\"\n")
    os.chmod(script, 0o755)
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
    args = sys.argv[1:]
    directory, app_id, validate = None, None, False
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
            if i < len(args) and args[i] == "validate":
                validate = True
                i += 1
        else:
            i += 1
    self_update()
    header()
    scenario = app_id
    if scenario == "1040":
        login(fail=True)
        return 5
    login()
    if scenario == "1000":
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
