"""What a reload changes: the difference between the running site and settings and the new
ones (pure: no I/O, nothing applied here)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from buildingd.config.loader import Site
from buildingd.settings import Settings

# Settings a running daemon applies on reload. Everything else (site_dir, state_dir, speed,
# the MQTT, InfluxDB, HTTP bind, BLE and simulator sections) is wired into connections, files
# and clocks at start: a change is reported as needing a restart and the old value stays.
LIVE_SETTINGS = frozenset({"log_level", "http.token_file"})


@dataclass(frozen=True)
class ReloadPlan:
    devices_stop: list[str] = field(default_factory=list)  # removed or changed
    devices_start: list[str] = field(default_factory=list)  # added or changed
    zones_stop: list[str] = field(default_factory=list)
    zones_start: list[str] = field(default_factory=list)
    policies_changed: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not (
            self.devices_stop
            or self.devices_start
            or self.zones_stop
            or self.zones_start
            or self.policies_changed
        )

    def describe(self) -> str:
        parts = []
        for label, items in (
            ("devices stopped", self.devices_stop),
            ("devices started", self.devices_start),
            ("zones stopped", self.zones_stop),
            ("zones started", self.zones_start),
            ("policies changed", self.policies_changed),
        ):
            if items:
                parts.append(f"{label}: {', '.join(items)}")
        return "; ".join(parts) or "nothing changed"


def plan_reload(old: Site, new: Site) -> ReloadPlan:
    changed = [d for d in old.devices if d in new.devices and old.devices[d] != new.devices[d]]
    removed = [d for d in old.devices if d not in new.devices]
    added = [d for d in new.devices if d not in old.devices]
    zones_changed = [z for z in old.zones if z in new.zones and old.zones[z] != new.zones[z]]
    policies = sorted(
        {p for p in new.policies if old.policies.get(p) != new.policies[p]}
        | {p for p in old.policies if p not in new.policies}
    )
    return ReloadPlan(
        devices_stop=removed + changed,
        devices_start=changed + added,
        zones_stop=[z for z in old.zones if z not in new.zones],
        zones_start=[z for z in new.zones if z not in old.zones],
        policies_changed=policies + [f"zone {z}" for z in zones_changed],
    )


@dataclass(frozen=True)
class SettingsChange:
    live: list[str] = field(default_factory=list)  # applied by the reload
    restart: list[str] = field(default_factory=list)  # changed, but only a restart applies them

    def merged(self, running: Settings, new: Settings) -> Settings:
        """The settings the daemon runs with after the reload: ``running`` with the live keys
        taken from ``new``."""
        out: BaseModel = running
        for key in self.live:
            out = _replace(out, key.split("."), _get(new, key.split(".")))
        assert isinstance(out, Settings)
        return out


def diff_settings(running: Settings, new: Settings) -> SettingsChange:
    """Dotted keys whose values differ, split into live ones and ones needing a restart."""
    changed = _changed_keys(running, new, ())
    return SettingsChange(
        live=[k for k in changed if k in LIVE_SETTINGS],
        restart=[k for k in changed if k not in LIVE_SETTINGS],
    )


def _changed_keys(old: BaseModel, new: BaseModel, prefix: tuple[str, ...]) -> list[str]:
    out = []
    for name in type(old).model_fields:
        a, b = getattr(old, name), getattr(new, name)
        if isinstance(a, BaseModel) and isinstance(b, BaseModel):
            out.extend(_changed_keys(a, b, (*prefix, name)))
        elif a != b:  # SecretStr compares its secret, so a changed password is seen
            out.append(".".join((*prefix, name)))
    return out


def _get(model: BaseModel, path: list[str]) -> Any:
    value: Any = model
    for name in path:
        value = getattr(value, name)
    return value


def _replace(model: BaseModel, path: list[str], value: Any) -> BaseModel:
    head, *rest = path
    if rest:
        value = _replace(getattr(model, head), rest, value)
    return model.model_copy(update={head: value})
