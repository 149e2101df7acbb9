"""systemd on the system bus (pydbus): reload, start/restart/stop units, job
results through the Manager's JobRemoved signal (after Subscribe()), unit
states through the unit objects' properties. Signals are delivered by the
GLib main loop the caller runs."""

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
        self._finished: dict[str, str] = {}
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

    def state(self, unit: str) -> UnitState:
        def read() -> UnitState:
            obj = self.bus.get(".systemd1", self.manager.LoadUnit(unit))
            try:
                n_restarts = int(obj.NRestarts)
            except Exception:  # noqa: BLE001 - not a service
                n_restarts = None
            return UnitState(str(obj.ActiveState), str(obj.SubState), n_restarts, str(obj.LoadState))
        return self._call(f"state of {unit}", read)

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
