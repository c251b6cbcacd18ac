"""Protocol-specific checks of a device beyond its schema (overlapping addresses, ...).

Each check returns ``(key path inside the device, message)`` pairs; pure, no I/O.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from buildingd.config.devices import DeviceSpec

Problem = tuple[tuple[str | int, ...], str]
Check = Callable[[DeviceSpec], Iterable[Problem]]

_CHECKS: dict[str, Check] = {}


def register_check(driver: str) -> Callable[[Check], Check]:
    def wrap(fn: Check) -> Check:
        _CHECKS[driver] = fn
        return fn

    return wrap


def check_device(device: DeviceSpec) -> list[Problem]:
    _load_protocol_checks()
    check = _CHECKS.get(device.driver)
    return list(check(device)) if check is not None else []


def _load_protocol_checks() -> None:
    # Pure check modules register themselves on import; they import no protocol library.
    import importlib

    for name in (
        "buildingd.drivers.modbus_plan",
        "buildingd.drivers.ble_checks",
        "buildingd.drivers.bacnet_plan",
    ):
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:
                raise
