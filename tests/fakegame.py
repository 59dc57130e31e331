#!/usr/bin/env python3
"""A fake game server for the tests: a real process with a game-like console.

stdin commands: `say X` → "said: X"; `echo X` → X; `lines A|B` → A and B in one write;
`err X` → X on stderr; `quit` (`stop`,
`exit`) → exits 0 (unless --ignore-stop); `crash [N]` → exits N (3); `flood N` → N numbered
lines at full speed; `pace N RATE` → N lines at RATE/s; `hang` → stops answering; `spawn` →
starts a child that sleeps (tests group kill); `pid` → prints its pid and its child's;
`fill N NAME` → appends N bytes to the file NAME in its working directory.
SIGTERM exits 0 unless --ignore-term; SIGINT always exits 0.
"""

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# a game's own arguments (a preset's `-port 2456 +map x`) are taken and ignored
p = argparse.ArgumentParser(allow_abbrev=False)
p.add_argument("--ready-after", type=float, default=0.0)
p.add_argument("--ready-line", default="Server ready")
p.add_argument("--no-ready", action="store_true")
p.add_argument("--ignore-stop", action="store_true")
p.add_argument("--ignore-term", action="store_true")
p.add_argument("--crash-after", type=float, default=None)
p.add_argument("--exit-code", type=int, default=3)
p.add_argument("--tcp-port", type=int, default=None)
p.add_argument("--flood", type=int, default=0)
p.add_argument("--child", action="store_true")
p.add_argument("--banner", default="fakegame starting")
args, _ = p.parse_known_args()

out = sys.stdout
children = []
listener = None


def say(text, stream=out):
    stream.write(text + "\n")
    stream.flush()


def on_term(signum, frame):
    if args.ignore_term:
        say("ignoring SIGTERM")
        return
    say("got SIGTERM, bye")
    os._exit(0)


def on_int(signum, frame):
    # like a game that reads no stdin (Valheim): Ctrl-C saves and exits
    say("got SIGINT, saving, bye")
    os._exit(0)


signal.signal(signal.SIGTERM, on_term)
signal.signal(signal.SIGINT, on_int)
say(args.banner)
say(f"cwd={os.getcwd()} pid={os.getpid()}")
if args.tcp_port:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", args.tcp_port))
    listener.listen(16)

    def accept_loop():
        while True:
            try:
                c, _ = listener.accept()
                c.close()
            except OSError:
                return

    threading.Thread(target=accept_loop, daemon=True).start()
if args.child:
    children.append(subprocess.Popen(["sleep", "1000"]))
if args.flood:
    out.write("".join(f"flood {i}\n" for i in range(args.flood)))
    out.flush()
if args.crash_after is not None:
    def crash():
        say(f"crashing with {args.exit_code}")
        os._exit(args.exit_code)

    threading.Timer(args.crash_after, crash).start()
if not args.no_ready:
    if args.ready_after:
        threading.Timer(args.ready_after, lambda: say(args.ready_line)).start()
    else:
        say(args.ready_line)

for raw in sys.stdin:
    line = raw.rstrip("\n")
    cmd, _, rest = line.partition(" ")
    if cmd == "say":
        say(f"said: {rest}")
    elif cmd == "echo":
        say(rest)
    elif cmd == "lines":  # lines A|B|C: several lines in one write (one read for the worker)
        say("\n".join(rest.split("|")))
    elif cmd == "err":
        say(rest, sys.stderr)
    elif cmd in ("quit", "stop", "exit"):  # the stop commands of the shipped presets
        if args.ignore_stop:
            say("ignoring stop")
            continue
        say("stopping")
        sys.exit(0)
    elif cmd == "crash":
        say("crashing")
        os._exit(int(rest or args.exit_code))
    elif cmd == "flood":
        n = int(rest)
        out.write("".join(f"flood {i}\n" for i in range(n)))
        out.flush()
    elif cmd == "pace":  # pace N RATE: N numbered lines at RATE lines/s, in chunks of 1000
        n, rate = rest.split()
        n, rate = int(n), float(rate)
        start = time.monotonic()
        for i in range(0, n, 1000):
            out.write("".join(f"paced {j}\n" for j in range(i, min(n, i + 1000))))
            out.flush()
            ahead = start + (i + 1000) / rate - time.monotonic()
            if ahead > 0:
                time.sleep(ahead)
    elif cmd == "wide":  # wide N SIZE: N numbered lines of SIZE characters
        n, size = (int(x) for x in rest.split())
        for i in range(n):
            head = f"wide {i} "
            out.write(head + "x" * (size - len(head)) + "\n")
        out.flush()
    elif cmd == "fill":  # fill N NAME: writes N bytes to NAME in its working directory
        n, name = rest.split(maxsplit=1)
        with open(name, "ab") as f:
            f.write(os.urandom(int(n)))
        say(f"filled {name}")
    elif cmd == "hang":
        while True:
            time.sleep(3600)
    elif cmd == "spawn":
        children.append(subprocess.Popen(["sleep", "1000"]))
        say(f"child {children[-1].pid}")
    elif cmd == "spawn-detached":  # a child in a session of its own (leaves the group)
        children.append(subprocess.Popen(["sleep", "1000"], start_new_session=True))
        say(f"child {children[-1].pid}")
    elif cmd == "pid":
        say(f"pid {os.getpid()} children {' '.join(str(c.pid) for c in children)}")
    elif cmd == "close-port":
        if listener:
            listener.close()
        say("port closed")
    else:
        say(f"unknown command: {line}")
# stdin closed: keep running like a real server would
while True:
    time.sleep(3600)
