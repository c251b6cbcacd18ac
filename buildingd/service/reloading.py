"""Applying a reload to the running daemon (SIGHUP or ``POST /api/reload``). Settings, token
and site are read and validated in a worker thread, off the event loop; only the difference
(``reload.plan_reload``) is applied on the loop, one agent at a time, yielding between steps
so readings, the watchdog and the API keep being served while a large site reloads."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from buildingd.config.loader import Site, load_site, no_collector_passes
from buildingd.errors import ConfigError
from buildingd.service.gateway import runs_device, runs_zone
from buildingd.service.reload import ReloadPlan, diff_settings, plan_reload
from buildingd.settings import Settings

if TYPE_CHECKING:
    from buildingd.service.app import Daemon

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _ReadBack:
    """What the worker thread read, validated, and planned."""

    settings: Settings
    token: str | None
    site: Site
    plan: ReloadPlan


def read_token(settings: Settings) -> str | None:
    path = settings.http.token_file
    if path is None:
        return None
    return path.read_text(encoding="utf-8").strip() or None


class Reloader:
    """Runs reloads one at a time and keeps their outcome for STATUS=, /metrics and the API.
    Settings are re-read with ``Daemon.settings_loader`` (see ``Daemon``)."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.counts = {"ok": 0, "failed": 0}
        # The first problem of the last refused reload, shown in STATUS= until one succeeds.
        self.problem: str | None = None
        # Changed settings that only a restart applies (shown in STATUS= until then).
        self.restart_needed: list[str] = []
        self._requested = asyncio.Event()
        self._one_at_a_time = asyncio.Lock()  # SIGHUP and the API may ask at once

    def request(self) -> None:
        """SIGHUP: the reloader task (owned by the daemon's task group) does the work."""
        self._requested.set()

    async def serve(self) -> None:
        """Runs each requested reload. Nothing a reload raises may reach the daemon's task
        group (that would stop the daemon and leave the building uncontrolled)."""
        while True:
            await self._requested.wait()
            self._requested.clear()
            try:
                await self.reload()
            except Exception as err:
                log.exception("reload failed while applying it")
                await self._failed([f"reload: {type(err).__name__}: {err}"])

    async def reload(self) -> dict[str, object]:
        """Re-read settings and site; apply only what changed, or keep everything as it was.

        Everything is validated before anything is applied. Settings that can change live
        (``reload.LIVE_SETTINGS``: the log level, the HTTP token) are applied; other changed
        settings are reported as needing a restart and keep their running values, the site
        directory included (the site is re-read from the running one)."""
        async with self._one_at_a_time:
            # No collector pass during the reload: the new site and agents (hundreds of thousands
            # of objects at 1,000 zones) all stay alive, yet each pass that the reload's
            # allocations trigger walks them again, and a full one the whole heap, holding the
            # GIL and so the loop for 100s of ms. What a reload leaves behind is freed by
            # reference counting (the supervisor breaks a stopped agent's cycle); a failed
            # reload's leftovers are collected as usual once the collector is back on.
            with no_collector_passes():
                return await self._reload()

    def _read(self, running: Settings, old_site: Site) -> _ReadBack:
        """In a worker thread: everything that parses, validates or compares (nothing here
        touches a running agent)."""
        daemon = self.daemon
        loader = daemon.settings_loader
        settings = running if loader is None else loader()
        token = read_token(settings) if daemon.http is not None else None
        site = load_site(running.site_dir)
        if daemon.building is not None:
            from buildingd.sim.servers import relocate_simulated

            relocate_simulated(site, daemon.sim_gateways)  # changes only the new site
        return _ReadBack(settings, token, site, plan_reload(old_site, site))

    async def _reload(self) -> dict[str, object]:
        daemon = self.daemon
        daemon.notifier.reloading()
        try:
            got = await asyncio.to_thread(self._read, daemon.settings, daemon.site)
        except ConfigError as err:
            return await self._failed([str(p) for p in err.problems])
        except (ValueError, OSError) as err:
            return await self._failed([f"settings: {err}"])
        except Exception as err:  # noqa: BLE001  load_site raises only ConfigError; last guard
            return await self._failed([f"reload: {type(err).__name__}: {err}"])
        change = diff_settings(daemon.settings, got.settings)
        applied = self._apply_live_settings(change.merged(daemon.settings, got.settings), got.token)
        self.restart_needed = change.restart
        if change.restart:
            log.warning(
                "settings changed that need a restart to take effect (running with the "
                "previous values): %s",
                ", ".join(change.restart),
            )
        await self._apply(got.site, got.plan)
        for callback in daemon.on_reloaded:  # ``buildingd run``: gc.freeze, for the new site
            callback()
        self.counts["ok"] += 1
        daemon.metrics.inc("buildingd_reloads_total", result="ok")
        daemon.metrics.set("buildingd_config_reload_ok", 1.0)
        self.problem = None
        described = got.plan.describe()
        if applied:
            described += f"; settings applied: {', '.join(applied)}"
        if change.restart:
            described += f"; restart needed for: {', '.join(change.restart)}"
        log.info("reloaded: %s", described)
        await daemon.event(
            "reload", "warning" if change.restart else "info", f"reloaded: {described}"
        )
        daemon.notifier.ready(daemon.status_summary())
        return {
            "ok": True,
            "changes": got.plan.describe(),
            "settings_applied": applied,
            "restart_needed": change.restart,
        }

    async def _apply(self, site: Site, plan: ReloadPlan) -> None:
        """The plan, on the loop, one agent at a time: each step yields, so a reload of
        hundreds of zones never holds the loop for longer than one agent's start or stop."""
        daemon = self.daemon
        daemon.site = site
        daemon.ctx.site = site
        sup = daemon.supervisor
        assert sup is not None
        for device_id in plan.devices_stop:
            await sup.stop(f"device[{device_id}]")
            daemon.device_agents.pop(device_id, None)
            await asyncio.sleep(0)
        for zone_id in plan.zones_stop:
            await sup.stop(f"zone[{zone_id}]")
            daemon.zone_agents.pop(zone_id, None)
            await asyncio.sleep(0)
        for zone_id in plan.zones_start:
            if runs_zone(site, daemon.settings, zone_id):  # this gateway's share
                await daemon.start_zone(zone_id)
            await asyncio.sleep(0)
        for agent in list(daemon.zone_agents.values()):
            agent.rebind()
            await asyncio.sleep(0)
        for device_id in plan.devices_start:
            if runs_device(site, daemon.settings, device_id):
                await daemon.start_device(device_id)
            await asyncio.sleep(0)

    def _apply_live_settings(self, settings: Settings, token: str | None) -> list[str]:
        """Switch to ``settings`` (only live keys differ from the running ones); returns what
        changed, for the journal."""
        daemon = self.daemon
        applied = []
        if settings.log_level != daemon.settings.log_level:
            set_log_level(settings.log_level)
            applied.append(f"log_level={settings.log_level}")
        if daemon.http is not None and token != daemon.http.token:
            daemon.http.token = token  # a rotated token file takes effect at once
            applied.append("http token" if token is not None else "http token (writes off)")
        daemon.settings = settings
        return applied

    async def _failed(self, problems: list[str]) -> dict[str, object]:
        daemon = self.daemon
        self.counts["failed"] += 1
        daemon.metrics.inc("buildingd_reloads_total", result="failed")
        daemon.metrics.set("buildingd_config_reload_ok", 0.0)
        self.problem = problems[0] if problems else "unknown problem"
        for problem in problems:
            log.error("reload refused, keeping the running configuration: %s", problem)
        await daemon.event("reload-failed", "error", "reload refused: " + "; ".join(problems[:5]))
        daemon.notifier.ready(f"reload failed: {problems[0]}"[:200])
        return {"ok": False, "errors": problems}


def set_log_level(level: str) -> None:
    """Change the log level of a running daemon, as ``journal.setup_logging`` sets it at start
    (chatty libraries stay at warnings above debug; audit lines pass whatever the level)."""
    from buildingd.audit import audit_log
    from buildingd.service.journal import LEVELS, QUIET_LOGGERS

    levelno = LEVELS[level]
    logging.getLogger().setLevel(levelno)
    for name in QUIET_LOGGERS:
        logging.getLogger(name).setLevel(
            logging.NOTSET if levelno <= logging.DEBUG else logging.WARNING
        )
    audit_log.setLevel(logging.INFO)
