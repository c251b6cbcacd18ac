"""``driver: sim``: devices of the simulated building, read and written like real hardware.

The building is advanced lazily to the clock's time whenever a device reads or writes it.
"""

from __future__ import annotations

from collections.abc import Mapping

from buildingd.drivers.base import Driver
from buildingd.errors import DeviceError, DeviceUnavailableError
from buildingd.points import Sample
from buildingd.sim.building import Building


class SimDriver(Driver):
    async def open(self) -> None:
        if self.ctx.building is None:
            raise DeviceError("no simulated building is running", device_id=self.device.id)

    async def close(self) -> None:
        return None

    def _building(self) -> Building:
        building = self.ctx.building
        if building is None:
            raise DeviceUnavailableError("simulator stopped", device_id=self.device.id)
        building.advance_to(self.ctx.clock.now())
        return building

    async def read(self) -> Mapping[str, Sample]:
        building = self._building()
        now = self.ctx.clock.monotonic()
        out: dict[str, Sample] = {}
        for point in self.device.points_list():
            if building.sensor_failed(point.zone, point.kind):
                raise DeviceUnavailableError(
                    "no answer (simulated sensor failure)",
                    device_id=self.device.id,
                    point_id=point.id,
                )
            out[point.id] = Sample(building.read_point(point.zone, point.kind), now)
        return out

    async def write(self, point_id: str, value: float) -> float:
        building = self._building()
        point = next(p for p in self.device.points_list() if p.id == point_id)
        building.write_point(point.zone, point.kind, value)
        return float(building.read_point(point.zone, point.kind))
