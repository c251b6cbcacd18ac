"""``buildingd check`` for BLE devices beyond the schema: each point fits its device's format
(advertisement fields that format carries, GATT points with a characteristic and a type). Pure."""

from __future__ import annotations

from buildingd.config.ble import FORMAT_FIELDS, BleDevice
from buildingd.config.devices import DeviceSpec
from buildingd.drivers.ble_codecs import UNITS, base_name
from buildingd.drivers.checks import Problem, register_check


@register_check("ble")
def check_ble_device(device: DeviceSpec) -> list[Problem]:
    if not isinstance(device, BleDevice):
        return []
    problems: list[Problem] = []
    for k, point in enumerate(device.points):
        at: tuple[str | int, ...] = ("points", k)
        if device.format == "gatt":
            for key in ("characteristic", "type"):
                if getattr(point, key) is None:
                    problems.append(((*at, key), f"a GATT point needs {key}"))
            if point.field is not None:
                problems.append(((*at, "field"), "field is for advertisement formats"))
            continue
        for key in ("characteristic", "type"):
            if getattr(point, key) is not None:
                problems.append(((*at, key), f"{key} needs format: gatt"))
        if point.notify:
            problems.append(((*at, "notify"), "notify needs format: gatt"))
        if point.writable:
            problems.append(((*at, "writable"), "advertisements are read-only"))
        name = point.value_name
        if name is None:
            problems.append(((*at, "field"), f"set field (there is no default for {point.kind})"))
            continue
        known = FORMAT_FIELDS.get(device.format)
        if known is None:  # BTHome: any quantity the format defines
            if base_name(name) not in UNITS:
                problems.append(((*at, "field"), f"BTHome defines no {name!r}"))
        elif name not in known:
            problems.append(
                (
                    (*at, "field"),
                    f"{device.format} has no {name!r} (one of {', '.join(sorted(known))})",
                )
            )
    return problems
