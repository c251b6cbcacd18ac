"""Modbus TCP devices for tests that count and time requests on the device side: a libmodbus
device (tests/modbus_device.c, built here with gcc: a stack that is not the client's) and a
pymodbus one, both answering 0 from 10,000 registers and refusing chosen address ranges with
exception 02. Each records every request: function code, address, count, arrival time
(``time.monotonic()``, the clock the C program reads too)."""

from __future__ import annotations

import asyncio
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from tests.conftest import free_port
from tests.servers import need

SOURCE = Path(__file__).with_name("modbus_device.c")
READS = (1, 2, 3, 4)


@dataclass(frozen=True)
class DeviceRequest:
    function: int
    address: int
    count: int  # the value for functions 5 and 6
    at_s: float  # time.monotonic() when the device received it


class RecordingDevice(Protocol):
    port: int

    def requests(self) -> list[DeviceRequest]: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


def build_device(out_dir: Path) -> Path:
    """Compile the libmodbus device into ``out_dir`` (fails if gcc or libmodbus-dev is missing)."""
    binary = out_dir / "modbus_device"
    flags = subprocess.run([need("pkg-config"), "--cflags", "--libs", "libmodbus"],
                           capture_output=True, text=True, check=True).stdout.split()  # fmt: skip
    subprocess.run([need("gcc"), "-O2", "-Wall", "-o", str(binary), str(SOURCE), *flags],
                   check=True)  # fmt: skip
    return binary


class LibmodbusDevice:
    """The C device; its request lines go to a file, written before each answer, so reading the
    file after an answer sees that request (no reader to catch up with)."""

    def __init__(self, binary: Path, log: Path, refused: list[tuple[int, int]] | None = None):
        self.binary, self.log, self.refused = binary, log, refused or []
        self.port = free_port()
        self._proc: asyncio.subprocess.Process | None = None

    def requests(self) -> list[DeviceRequest]:
        out = []
        for line in self.log.read_text().splitlines():
            fn, address, count, at_s = line.split()
            out.append(DeviceRequest(int(fn), int(address), int(count), float(at_s)))
        return out

    async def start(self) -> None:
        ranges = [f"{a}-{b}" for a, b in self.refused]
        with self.log.open("w") as log:
            self._proc = await asyncio.create_subprocess_exec(
                str(self.binary), str(self.port), *ranges,
                stdout=log, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
        assert self._proc.stderr is not None
        async with asyncio.timeout(10):
            said = await self._proc.stderr.readline()
        if not said.startswith(b"listening"):
            raise RuntimeError(f"the libmodbus device did not start: {said!r}")

    async def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            await self._proc.wait()


class PymodbusDevice:
    def __init__(self, refused: list[tuple[int, int]] | None = None) -> None:
        self.refused = refused or []
        self.port = free_port()
        self._seen: list[DeviceRequest] = []
        self._server: Any = None

    def requests(self) -> list[DeviceRequest]:
        return list(self._seen)

    async def start(self) -> None:
        from pymodbus.constants import ExcCodes
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        async def record(function_code: int, _start: int, address: int, count: int,
                         _registers: list[int], set_values: Any) -> ExcCodes | None:  # fmt: skip
            at_s = time.monotonic()
            value = count if set_values is None or function_code not in (5, 6) else set_values[0]
            self._seen.append(DeviceRequest(function_code, address, int(value), at_s))
            if function_code in (3, 4) and any(
                address <= b and a < address + count for a, b in self.refused
            ):
                return ExcCodes.ILLEGAL_ADDRESS
            return None

        def table(kind: Any, value: Any) -> list[Any]:
            return [SimData(0, count=10000, values=value, datatype=kind)]

        device = SimDevice(id=1, action=record, simdata=(
            table(DataType.BITS, False), table(DataType.BITS, False),
            table(DataType.REGISTERS, 0), table(DataType.REGISTERS, 0)))  # fmt: skip
        self._server = ModbusTcpServer([device], address=("127.0.0.1", self.port))
        await self._server.serve_forever(background=True)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
