"""systemd on the system bus: reload, start/restart/stop units, job results
through the Manager's JobRemoved signal (after Subscribe()), unit states
through the unit objects' properties and their PropertiesChanged signals (no
polling). Signals are delivered by the GLib main loop the caller runs.

The daemon talks to systemd over Gio's system bus connection (the one
pydbus wraps), with plain calls of the few methods it uses rather than pydbus
proxies: no introspection and no pydbus import on the boot's critical path
(its first StartUnit), and only the properties used are unpacked from each
signal (a unit's PropertiesChanged carries about a hundred).
`read_unit_states` (the one-shot `status` command) uses pydbus proxies."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from podvm_bootstrap.common.errors import BootstrapError
from podvm_bootstrap.common.errors import error_line as _one_line

JobCallback = Callable[[str], None]  # called with the job result: done, failed, canceled, timeout, ...


class SystemdError(BootstrapError):
    pass


@dataclass(frozen=True)
class UnitState:
    active: str                 # ActiveState: active, activating, failed, inactive, ...
    sub: str                    # SubState
    n_restarts: int | None      # systemd's own restarts (Service.NRestarts)
    loaded: str = "loaded"      # LoadState
    need_reload: bool = False   # NeedDaemonReload: systemd holds an older version of the unit file


SYSTEMD = "org.freedesktop.systemd1"
UNIT_IFACE = "org.freedesktop.systemd1.Unit"
SERVICE_IFACE = "org.freedesktop.systemd1.Service"
PROPS_IFACE = "org.freedesktop.DBus.Properties"
UnitCallback = Callable[[UnitState], None]


MANAGER_PATH = "/org/freedesktop/systemd1"
MANAGER_IFACE = "org.freedesktop.systemd1.Manager"


class Systemd:
    def __init__(self, con: Any = None) -> None:
        """con: a Gio.DBusConnection (default: the system bus, as pydbus's SystemBus().con)."""
        try:
            if con is None:
                from gi.repository import Gio

                con = Gio.bus_get_sync(Gio.BusType.SYSTEM, None)
            self.con = con
            self._manager("Subscribe")
        except Exception as exc:  # noqa: BLE001 - no bus, no systemd
            raise SystemdError(f"cannot reach systemd on the system bus: {_one_line(exc)}") from None
        self._jobs: dict[str, JobCallback] = {}
        self._awaiting_replies = 0                 # start_all() calls not answered yet
        self._unclaimed: dict[str, str] = {}       # job -> result, ended before its reply was handled
        self._paths: dict[str, str] = {}
        self._watched: dict[str, tuple[UnitState, int]] = {}
        con.signal_subscribe(SYSTEMD, MANAGER_IFACE, "JobRemoved", MANAGER_PATH, None, 0, self._job_removed)

    def _manager(self, method: str, *args: str) -> Any:
        """Call a Manager method whose arguments are all strings; its reply, unpacked."""
        from gi.repository import GLib

        params = GLib.Variant("(" + "s" * len(args) + ")", args) if args else None
        reply = self.con.call_sync(SYSTEMD, MANAGER_PATH, MANAGER_IFACE, method, params, None, 0, -1, None)
        values: tuple[Any, ...] = reply.unpack() if reply is not None else ()
        return values[0] if len(values) == 1 else None

    def unit_loads(self, units: list[str]) -> dict[str, tuple[str, str]]:
        """(LoadState, ActiveState) of each unit systemd has in memory, in one
        round trip (ListUnitsByNames); a unit it does not hold is absent or
        "not-found": its file is read when it is started."""
        from gi.repository import GLib

        reply = self._call("list units", lambda: self.con.call_sync(
            SYSTEMD, MANAGER_PATH, MANAGER_IFACE, "ListUnitsByNames", GLib.Variant("(as)", (units,)),
            GLib.VariantType.new("(a(ssssssouso))"), 0, -1, None))
        return {str(row[0]): (str(row[2]), str(row[3])) for row in reply.unpack()[0]}

    def _job_removed(self, con: Any, sender: str, path: str, iface: str, signal: str, params: Any) -> None:
        job = params.get_child_value(1).get_string()
        result = params.get_child_value(3).get_string()
        callback = self._jobs.pop(job, None)
        if callback is not None:
            callback(result)
        elif self._awaiting_replies:
            # A job of start_all() may end before its reply is handled: kept for it.
            self._unclaimed[job] = result
            while len(self._unclaimed) > 256:
                self._unclaimed.pop(next(iter(self._unclaimed)))

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        try:
            return fn()
        except Exception as exc:  # noqa: BLE001 - GLib.Error from the bus
            raise SystemdError(f"{what}: {_one_line(exc)}") from None

    def reload(self) -> None:
        self._call("daemon reload", lambda: self._manager("Reload"))

    def start(self, unit: str, on_done: JobCallback, *, ignore_dependencies: bool = False) -> None:
        """ignore_dependencies: this unit's job alone, at once: no start jobs
        pulled in by Wants=, none waited for by After= (systemd's job mode
        "ignore-dependencies"; the daemon's start gates order the processes)."""
        mode = "ignore-dependencies" if ignore_dependencies else "replace"
        job = self._call(f"start {unit}", lambda: self._manager("StartUnit", unit, mode))
        self._jobs[str(job)] = on_done

    def start_all(self, units: list[str], on_done: Callable[[str, str], None]) -> None:
        """StartUnit for every unit with the job mode ignore-dependencies, all
        sent at once (no wait for each reply: one round trip's latency for
        the lot). on_done(unit, result) when its job is over, or with
        "failed" when systemd refused the start; replies and job signals are
        delivered by the GLib main context (run by the caller later)."""
        from gi.repository import GLib

        for unit in units:
            def replied(con: Any, res: Any, unit: str = unit) -> None:
                self._awaiting_replies -= 1
                try:
                    job = str(con.call_finish(res).unpack()[0])
                except Exception:  # noqa: BLE001 - GLib.Error: the start was refused
                    on_done(unit, "failed")
                    return
                if job in self._unclaimed:
                    on_done(unit, self._unclaimed.pop(job))
                else:
                    self._jobs[job] = lambda result: on_done(unit, result)
                if not self._awaiting_replies:
                    self._unclaimed.clear()
            self._awaiting_replies += 1
            self.con.call(SYSTEMD, MANAGER_PATH, MANAGER_IFACE, "StartUnit",
                          GLib.Variant("(ss)", (unit, "ignore-dependencies")), GLib.VariantType.new("(o)"),
                          0, -1, None, replied)

    def reset_failed(self, unit: str) -> None:
        """Forget a failed result (and the start-limit count); nothing when
        the unit is not failed."""
        try:
            self._manager("ResetFailedUnit", unit)
        except Exception:  # noqa: BLE001 - not failed: nothing to reset
            pass

    def restart(self, unit: str, on_done: JobCallback) -> None:
        self.reset_failed(unit)   # a unit that hit its start limit refuses to restart until reset
        job = self._call(f"restart {unit}", lambda: self._manager("RestartUnit", unit, "replace"))
        self._jobs[str(job)] = on_done

    def stop(self, unit: str, on_done: JobCallback) -> None:
        job = self._call(f"stop {unit}", lambda: self._manager("StopUnit", unit, "replace"))
        self._jobs[str(job)] = on_done

    # --- unit properties: plain D-Bus calls and signal subscriptions (no
    # introspected proxy per unit; only the properties used are unpacked) ---

    def _path(self, unit: str) -> str:
        path = self._paths.get(unit)
        if path is None:
            path = str(self._manager("LoadUnit", unit))  # loads a new unit file without a daemon-reload
            self._paths[unit] = path
        return path

    def _get_all(self, path: str, iface: str) -> Any:
        from gi.repository import GLib

        reply = self.con.call_sync(SYSTEMD, path, PROPS_IFACE, "GetAll", GLib.Variant("(s)", (iface,)),
                                       GLib.VariantType.new("(a{sv})"), 0, 30000, None)
        return reply.get_child_value(0)

    def _read(self, unit: str) -> UnitState:
        path = self._path(unit)
        props = self._get_all(path, UNIT_IFACE)
        n_restarts = None
        if unit.endswith(".service"):
            try:
                n_restarts = _value(self._get_all(path, SERVICE_IFACE), "NRestarts")
            except Exception:  # noqa: BLE001 - not loaded as a service
                n_restarts = None
        return UnitState(str(_value(props, "ActiveState")), str(_value(props, "SubState")),
                         None if n_restarts is None else int(n_restarts), str(_value(props, "LoadState")),
                         bool(_value(props, "NeedDaemonReload")))

    def state(self, unit: str) -> UnitState:
        """ActiveState, SubState, NRestarts, LoadState and NeedDaemonReload (a
        unit file systemd has not loaded yet is read as it is looked up)."""
        return self._call(f"state of {unit}", lambda: self._read(unit))

    def forget(self, unit: str) -> None:
        """Stop watching a unit and drop its cached path (a removed unit)."""
        self._paths.pop(unit, None)
        old = self._watched.pop(unit, None)
        if old is not None:
            self.con.signal_unsubscribe(old[1])

    def watch(self, unit: str, on_change: UnitCallback) -> UnitState:
        """Call on_change(UnitState) whenever the unit's ActiveState, SubState
        or NRestarts changes (PropertiesChanged signals, delivered by the GLib
        main loop); the current state."""
        path = self._call(f"watch {unit}", lambda: self._path(unit))

        def changed(con: Any, sender: str, obj: str, iface: str, signal: str, params: Any) -> None:
            interface, values = params.get_child_value(0).get_string(), params.get_child_value(1)
            watched = self._watched.get(unit)
            if watched is None:  # a signal still queued after forget()
                return
            current, subscription = watched
            if interface == UNIT_IFACE:
                new = UnitState(str(_value(values, "ActiveState", current.active)),
                                str(_value(values, "SubState", current.sub)), current.n_restarts,
                                str(_value(values, "LoadState", current.loaded)),
                                bool(_value(values, "NeedDaemonReload", current.need_reload)))
            elif interface == SERVICE_IFACE:
                n_restarts = _value(values, "NRestarts", current.n_restarts)
                new = replace(current, n_restarts=None if n_restarts is None else int(n_restarts))
            else:
                return
            if new != current:
                self._watched[unit] = (new, subscription)
                on_change(new)

        self.forget(unit)
        self._paths[unit] = path
        subscription = self._call(f"watch {unit}", lambda: self.con.signal_subscribe(
            SYSTEMD, PROPS_IFACE, "PropertiesChanged", path, None, 0, changed))
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


def _value(props: Any, name: str, default: Any = None) -> Any:
    """One property of an a{sv} GVariant, unpacked alone."""
    value = props.lookup_value(name, None)
    return default if value is None else value.unpack()


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
