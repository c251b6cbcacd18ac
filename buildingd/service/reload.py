"""What a reload changes: the difference between the running site and the new one (pure)."""

from __future__ import annotations

from dataclasses import dataclass, field

from buildingd.config.loader import Site


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
