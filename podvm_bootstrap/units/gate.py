"""The start gate: every container is created with a tiny static shell as its
entrypoint, which waits on a FIFO before it execs the component. The daemon
releases it, for each start, only once the start's image has been verified in
storage (and the components it needs are ready), handing it the argv to exec:
the image's own entrypoint and command, read from the config it just verified.

Why a gate:
- podman sets up every container at once (the costly part of a start), and
  only each component's own process waits for its dependencies;
- systemd's own Restart= cannot run anything unverified: a restarted
  container waits at its gate until the daemon verifies the image again, and
  while the daemon is down it simply waits for it;
- nothing of the component runs before its files are provisioned (the daemon
  provisions before it releases anything).

The gate's shell is Debian's busybox-static, bind-mounted read-only from the
pod VM (it is part of the measured image, not of the component's image). The
FIFO lives in the daemon's state directory (root only may write it); the
release is one `set -- 'arg' ...` line, quoted here, then EOF. A stop of a
container at its gate (SIGTERM to its PID 1, the gate's shell) ends it at
once with exit 143: nothing of the component ran.

A FIFO is bound to the container it releases: its path carries a key, the
sha256 of the container's podman argv without the FIFO (image by digest,
container settings, name: gate_key), as gates/<component>/<key>.fifo. A
container created from another definition (an early start of the baked
default the final plan replaced, an older unit text whose container
lingers) waits on another FIFO, and a release of this plan never reaches it:
the verified argv is exec'd only in a container of the image verified for
it. The same definition keeps its FIFO (systemd's own restarts, a restarted
daemon adopting what runs). An empty
read (anyone opening and closing the FIFO) ends the container with exit 75,
and systemd's Restart= brings it back to its gate.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from podvm_bootstrap.common.errors import BootstrapError

GATE_BUSYBOX = "/bin/busybox"          # Debian's busybox-static: one static binary
GATE_MOUNT = "/.podvm-gate"            # where the gate's two files appear in the container
GATE_SHELL = f"{GATE_MOUNT}/busybox"
GATE_FIFO = f"{GATE_MOUNT}/release"
EXIT_NOT_RELEASED = 75                  # EX_TEMPFAIL
EXIT_TERMINATED = 143                   # 128 + SIGTERM: stopped at the gate
# The shell itself opens the FIFO (`read ... < FIFO`): the open blocks until
# the daemon opens it for writing, and `read -d ''` takes the release whole,
# newlines inside words included, to EOF. The shell is PID 1 of its
# container, where a signal without a handler is ignored: the TERM trap makes
# a stop at the gate immediate (the blocked open is interrupted, the trap
# runs), where a shell waiting on a child (`$(cat FIFO)`) would hold it until
# the stop timeout's SIGKILL.
GATE_SCRIPT = (f"trap 'exit {EXIT_TERMINATED}' TERM INT; "
               f"read -r -d '' p 2>/dev/null < {GATE_FIFO}; "
               f'[ -n "$p" ] && eval "set -- $p" && exec "$@"; '
               f'echo "podvm-gate: not released" >&2; exit {EXIT_NOT_RELEASED}')
POLL = 0.005                            # between attempts to find the gate's reader


class GateError(BootstrapError):
    """The gate could not be released (no container waiting, or nothing to run)."""


def gate_entrypoint() -> str:
    """podman's --entrypoint value (a JSON array): the gate's shell and script;
    `podvm-gate` is its $0."""
    return json.dumps([GATE_SHELL, "sh", "-c", GATE_SCRIPT, "podvm-gate"])


def gate_dir(state_dir: Path) -> Path:
    """Where the FIFOs live: the daemon's state directory (root's, on /run)."""
    return state_dir / "gates"


def unit_gate_dir(root: Path, state_dir: Path) -> str:
    """The gates' directory as the pod VM sees it, for the units (they run
    there): without the --root prefix, like every other path in a unit."""
    try:
        return "/" + str(gate_dir(state_dir).relative_to(root))
    except ValueError:
        return str(gate_dir(state_dir))


def gate_key(container_argv: list[str]) -> str:
    """The key binding a FIFO to one container definition: the sha256 of its
    podman argv without the FIFO itself (the argv names the image by digest
    and every container setting)."""
    return hashlib.sha256(json.dumps(container_argv).encode()).hexdigest()


def fifo_path(gate_dir: str | Path, name: str, key: str) -> str:
    return f"{str(gate_dir).rstrip('/')}/{name}/{key}.fifo"


SHELL_VOLUME = f"{GATE_BUSYBOX}:{GATE_SHELL}:ro"


def fifo_volume(gate_dir: str | Path, name: str, key: str) -> str:
    return f"{fifo_path(gate_dir, name, key)}:{GATE_FIFO}:ro"


def gate_volumes(gate_dir: str | Path, name: str, key: str) -> list[str]:
    return [SHELL_VOLUME, fifo_volume(gate_dir, name, key)]


def exec_argv(config: dict[str, Any], command: tuple[str, ...] | list[str]) -> list[str]:
    """What podman itself would run: the image's Entrypoint, then the
    manifest's command or, without one, the image's Cmd (docker semantics)."""
    inner = config.get("config") if isinstance(config, dict) else None
    inner = inner if isinstance(inner, dict) else {}

    def words(key: str) -> list[str]:
        value = inner.get(key)
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise GateError(f"the image config's {key} is not a list of strings")
        return list(value)
    argv = words("Entrypoint") + (list(command) if command else words("Cmd"))
    if not argv or not argv[0]:
        raise GateError("the image has no entrypoint and no command, and the manifest gives none")
    if any("\0" in w for w in argv):
        raise GateError("the argv to run carries a NUL character")
    return argv


def release_payload(argv: list[str]) -> bytes:
    """The argv as words for `eval "set -- $p"`: each single-quoted, a quote
    inside as '\\''; nothing in a word is interpreted by the shell."""
    return (" ".join("'" + w.replace("'", "'\\''") + "'" for w in argv) + "\n").encode()


def prepare_fifo(gate_dir: Path, name: str, key: str) -> Path:
    """The FIFO of a component's container definition (key: gate_key), made
    once per boot (/run is a tmpfs). An existing FIFO is kept: a container
    waiting at its gate holds that very inode."""
    (gate_dir / name).mkdir(mode=0o755, parents=True, exist_ok=True)
    path = Path(fifo_path(gate_dir, name, key))
    try:
        st = os.lstat(path)
        if stat.S_ISFIFO(st.st_mode) and st.st_uid == os.geteuid():
            return path
        path.unlink()
    except FileNotFoundError:
        pass
    os.mkfifo(path, 0o644)   # readable by a container's non-root user, writable by root only
    os.chmod(path, 0o644)     # mkfifo's mode is masked by the umask
    return path


def remove_other_fifos(gate_dir: Path, name: str, keep: str | None) -> list[str]:
    """Remove the component's FIFOs of other definitions than `keep` (its
    unit was replaced; None: it no longer runs); the keys removed. A container
    still bound to one keeps the inode and waits until its unit stops it: no
    release is ever written to it."""
    removed: list[str] = []
    try:
        entries = sorted((gate_dir / name).iterdir())
    except FileNotFoundError:
        return removed
    for path in entries:
        key = path.name.removesuffix(".fifo")
        if path.name.endswith(".fifo") and key != keep:
            path.unlink(missing_ok=True)
            removed.append(key)
    return removed


def open_waiting_gate(path: Path, deadline: float, *, clock: Callable[[], float] = time.monotonic,
                      sleep: Callable[[float], None] = time.sleep) -> int | None:
    """A write end on the FIFO once a container waits at it (a reader exists),
    polled until `deadline`; None when none came. With deadline <= now: one
    look. The open does not block: without a reader Linux answers ENXIO."""
    while True:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno != errno.ENXIO:
                raise GateError(f"cannot open the gate {path}: {exc.strerror}") from None
        else:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
            raise GateError(f"the gate {path} is not a FIFO")
        if clock() >= deadline:
            return None
        sleep(POLL)


def release(fd: int, argv: list[str]) -> None:
    """Hand the argv to the waiting gate and close: the gate reads to EOF."""
    try:
        os.set_blocking(fd, True)
        data = release_payload(argv)
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)
