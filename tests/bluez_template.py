"""python-dbusmock template: a BlueZ 5 stand-in that real bleak (BlueZ D-Bus backend) can scan,
connect to and use GATT on. Load it by path: ``python -m dbusmock --system --template <this file>``.

Relative to dbusmock's stock ``bluez5`` template (whose ``load()`` is reused for ``/org/bluez``
with AgentManager1 and ProfileManager1), this template

fixes
  - the advertisement types: ``ManufacturerData`` is ``a{qv}`` and ``ServiceData`` ``a{sv}``, each
    value an ``ay`` (stock ``AddDevice`` declares arrays of dicts, so bleak's scanner callback
    fails on the device's first advertisement and drops it);
  - ``Device1.Connect``: it sets the ``Connected`` property (stock only emits the signal, so
    ``Get``/``GetManagedObjects`` keep saying False), then ``ServicesResolved``, which bleak
    waits for before it builds the service collection;

adds
  - adapters with a chosen address and power state; powering off ends discovery, disconnects
    devices and makes ``SetDiscoveryFilter``/``StartDiscovery``/``StopDiscovery``/``Connect``
    answer ``org.bluez.Error.NotReady`` as bluetoothd does;
  - discovery sessions per D-Bus client (dropped when the client leaves the bus). While an
    adapter discovers, its unconnected devices keep advertising: ``PropertiesChanged`` with their
    last ``RSSI`` when discovery starts and every ``advertising_interval`` seconds (template
    parameter, default 0.1, 0 for never), so ``BleakScanner.find_device_by_address`` and
    ``BleakClient(address)`` find known devices. The last stop invalidates ``RSSI``/``TxPower``
    like bluetoothd;
  - advertisements: ``AddDevice`` (``InterfacesAdded``) and ``Advertise`` (``PropertiesChanged``);
  - GATT: ``GattService1``/``GattCharacteristic1`` objects with ``ReadValue``, ``WriteValue``,
    ``StartNotify``/``StopNotify`` (sessions per client); a notification is ``PropertiesChanged``
    on ``Value``. ``Value`` is BlueZ's cache: updated by reads and notifications, not by writes;
  - ``Adapter1.RemoveDevice`` and a mock-side removal, both emitting ``InterfacesRemoved`` for the
    GATT objects and the device; a remote-side disconnect.

Not modelled: AcquireNotify/AcquireWrite (not exposed, so bleak uses StartNotify), descriptors,
pairing agents, filtering of advertisements by discovery filter or advertisement monitor.

The test side drives it through the ``org.bluez.Mock`` methods at ``/`` (see tests/bluez.py).
"""

from __future__ import annotations

import ctypes
from typing import Any, cast

import dbus
import dbus.service
from dbusmock import OBJECT_MANAGER_IFACE, mockobject
from dbusmock.templates import bluez5 as stock

BUS_NAME = "org.bluez"
MAIN_OBJ = "/"
SYSTEM_BUS = True
IS_OBJECT_MANAGER = True

MOCK_IFACE = "org.bluez.Mock"
ADAPTER_IFACE = "org.bluez.Adapter1"
DEVICE_IFACE = "org.bluez.Device1"
SERVICE_IFACE = "org.bluez.GattService1"
CHAR_IFACE = "org.bluez.GattCharacteristic1"
MONITOR_MANAGER_IFACE = "org.bluez.AdvertisementMonitorManager1"

# what SetDiscoveryFilter accepts (bluetoothd rejects other keys)
DISCOVERY_FILTER_KEYS = {
    *("UUIDs", "RSSI", "Pathloss", "Transport", "DuplicateData", "Discoverable", "Pattern"),
}

# dbusmock runs a GLib main loop through ctypes (PyGObject is not required), so timers do too.
_glib = ctypes.CDLL("libglib-2.0.so.0")
_SOURCE_FUNC = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
_glib.g_timeout_add.argtypes = [ctypes.c_uint, _SOURCE_FUNC, ctypes.c_void_p]
_glib.g_timeout_add.restype = ctypes.c_uint
_glib.g_source_remove.argtypes = [ctypes.c_uint]
ADVERTISING_INTERVAL = 0.1


def _error(name: str, message: str) -> dbus.exceptions.DBusException:
    return dbus.exceptions.DBusException(message, name=f"org.bluez.Error.{name}")


def _ay(value: bytes) -> dbus.Array:
    return dbus.Array([dbus.Byte(b) for b in value], signature="y")


def _update(
    obj: mockobject.DBusMockObject,
    iface: str,
    changed: dict[str, Any],
    invalidated: tuple[str, ...] = (),
) -> None:
    """Set properties and emit PropertiesChanged, the only way bleak learns of a change (it
    never polls with Get)."""
    props = obj.props[iface]
    props.update(changed)
    for name in invalidated:
        props.pop(name, None)
    obj.EmitSignal(
        dbus.PROPERTIES_IFACE,
        "PropertiesChanged",
        "sa{sv}as",
        [
            iface,
            dbus.Dictionary(changed, signature="sv"),
            dbus.Array(invalidated, signature="s"),
        ],
    )


def _root() -> mockobject.DBusMockObject:
    return mockobject.objects[MAIN_OBJ]


def _emit_added(path: str) -> None:
    obj = mockobject.objects[path]
    _root().EmitSignal(
        OBJECT_MANAGER_IFACE,
        "InterfacesAdded",
        "oa{sa{sv}}",
        [dbus.ObjectPath(path), dbus.Dictionary(obj.props, signature="sa{sv}")],
    )


def _remove(path: str) -> None:
    obj = mockobject.objects[path]
    interfaces = dbus.Array(list(obj.props), signature="s")
    _root().RemoveObject(path)
    _root().EmitSignal(
        OBJECT_MANAGER_IFACE, "InterfacesRemoved", "oas", [dbus.ObjectPath(path), interfaces]
    )


def _children(path: str, iface: str) -> list[Any]:
    return [
        obj
        for p, obj in sorted(mockobject.objects.items())
        if p.startswith(path + "/") and iface in obj.props
    ]


def _adapter(name: str) -> FakeAdapter:
    try:
        return cast(FakeAdapter, mockobject.objects[f"/org/bluez/{name}"])
    except KeyError:
        raise _error("DoesNotExist", f"no adapter {name}") from None


def _device_path(adapter: str, address: str) -> str:
    return f"/org/bluez/{adapter}/dev_{address.upper().replace(':', '_')}"


def _device(adapter: str, address: str) -> FakeDevice:
    try:
        return cast(FakeDevice, mockobject.objects[_device_path(adapter, address)])
    except KeyError:
        raise _error("DoesNotExist", f"no device {address} on {adapter}") from None


def _advertised(adv: dict[str, Any]) -> dict[str, Any]:
    """Advertisement fields from the test side, in the D-Bus types BlueZ uses (bleak unpacks
    them by type: a wrong container type makes its scanner callback fail)."""
    props: dict[str, Any] = {}
    for key, value in adv.items():
        if key == "ManufacturerData":
            data = {dbus.UInt16(k): _ay(bytes(v)) for k, v in value.items()}
            props[key] = dbus.Dictionary(data, signature="qv")
        elif key == "ServiceData":
            data = {dbus.String(k): _ay(bytes(v)) for k, v in value.items()}
            props[key] = dbus.Dictionary(data, signature="sv")
        elif key in ("RSSI", "TxPower"):
            props[key] = dbus.Int16(value)
        elif key == "UUIDs":
            props[key] = dbus.Array([str(u) for u in value], signature="s")
        elif key == "Name":
            # bluetoothd derives Alias from the advertised name while no alias is set
            props["Name"] = props["Alias"] = dbus.String(value)
        else:
            raise dbus.exceptions.DBusException(
                f"unknown advertisement field {key}", name="org.freedesktop.DBus.Error.InvalidArgs"
            )
    return props


class FakeAdapter(mockobject.DBusMockObject):
    """org.bluez.Adapter1 with discovery sessions per D-Bus client."""

    sessions: set[str]
    discovery_filter: dict[str, Any]
    timer: tuple[int, Any] | None = None

    def devices(self) -> list[FakeDevice]:
        return _children(self.path, DEVICE_IFACE)

    def _check_powered(self) -> None:
        if not self.props[ADAPTER_IFACE]["Powered"]:
            raise _error("NotReady", "Resource Not Ready")

    @dbus.service.method(ADAPTER_IFACE, in_signature="a{sv}", sender_keyword="sender")
    def SetDiscoveryFilter(self, discovery_filter: dict[str, Any], sender: str = "") -> None:
        self._check_powered()
        unknown = set(discovery_filter) - DISCOVERY_FILTER_KEYS
        if unknown:
            raise _error("InvalidArguments", f"Invalid arguments in method call: {unknown}")
        self.discovery_filter = dict(discovery_filter)

    @dbus.service.method(ADAPTER_IFACE, in_signature="", out_signature="as")
    def GetDiscoveryFilters(self) -> list[str]:
        return sorted(DISCOVERY_FILTER_KEYS)

    @dbus.service.method(ADAPTER_IFACE, in_signature="", sender_keyword="sender")
    def StartDiscovery(self, sender: str = "") -> None:
        self._check_powered()
        self.sessions.add(sender)
        if not self.props[ADAPTER_IFACE]["Discovering"]:
            _update(self, ADAPTER_IFACE, {"Discovering": dbus.Boolean(True)})
            self._start_timer()
        self._tick(None)

    def _tick(self, _data: Any) -> int:
        # devices in range are heard as soon as the radio scans, and again at each advertisement;
        # bleak registers some callbacks (find_device_by_address) only after StartDiscovery returns
        for device in self.devices():
            if not device.connected():
                device.announce()
        return 1  # G_SOURCE_CONTINUE

    def _start_timer(self) -> None:
        if ADVERTISING_INTERVAL > 0:
            callback = _SOURCE_FUNC(self._tick)  # kept referenced while GLib may call it
            self.timer = (
                _glib.g_timeout_add(int(ADVERTISING_INTERVAL * 1000), callback, None),
                callback,
            )

    def _stop_timer(self) -> None:
        if self.timer is not None:
            _glib.g_source_remove(self.timer[0])
            self.timer = None

    @dbus.service.method(ADAPTER_IFACE, in_signature="", sender_keyword="sender")
    def StopDiscovery(self, sender: str = "") -> None:
        self._check_powered()
        if sender not in self.sessions:
            raise _error("Failed", "No discovery started")
        self.drop_session(sender)

    @dbus.service.method(ADAPTER_IFACE, in_signature="o")
    def RemoveDevice(self, path: str) -> None:
        device = mockobject.objects.get(str(path))
        if not isinstance(device, FakeDevice):
            raise _error("DoesNotExist", "Does Not Exist")
        device.remove()

    def drop_session(self, sender: str) -> None:
        self.sessions.discard(sender)
        if self.sessions or not self.props[ADAPTER_IFACE]["Discovering"]:
            return
        self._stop_timer()
        _update(self, ADAPTER_IFACE, {"Discovering": dbus.Boolean(False)})
        # bluetoothd forgets the signal strength of what it no longer hears
        for device in self.devices():
            heard = tuple(k for k in ("RSSI", "TxPower") if k in device.props[DEVICE_IFACE])
            if heard:
                _update(device, DEVICE_IFACE, {}, heard)

    def set_powered(self, powered: bool) -> None:
        if bool(self.props[ADAPTER_IFACE]["Powered"]) == powered:
            return
        if not powered:
            for device in self.devices():
                device.disconnect()
            for sender in list(self.sessions):
                self.drop_session(sender)
        _update(self, ADAPTER_IFACE, {"Powered": dbus.Boolean(powered)})


class FakeDevice(mockobject.DBusMockObject):
    """org.bluez.Device1 that advertises, connects and owns GATT objects."""

    advertisement: dict[str, Any]
    next_handle: int

    def adapter(self) -> FakeAdapter:
        return cast(FakeAdapter, mockobject.objects[str(self.props[DEVICE_IFACE]["Adapter"])])

    def connected(self) -> bool:
        return bool(self.props[DEVICE_IFACE]["Connected"])

    def advertise(self, changed: dict[str, Any]) -> None:
        self.advertisement.update({k: v for k, v in changed.items() if k in ("RSSI", "TxPower")})
        _update(self, DEVICE_IFACE, changed)

    def announce(self) -> None:
        self.advertise(dict(self.advertisement))

    @dbus.service.method(DEVICE_IFACE, in_signature="")
    def Connect(self) -> None:
        self.adapter()._check_powered()
        if self.connected():
            raise _error("AlreadyConnected", "Already Connected")
        _update(self, DEVICE_IFACE, {"Connected": dbus.Boolean(True)})
        # GATT objects are already exported, so discovery is done at once
        _update(self, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(True)})

    @dbus.service.method(DEVICE_IFACE, in_signature="")
    def Disconnect(self) -> None:
        # bluetoothd answers success when there is nothing to disconnect
        self.disconnect()

    @dbus.service.method(DEVICE_IFACE, in_signature="")
    def Pair(self) -> None:
        if self.props[DEVICE_IFACE]["Paired"]:
            raise _error("AlreadyExists", "Already Paired")
        _update(self, DEVICE_IFACE, {"Paired": dbus.Boolean(True), "Bonded": dbus.Boolean(True)})

    @dbus.service.method(DEVICE_IFACE, in_signature="")
    def CancelPairing(self) -> None:
        pass

    def disconnect(self) -> None:
        if not self.connected():
            return
        # Simplification: notify sessions end with the link (bluetoothd re-arms them on
        # reconnect for clients still on the bus; bleak avoids that with a new bus per connection).
        for char in _children(self.path, CHAR_IFACE):
            char.end_notify_sessions()
        _update(self, DEVICE_IFACE, {"ServicesResolved": dbus.Boolean(False)})
        _update(self, DEVICE_IFACE, {"Connected": dbus.Boolean(False)})

    def remove(self) -> None:
        self.disconnect()
        # children first, as bluetoothd does, so no client sees orphaned GATT objects
        for obj in reversed(_children(self.path, SERVICE_IFACE) + _children(self.path, CHAR_IFACE)):
            _remove(obj.path)
        _remove(self.path)

    def service(self, uuid: str) -> mockobject.DBusMockObject:
        for service in _children(self.path, SERVICE_IFACE):
            if service.props[SERVICE_IFACE]["UUID"] == uuid:
                return service
        path = f"{self.path}/service{self.take_handles(1):04x}"
        props = {
            "UUID": dbus.String(uuid),
            "Primary": dbus.Boolean(True),
            "Device": dbus.ObjectPath(self.path),
            "Includes": dbus.Array([], signature="o"),
        }
        _root().AddObject(path, SERVICE_IFACE, props, [])
        _emit_added(path)
        return mockobject.objects[path]

    def take_handles(self, count: int) -> int:
        handle = self.next_handle
        self.next_handle += count
        return handle

    def characteristic(self, uuid: str) -> FakeCharacteristic:
        found = [c for c in _children(self.path, CHAR_IFACE) if c.props[CHAR_IFACE]["UUID"] == uuid]
        if len(found) != 1:
            raise _error("DoesNotExist", f"{len(found)} characteristics {uuid} on {self.path}")
        return cast(FakeCharacteristic, found[0])


class FakeCharacteristic(mockobject.DBusMockObject):
    """org.bluez.GattCharacteristic1; ``remote_value`` is what the peripheral holds."""

    remote_value: bytes
    notify_sessions: set[str]

    def device(self) -> FakeDevice:
        return cast(FakeDevice, mockobject.objects[self.path.rsplit("/", 2)[0]])

    def flags(self) -> set[str]:
        return {str(f) for f in self.props[CHAR_IFACE]["Flags"]}

    def _check_connected(self) -> None:
        if not self.device().connected():
            raise _error("Failed", "Not connected")

    @dbus.service.method(CHAR_IFACE, in_signature="a{sv}", out_signature="ay")
    def ReadValue(self, options: dict[str, Any]) -> dbus.Array:
        self._check_connected()
        if "read" not in self.flags():
            raise _error("NotPermitted", "Read not permitted")
        value = self.remote_value[int(options.get("offset", 0)) :]
        # bluetoothd caches what it read in Value and signals it, so a read while notifying
        # also reaches the notification handler (bleak documents this duplicate)
        _update(self, CHAR_IFACE, {"Value": _ay(value)})
        return _ay(value)

    @dbus.service.method(CHAR_IFACE, in_signature="aya{sv}", byte_arrays=True)
    def WriteValue(self, value: bytes, options: dict[str, Any]) -> None:
        self._check_connected()
        kind = str(options.get("type", ""))
        flags = self.flags()
        request = kind in ("", "request", "reliable") and "write" in flags
        command = kind in ("", "command") and "write-without-response" in flags
        if not (request or command):
            raise _error("NotSupported", "Operation is not supported")
        self.remote_value = bytes(value)

    @dbus.service.method(CHAR_IFACE, in_signature="", sender_keyword="sender")
    def StartNotify(self, sender: str = "") -> None:
        self._check_connected()
        if not self.flags() & {"notify", "indicate"}:
            raise _error("NotSupported", "Operation is not supported")
        self.notify_sessions.add(sender)
        if not self.props[CHAR_IFACE]["Notifying"]:
            _update(self, CHAR_IFACE, {"Notifying": dbus.Boolean(True)})

    @dbus.service.method(CHAR_IFACE, in_signature="", sender_keyword="sender")
    def StopNotify(self, sender: str = "") -> None:
        if sender not in self.notify_sessions:
            raise _error("Failed", "No notify session started")
        self.drop_session(sender)

    def drop_session(self, sender: str) -> None:
        self.notify_sessions.discard(sender)
        if not self.notify_sessions and self.props[CHAR_IFACE]["Notifying"]:
            _update(self, CHAR_IFACE, {"Notifying": dbus.Boolean(False)})

    def end_notify_sessions(self) -> None:
        for sender in list(self.notify_sessions):
            self.drop_session(sender)

    def notify(self, value: bytes) -> bool:
        self.remote_value = value
        if not (self.notify_sessions and self.device().connected()):
            return False
        _update(self, CHAR_IFACE, {"Value": _ay(value)})
        return True


def load(mock: mockobject.DBusMockObject, parameters: dict[str, Any]) -> None:
    global ADVERTISING_INTERVAL
    ADVERTISING_INTERVAL = float(parameters.get("advertising_interval", ADVERTISING_INTERVAL))
    stock.load(mock, parameters)

    def on_owner_changed(name: str, _old: str, new: str) -> None:
        # bluetoothd ends the discovery and notify sessions of a client that left the bus
        if new or not name.startswith(":"):
            return
        for obj in list(mockobject.objects.values()):
            if isinstance(obj, FakeAdapter | FakeCharacteristic):
                obj.drop_session(name)

    mock.bus_name.get_bus().add_signal_receiver(
        on_owner_changed,
        signal_name="NameOwnerChanged",
        dbus_interface="org.freedesktop.DBus",
        path="/org/freedesktop/DBus",
    )


@dbus.service.method(MOCK_IFACE, in_signature="ssb", out_signature="s")
def AddAdapter(self: mockobject.DBusMockObject, name: str, address: str, powered: bool) -> str:
    path = f"/org/bluez/{name}"
    props = {
        "Address": dbus.String(address.upper()),
        "AddressType": dbus.String("public"),
        "Name": dbus.String(f"fake-{name}"),
        "Alias": dbus.String(f"fake-{name}"),
        "Class": dbus.UInt32(0),
        "Powered": dbus.Boolean(powered),
        "Discoverable": dbus.Boolean(False),
        "DiscoverableTimeout": dbus.UInt32(180),
        "Pairable": dbus.Boolean(True),
        "PairableTimeout": dbus.UInt32(0),
        "Discovering": dbus.Boolean(False),
        "UUIDs": dbus.Array([], signature="s"),
        "Modalias": dbus.String("usb:v1D6Bp0246d0540"),
        # bleak's default-adapter choice needs the central role
        "Roles": dbus.Array(["central", "peripheral"], signature="s"),
    }
    self.AddObject(path, ADAPTER_IFACE, props, [], mock_class=FakeAdapter)
    adapter = mockobject.objects[path]
    adapter.sessions = set()
    adapter.discovery_filter = {}
    # advertisement monitors (passive scanning) are accepted but never fed: see module docstring
    adapter.monitors = []
    adapter.AddProperties(
        MONITOR_MANAGER_IFACE,
        {
            "SupportedMonitorTypes": dbus.Array(["or_patterns"], signature="s"),
            "SupportedFeatures": dbus.Array([], signature="s"),
        },
    )
    adapter.AddMethods(
        MONITOR_MANAGER_IFACE,
        [
            ("RegisterMonitor", "o", "", stock.RegisterMonitor),
            ("UnregisterMonitor", "o", "", stock.UnregisterMonitor),
        ],
    )
    _emit_added(path)
    return path


@dbus.service.method(MOCK_IFACE, in_signature="sb")
def SetAdapterPowered(self: mockobject.DBusMockObject, name: str, powered: bool) -> None:
    _adapter(name).set_powered(bool(powered))


@dbus.service.method(MOCK_IFACE, in_signature="ssa{sv}", out_signature="s")
def AddDevice(self: mockobject.DBusMockObject, adapter: str, address: str, adv: Any) -> str:
    adapter_obj = _adapter(adapter)
    path = _device_path(adapter, address)
    props: dict[str, Any] = {
        "Address": dbus.String(address.upper()),
        "AddressType": dbus.String("public"),
        # bluetoothd's alias for a nameless device; bleak reports it as name None
        "Alias": dbus.String(address.upper().replace(":", "-")),
        "Adapter": dbus.ObjectPath(adapter_obj.path),
        "Paired": dbus.Boolean(False),
        "Bonded": dbus.Boolean(False),
        "Trusted": dbus.Boolean(False),
        "Blocked": dbus.Boolean(False),
        "LegacyPairing": dbus.Boolean(False),
        "Connected": dbus.Boolean(False),
        "ServicesResolved": dbus.Boolean(False),
        "UUIDs": dbus.Array([], signature="s"),
    }
    props.update(_advertised(dict(adv)))
    self.AddObject(path, DEVICE_IFACE, props, [], mock_class=FakeDevice)
    device = mockobject.objects[path]
    device.advertisement = {k: props[k] for k in ("RSSI", "TxPower") if k in props}
    device.next_handle = 1
    _emit_added(path)
    return path


@dbus.service.method(MOCK_IFACE, in_signature="ssa{sv}")
def Advertise(self: mockobject.DBusMockObject, adapter: str, address: str, adv: Any) -> None:
    _device(adapter, address).advertise(_advertised(dict(adv)))


@dbus.service.method(MOCK_IFACE, in_signature="ss")
def DeleteDevice(self: mockobject.DBusMockObject, adapter: str, address: str) -> None:
    _device(adapter, address).remove()


@dbus.service.method(MOCK_IFACE, in_signature="ss")
def DropConnection(self: mockobject.DBusMockObject, adapter: str, address: str) -> None:
    _device(adapter, address).disconnect()


@dbus.service.method(MOCK_IFACE, in_signature="ssssayas", out_signature="s")
def AddGattCharacteristic(
    self: mockobject.DBusMockObject,
    adapter: str,
    address: str,
    service_uuid: str,
    char_uuid: str,
    value: Any,
    flags: list[str],
) -> str:
    device = _device(adapter, address)
    service = device.service(str(service_uuid))
    # a declaration and a value handle, plus the CCCD of a notifying characteristic
    notifying = bool({"notify", "indicate"} & {str(f) for f in flags})
    handle = device.take_handles(3 if notifying else 2)
    path = f"{service.path}/char{handle:04x}"
    props = {
        "UUID": dbus.String(char_uuid),
        "Service": dbus.ObjectPath(service.path),
        "Value": dbus.Array([], signature="y"),
        "Notifying": dbus.Boolean(False),
        "Flags": dbus.Array([str(f) for f in flags], signature="s"),
        "MTU": dbus.UInt16(23),
    }
    self.AddObject(path, CHAR_IFACE, props, [], mock_class=FakeCharacteristic)
    char = mockobject.objects[path]
    char.remote_value = bytes(value)
    char.notify_sessions = set()
    _emit_added(path)
    return path


@dbus.service.method(MOCK_IFACE, in_signature="sss", out_signature="ay")
def GetCharacteristicValue(
    self: mockobject.DBusMockObject, adapter: str, address: str, char_uuid: str
) -> dbus.Array:
    return _ay(_device(adapter, address).characteristic(str(char_uuid)).remote_value)


@dbus.service.method(MOCK_IFACE, in_signature="sssay", out_signature="b")
def Notify(
    self: mockobject.DBusMockObject, adapter: str, address: str, char_uuid: str, value: Any
) -> bool:
    return _device(adapter, address).characteristic(str(char_uuid)).notify(bytes(value))
