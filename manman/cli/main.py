"""The `manman` command: host | worker | up, and the client verbs."""

from __future__ import annotations

import argparse
import errno
import logging
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import trio

from manman import __version__, errors
from manman.config import Config, ConfigError, load_config


def _die(message: str, code: int = 1) -> int:
    print(f"manman: {message}", file=sys.stderr)
    return code


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("hypercorn.error", "httpx", "httpcore", "asyncio", "trio-websocket",
                  "pgserver"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _run_service(fn: Callable[..., Awaitable[None]], cfg: Config) -> int:
    from manman import aio
    from manman.limits import raise_open_files

    raise_open_files()  # before the first socket; logged once the service is up

    async def main() -> None:
        async with aio.open_loop():
            await fn(cfg, handle_signals=True)

    try:
        trio.run(main)
    except BaseException as e:  # sorted below: a failure an operator can fix is one line
        message = _startup_failure(e)
        if message is None:
            raise
        return _die(message) if message else 0
    return 0


def _leaves(e: BaseException) -> list[BaseException]:
    if isinstance(e, BaseExceptionGroup):
        return [leaf for sub in e.exceptions for leaf in _leaves(sub)]
    return [e]


def _startup_failure(e: BaseException) -> str | None:
    """One line for a failure an operator can fix (a StartupError: a database it cannot
    reach…; a port in use, a directory it cannot write); "" for Ctrl-C; None for a bug (its
    traceback)."""
    leaves = [leaf for leaf in _leaves(e) if not isinstance(leaf, trio.Cancelled)]
    if not leaves or all(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        return ""
    leaf = next(leaf for leaf in leaves if not isinstance(leaf, KeyboardInterrupt))
    if isinstance(leaf, errors.StartupError):
        return leaf.message
    if isinstance(leaf, OSError):
        if leaf.errno == errno.EADDRINUSE:
            return ("cannot listen: address already in use (see host.listen / worker.listen, "
                    "or another manman is running)")
        return f"cannot start: {leaf.strerror or leaf}" + (
            f": {leaf.filename}" if leaf.filename else "")
    return None


def cmd_worker(args: argparse.Namespace, cfg: Config) -> int:
    from manman.worker.main import run_worker

    _setup_logging(args.verbose)
    return _run_service(run_worker, cfg)


def cmd_host(args: argparse.Namespace, cfg: Config) -> int:
    from manman.host.main import run_host

    _setup_logging(args.verbose)
    return _run_service(run_host, cfg)


def cmd_up(args: argparse.Namespace, cfg: Config) -> int:
    from manman.host.main import run_up

    _setup_logging(args.verbose)
    return _run_service(run_up, cfg)


def _common(client: bool, keep_unset: bool = False) -> argparse.ArgumentParser:
    """The options every command takes; keep_unset: a sub-command's, which must not reset
    what its group already parsed (`manman server --token T show x`)."""
    unset = argparse.SUPPRESS if keep_unset else None
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=unset,
                        help="config file (default: ./config.toml when present)")
    if client:
        common.add_argument("--host-url", default=unset,
                            help="the host API (default: from the config)")
        common.add_argument("--token", default=unset,
                            help="admin token (default: from env or the host data dir)")
    common.add_argument("-v", "--verbose", action="store_true",
                        default=unset if keep_unset else False, help="debug logging")
    return common


def build_parser() -> argparse.ArgumentParser:
    service = _common(client=False)
    parser = argparse.ArgumentParser(prog="manman", description="Run dedicated game servers.")
    parser.add_argument("--version", action="version", version=f"manman {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("host", parents=[service], help="run the control plane").set_defaults(
        func=cmd_host)
    sub.add_parser("worker", parents=[service], help="run the agent of this machine"
                   ).set_defaults(func=cmd_worker)
    sub.add_parser("up", parents=[service], help="host + worker in one process, no set-up"
                   ).set_defaults(func=cmd_up)
    from manman.cli.verbs import add_client_commands

    add_client_commands(sub, _common(client=True), _common(client=True, keep_unset=True))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    path = args.config
    if path is None and Path("config.toml").is_file():
        path = "config.toml"
    try:
        cfg = load_config(path, os.environ)
    except ConfigError as e:
        return _die(str(e))
    try:
        return int(args.func(args, cfg))
    except KeyboardInterrupt:
        return 0
