"""The ``buildingd`` command line: run, check, status, kpi, evaluate."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from buildingd.errors import ConfigError, StartupError

if TYPE_CHECKING:
    from buildingd.settings import Settings

log = logging.getLogger("buildingd")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", type=Path, help="settings file (default /etc/buildingd/buildingd.toml)"
    )
    p.add_argument("--site", type=Path, help="site directory with site.yaml, devices/, policies/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="buildingd", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run the daemon")
    _common(run)
    run.add_argument("--duration", type=float, help="stop after this many seconds")
    run.add_argument("--speed", type=float, help="simulated seconds per second (simulator only)")
    run.add_argument("--start", help="simulation start: now, workday, or an ISO date-time")
    run.add_argument("--state-dir", type=Path)
    run.add_argument("--no-console", action="store_true", help="plain log lines even on a terminal")

    check = sub.add_parser("check", help="validate settings, device and policy files")
    _common(check)
    check.add_argument("--verbose", "-v", action="store_true", help="also print poll plans")

    kpi = sub.add_parser("kpi", help="compute KPIs of a trajectory CSV", add_help=False)
    kpi.add_argument("args", nargs=argparse.REMAINDER)

    evaluate = sub.add_parser(
        "evaluate", help="compare buildingd with a baseline in simulation", add_help=False
    )
    evaluate.add_argument("args", nargs=argparse.REMAINDER)

    status = sub.add_parser("status", help="show the running daemon", add_help=False)
    status.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _settings(args: argparse.Namespace, **overrides: object) -> Settings:
    """Settings from ``--config`` (or the default file), the environment and the options in
    ``args``; raises ``ConfigError`` with located problems. The daemon calls it again on
    reload, so a reload reads exactly what the start read."""
    from buildingd.settings import load_settings

    if getattr(args, "site", None) is not None:
        overrides["site_dir"] = args.site
    settings = load_settings(args.config, **overrides)
    start = getattr(args, "start", None)
    if start is not None:
        settings = settings.model_copy(
            update={"sim": settings.sim.model_copy(update={"start": start})}
        )
    return settings


def _print_problems(err: ConfigError) -> None:
    for problem in err.problems:
        print(problem, file=sys.stderr)
    print(f"{len(err.problems)} problem(s) found", file=sys.stderr)


def cmd_check(args: argparse.Namespace) -> int:
    from buildingd.config.loader import load_site
    from buildingd.settings import gateway_id_problems, secret_file_problems

    try:
        settings = _settings(args)
    except ConfigError as err:
        _print_problems(err)
        return 1
    problems = secret_file_problems(settings, args.config)
    try:
        site = load_site(settings.site_dir)
    except ConfigError as err:
        problems += err.problems
    else:
        problems += gateway_id_problems(settings, site.gateways, args.config)
    if problems:  # every problem of every file, settings first
        _print_problems(ConfigError(problems))
        return 1
    if args.verbose:
        from buildingd.clock import SystemClock
        from buildingd.drivers.base import DriverContext, create_driver

        ctx = DriverContext(clock=SystemClock())
        for device in site.devices.values():
            lines = create_driver(device, ctx).describe()
            if lines:
                print(f"{device.id} ({device.driver}):")
                for line in lines:
                    print(f"  {line}")
    print(f"ok: {site.summary()}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from buildingd.config.loader import load_site
    from buildingd.service.app import Daemon, state_dir_usable
    from buildingd.service.console import show
    from buildingd.service.stopping import ExitWatchdog, run_bounded

    overrides: dict[str, object] = {}
    if args.speed is not None:
        overrides["speed"] = args.speed
    if args.state_dir is not None:
        overrides["state_dir"] = args.state_dir
    from buildingd.settings import secret_file_problems

    try:
        settings = _settings(args, **overrides)
        site = load_site(settings.site_dir)
    except ConfigError as err:
        _print_problems(err)
        return 1
    secrets = secret_file_problems(settings, args.config)
    if secrets:  # the daemon would fail at its first HTTP start: say so before starting
        _print_problems(ConfigError(secrets))
        return 1
    _setup_logging(settings.log_level)
    if not state_dir_usable(settings.state_dir):
        print(f"state directory {settings.state_dir} is not writable", file=sys.stderr)
        return 1
    if settings.nats.enabled:
        from buildingd.nats.seal import load_or_create_key
        from buildingd.settings import bus_key_path

        try:
            load_or_create_key(bus_key_path(settings))  # created now, or refused with a reason
        except ConfigError as err:
            _print_problems(err)
            return 1
    duration = args.duration
    if duration is None and os.environ.get("BUILDINGD_DURATION"):
        duration = float(os.environ["BUILDINGD_DURATION"])
    if duration is None:
        duration = settings.duration_s
    console = sys.stdout.isatty() and not args.no_console

    watchdog = ExitWatchdog()

    async def main() -> None:
        daemon = Daemon(settings, site, settings_loader=lambda: _settings(args, **overrides))
        daemon.on_stopping.append(watchdog.arm)
        # What start-up built (modules, site, agents) lives as long as the process: out of the
        # cyclic collector's full passes, which otherwise stall the loop for 100s of ms on a
        # large site (bench/bench_reload.py). What a reload built joins it; what a reload
        # replaced is freed by reference counting, frozen or not (service/reloading.py).
        daemon.on_ready.append(gc.freeze)
        daemon.on_reloaded.append(gc.freeze)
        daemon.on_stopping.append(gc.unfreeze)
        async with asyncio.TaskGroup() as tg:
            view = tg.create_task(
                show(daemon, sys.stdout if console else _NullTTY()), name="console"
            )
            try:
                summary = await daemon.run(duration)
            finally:
                view.cancel()
        for line in summary.lines():
            print(line)

    try:
        run_bounded(main())
    except (StartupError, BaseExceptionGroup) as err:
        found = _startup_errors(err)
        if not found:
            raise
        for problem in found:  # one line each, no traceback: what is wrong, where to change it
            print(f"buildingd: {problem}", file=sys.stderr)
        return 1
    finally:
        watchdog.disarm()
    return 0


def _startup_errors(err: BaseException) -> list[StartupError]:
    """The ``StartupError``s in ``err``, however deep in task groups' exception groups."""
    if isinstance(err, StartupError):
        return [err]
    if isinstance(err, BaseExceptionGroup):
        return [found for inner in err.exceptions for found in _startup_errors(inner)]
    return []


class _NullTTY:
    def isatty(self) -> bool:
        return False

    def write(self, text: str, /) -> int:
        return len(text)

    def flush(self) -> None:
        return None


def _setup_logging(level: str) -> None:
    try:
        from buildingd.service.journal import setup_logging
    except ImportError:
        logging.basicConfig(
            level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
        return
    setup_logging(level)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Sub-commands with their own parsers get their arguments untouched (argparse's REMAINDER
    # does not pass on options that come first, like ``evaluate --days 7``).
    if argv and argv[0] == "kpi":
        from buildingd.kpi import kpi_main

        return kpi_main(argv[1:])
    if argv and argv[0] == "evaluate":
        from buildingd.evaluate import evaluate_main

        return evaluate_main(argv[1:])
    if argv and argv[0] == "status":
        from buildingd.service.status import status_main

        return status_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return cmd_check(args)
    if args.command == "run":
        return cmd_run(args)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
