"""sd_notify for the daemon: READY=1 once, STATUS= only when it changes,
WATCHDOG=1 at a third of WatchdogSec. Outside systemd (no NOTIFY_SOCKET)
every call is a no-op."""

from __future__ import annotations

import os
from collections.abc import Callable


class Notifier:
    def __init__(self, send: Callable[[str], None] | None = None, env: dict[str, str] | None = None) -> None:
        env = dict(os.environ) if env is None else env
        if send is None:
            import sdnotify

            send = sdnotify.SystemdNotifier().notify
        self.enabled = bool(env.get("NOTIFY_SOCKET"))
        self._send = send
        self.ready_sent = False
        self._status: str | None = None
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        mine = not pid or pid == str(os.getpid())
        self.watchdog_interval = int(usec) / 1e6 / 3 if usec.isdigit() and int(usec) > 0 and mine else None
        self._last_ping: float | None = None

    def _notify(self, message: str) -> None:
        if self.enabled:
            self._send(message)

    def ready(self) -> None:
        if not self.ready_sent:
            self.ready_sent = True
            self._notify("READY=1")

    def status(self, line: str) -> None:
        line = " ".join(line.split())
        if line != self._status:
            self._status = line
            self._notify(f"STATUS={line}")

    def watchdog(self, now: float) -> None:
        """Ping if a third of WatchdogSec has passed since the last ping."""
        if self.watchdog_interval is None:
            return
        if self._last_ping is None or now - self._last_ping >= self.watchdog_interval:
            self._last_ping = now
            self._notify("WATCHDOG=1")

    def stopping(self) -> None:
        self._notify("STOPPING=1")
