"""sd_notify messages (pure: the sender is a list) and the runtime settings."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.settings import load_settings
from podvm_bootstrap.runtime.notify import Notifier


def notifier(**env: str) -> tuple[Notifier, list[str]]:
    sent: list[str] = []
    return Notifier(send=sent.append, env={"NOTIFY_SOCKET": "/run/systemd/notify", **env}), sent


def test_ready_once_status_only_on_change() -> None:
    n, sent = notifier()
    n.status("1/3 ready")
    n.status("1/3 ready")
    n.ready()
    n.ready()
    n.status("3/3 ready\nforged=1")
    assert sent == ["STATUS=1/3 ready", "READY=1", "STATUS=3/3 ready forged=1"]


def test_watchdog_at_a_third_of_watchdog_sec() -> None:
    n, sent = notifier(WATCHDOG_USEC="30000000", WATCHDOG_PID=str(os.getpid()))
    for t in (0.0, 5.0, 9.9, 10.0, 19.0, 20.0):
        n.watchdog(t)
    assert sent == ["WATCHDOG=1"] * 3


def test_watchdog_meant_for_another_process_and_no_socket_are_silent() -> None:
    n, sent = notifier(WATCHDOG_USEC="30000000", WATCHDOG_PID="1")
    n.watchdog(0.0)
    assert sent == []
    sent2: list[str] = []
    outside = Notifier(send=sent2.append, env={})
    outside.ready()
    outside.status("x")
    assert sent2 == [] and outside.ready_sent


def test_runtime_settings_defaults_and_validation(tmp_path: Path) -> None:
    path = tmp_path / "bootstrap.yaml"
    defaults = load_settings(path).runtime
    assert (defaults.podman_socket, defaults.auth_file, defaults.crash_loop_restarts) == (
        "/run/podman/podman.sock", "/run/peerpod/auth.json", 5)
    path.write_text("runtime: {pull_backoff: 50ms, pull_backoff_max: 1s, crash_loop_window: 2m}\n")
    runtime = load_settings(path).runtime
    assert (runtime.pull_backoff, runtime.pull_backoff_max, runtime.crash_loop_window) == (0.05, 1.0, 120.0)
    for bad, key in (("{pull_backoff: 2s, pull_backoff_max: 1s}", "runtime.pull_backoff_max"),
                     ("{job_timeout: 0s}", "runtime.job_timeout"),
                     ("{auth_file: relative.json}", "runtime.auth_file"),
                     ("{crash_loop_restarts: 0}", "runtime.crash_loop_restarts"),
                     ("{restarts: 3}", "runtime")):
        path.write_text(f"runtime: {bad}\n")
        with pytest.raises(ConfigError) as info:
            load_settings(path)
        assert str(path) in str(info.value) and key in str(info.value)
