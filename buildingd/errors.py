"""The one exception tree of buildingd. Errors carry the fields a technician needs (ids, ...)."""

from __future__ import annotations


class BuildingdError(Exception):
    """Root of every error buildingd raises on purpose."""


class ConfigError(BuildingdError):
    """A settings, device or policy file is invalid; ``problems`` lists every located problem."""

    def __init__(self, problems: list[ConfigProblem]) -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class ConfigProblem:
    """One located problem: ``file:line: key.path: message``."""

    __slots__ = ("file", "key", "line", "message")

    def __init__(self, file: str, line: int | None, key: str, message: str) -> None:
        self.file = file
        self.line = line
        self.key = key
        self.message = message

    def __str__(self) -> str:
        line = self.line if self.line is not None else 1
        key = self.key or "(file)"
        return f"{self.file}:{line}: {key}: {self.message}"

    def __repr__(self) -> str:
        return f"ConfigProblem({self!s})"


class DeviceError(BuildingdError):
    """A device or its driver failed; carries the device and, where known, the point and address."""

    def __init__(
        self,
        message: str,
        *,
        device_id: str,
        point_id: str | None = None,
        address: str | None = None,
    ) -> None:
        self.device_id = device_id
        self.point_id = point_id
        self.address = address
        where = (
            device_id + (f".{point_id}" if point_id else "") + (f" @{address}" if address else "")
        )
        super().__init__(f"{where}: {message}")


class StartupError(BuildingdError):
    """The daemon cannot start: a port already in use, a serial port that refuses its settings.
    Its message is the one line ``buildingd run`` prints."""


class DeviceUnavailableError(DeviceError):
    """The device cannot be reached (connection refused, timeout, BLE out of range). Transient."""


class DeviceRejectedError(DeviceError):
    """The device answered but refused the request (Modbus exception code, GATT error)."""


class PriorityHeldError(DeviceRejectedError):
    """A BACnet write was stored at our priority, but a higher priority (life safety, the
    building automation system) holds the point: reported, not fought."""

    def __init__(self, message: str, *, device_id: str, point_id: str, priority: int) -> None:
        super().__init__(message, device_id=device_id, point_id=point_id)
        self.priority = priority


class ReadBackMismatchError(DeviceError):
    """A write was accepted but the value read back differs from the value written."""


class DecodeError(BuildingdError):
    """Bytes or a payload from outside could not be decoded into a reading."""


class CommandRejectedError(BuildingdError):
    """A command refused before reaching the device: not writable, outside limits or safety band."""

    def __init__(self, message: str, *, device_id: str, point_id: str, value: float) -> None:
        self.device_id = device_id
        self.point_id = point_id
        self.value = value
        super().__init__(f"{device_id}.{point_id} <- {value!r} refused: {message}")


class PolicyError(BuildingdError):
    """A policy cannot be applied (for example a vote outside every band)."""


class RequestRefusedError(BuildingdError):
    """A request from outside (demand response, vote, setpoint) is beyond its policy's limits."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind} refused: {reason}")
        self.kind = kind
        self.reason = reason
