"""systemd on the system bus (pydbus): reload, start/restart/stop units, job
results through the Manager's JobRemoved signal (after Subscribe()), unit
states through the unit objects' properties and their PropertiesChanged
signals (no polling). Signals are delivered by the GLib main loop the caller
runs."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable

from podvm_bootstrap.errors import BootstrapError

JobCallback = Callable[[str], None]  # called with the job result: done, failed, canceled, timeout, ...


class SystemdError(BootstrapError):
    pass


@dataclass(frozen=True)
class UnitState:
    active: str                 # ActiveState: active, activating, failed, inactive, ...
    sub: str                    # SubState
    n_restarts: int | None      # systemd's own restarts (Service.NRestarts)
    loaded: str = "loaded"      # LoadState


def _one_line(exc: Exception) -> str:
    text = getattr(exc, "message", None) or str(exc)
    return " ".join(str(text).split())


SYSTEMD = "org.freedesktop.systemd1"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
UnitCallback = Callable[[UnitState], None]


class Systemd:
    def __init__(self, bus: Any = None) -> None:
        try:
            if bus is None:
                from pydbus import SystemBus

                bus = SystemBus()
            self.bus = bus
            self.manager = bus.get(".systemd1")
            self.manager.Subscribe()
        except Exception as exc:  # noqa: BLE001 - no bus, no systemd
            raise SystemdError(f"cannot reach systemd on the system bus: {_one_line(exc)}") from None
        self._jobs: dict[str, JobCallback] = {}
        self._paths: dict[str, str] = {}
        self._watched: dict[str, tuple[UnitState, Any]] = {}
        self.manager.JobRemoved.connect(self._job_removed)

    def _job_removed(self, job_id: int, job: str, unit: str, result: str) -> None:
        callback = self._jobs.pop(job, None)
        if callback is not None:
            callback(result)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - GLib.Error from the bus
            raise SystemdError(f"{what}: {_one_line(exc)}") from None

    def reload(self) -> None:
        self._call("daemon reload", self.manager.Reload)

    def start(self, unit: str, on_done: JobCallback) -> None:
        job = self._call(f"start {unit}", lambda: self.manager.StartUnit(unit, "replace"))
        self._jobs[job] = on_done

    def restart(self, unit: str, on_done: JobCallback) -> None:
        # A unit that hit its start limit refuses to restart until reset.
        try:
            self.manager.ResetFailedUnit(unit)
        except Exception:  # noqa: BLE001 - not failed: nothing to reset
            pass
        job = self._call(f"restart {unit}", lambda: self.manager.RestartUnit(unit, "replace"))
        self._jobs[job] = on_done

    def stop(self, unit: str, on_done: JobCallback) -> None:
        job = self._call(f"stop {unit}", lambda: self.manager.StopUnit(unit, "replace"))
        self._jobs[job] = on_done

    # --- unit properties: plain D-Bus calls (no introspected proxy per unit) ---

    def _path(self, unit: str) -> str:
        path = self._paths.get(unit)
        if path is None:
            path = str(self.manager.LoadUnit(unit))  # loads a new unit file without a daemon-reload
            self._paths[unit] = path
        return path

    def _get_all(self, path: str, iface: str) -> dict[str, Any]:
        from gi.repository import GLib

        reply = self.bus.con.call_sync(SYSTEMD, path, PROPS_IFACE, "GetAll", GLib.Variant("(s)", (iface,)),
                                       GLib.VariantType.new("(a{sv})"), 0, 30000, None)
        return reply.unpack()[0]

    def _read(self, unit: str) -> tuple[UnitState, bool]:
        path = self._path(unit)
        props = self._get_all(path, UNIT_IFACE)
        n_restarts = None
        if unit.endswith(".service"):
            try:
                n_restarts = int(self._get_all(path, SERVICE_IFACE).get("NRestarts"))
            except Exception:  # noqa: BLE001 - not loaded as a service
                n_restarts = None
        state = UnitState(str(props.get("ActiveState")), str(props.get("SubState")), n_restarts,
                          str(props.get("LoadState")))
        return state, bool(props.get("NeedDaemonReload"))

    def state(self, unit: str) -> UnitState:
        return self._call(f"state of {unit}", lambda: self._read(unit)[0])

    def needs_reload(self, unit: str) -> bool:
        """Whether systemd must reload to see this unit's file as it is now: it
        is loaded with an older file, or was not found when it was looked up.
        A unit file systemd has not loaded yet is read at LoadUnit."""
        state, need = self._call(f"state of {unit}", lambda: self._read(unit))
        return need or state.loaded != "loaded"

    def forget(self, unit: str) -> None:
        """Drop cached unit paths (after a reload or a removed unit)."""
        self._paths.pop(unit, None)

    def watch(self, unit: str, on_change: UnitCallback) -> UnitState:
        """Call on_change(UnitState) whenever the unit's ActiveState, SubState
        or NRestarts changes (PropertiesChanged signals, delivered by the GLib
        main loop); the current state."""
        path = self._call(f"watch {unit}", lambda: self._path(unit))

        def changed(sender: str, obj: str, iface: str, signal: str, params: tuple) -> None:
            interface, values = params[0], params[1]
            current, sub = self._watched[unit]
            if interface == UNIT_IFACE:
                new = UnitState(str(values.get("ActiveState", current.active)),
                                str(values.get("SubState", current.sub)), current.n_restarts,
                                str(values.get("LoadState", current.loaded)))
            elif interface == SERVICE_IFACE and "NRestarts" in values:
                new = UnitState(current.active, current.sub, int(values["NRestarts"]), current.loaded)
            else:
                return
            if new != current:
                self._watched[unit] = (new, sub)
                on_change(new)

        old = self._watched.pop(unit, None)
        if old is not None:
            old[1].unsubscribe()
        subscription = self._call(f"watch {unit}", lambda: self.bus.subscribe(
            sender=SYSTEMD, iface=PROPS_IFACE, signal="PropertiesChanged", object=path, signal_fired=changed))
        current = self.state(unit)  # after subscribing: no change is missed in between
        self._watched[unit] = (current, subscription)
        return current

    def wait_jobs(self, pending: Callable[[], bool], timeout: float) -> bool:
        """Run the GLib main context until `pending()` is false or `timeout`
        passes (for steps before the main loop); whether it finished."""
        from gi.repository import GLib

        context = GLib.MainContext.default()
        deadline = time.monotonic() + timeout
        while pending():
            if time.monotonic() >= deadline:
                return False
            if not context.iteration(False):
                time.sleep(0.01)
        return True


def read_unit_states(units: list[str], bus: Any = None) -> dict[str, UnitState]:
    """Current states of `units`, for a one-shot reader like `status` (no
    subscription). SystemdError when the bus or systemd is not there."""
    try:
        if bus is None:
            from pydbus import SystemBus

            bus = SystemBus()
        manager = bus.get(".systemd1")
    except Exception as exc:  # noqa: BLE001
        raise SystemdError(f"system bus unavailable: {_one_line(exc)}") from None
    states: dict[str, UnitState] = {}
    for unit in units:
        try:
            obj = bus.get(".systemd1", manager.LoadUnit(unit))
            try:
                n_restarts = int(obj.NRestarts)
            except Exception:  # noqa: BLE001
                n_restarts = None
            states[unit] = UnitState(str(obj.ActiveState), str(obj.SubState), n_restarts, str(obj.LoadState))
        except Exception as exc:  # noqa: BLE001
            raise SystemdError(f"state of {unit}: {_one_line(exc)}") from None
    return states
