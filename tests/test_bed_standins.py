"""The stand-in components behave as the tests of podvm-bootstrap rely on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.bed.proc import BedError, free_port, wait_until
from tests.standins import images as standins


def answer(address) -> str:
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(2)
        s.connect(address)
        return s.recv(256).decode()


def answers(address) -> bool:
    try:
        return answer(address) != ""
    except OSError:
        return False


class Standin:
    def __init__(self, binary: Path, *args: str, env: dict | None = None) -> None:
        self.popen = subprocess.Popen([str(binary), *args], stderr=subprocess.PIPE, text=True,
                                      env={**os.environ, **(env or {})})

    def wait_answering(self, address) -> None:
        deadline = time.monotonic() + 10
        while not answers(address):
            assert self.popen.poll() is None, self.popen.stderr.read()
            assert time.monotonic() < deadline, "the stand-in never answered"
            time.sleep(0.05)

    def exit_code(self, timeout: float = 10) -> int:
        return self.popen.wait(timeout)

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


@pytest.fixture
def started(request):
    procs: list[Standin] = []

    def start(binary: Path, *args: str, env: dict | None = None) -> Standin:
        p = Standin(binary, *args, env=env)
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.kill()


@pytest.fixture
def control(tmp_path) -> Path:
    d = tmp_path / "control"
    d.mkdir()
    return d


def test_attestation_agent_answers_on_its_socket_with_a_valid_config(standin_bin, started, tmp_path, control):
    config = tmp_path / "aa.toml"
    config.write_text("# comment\n[token_configs]\n\n[token_configs.kbs]\nurl = \"http://127.0.0.1:8080\"\n")
    sock = str(tmp_path / "aa.sock")
    aa = started(standin_bin("attestation-agent"), "-c", str(config), "--socket", sock,
                 env={"STANDIN_CONTROL_DIR": str(control)})
    aa.wait_answering(sock)
    assert answer(sock) == "attestation-agent standin v1\n"


@pytest.mark.parametrize("content", [None, "this is not toml\n", "[ok]\n= no key\n"])
def test_attestation_agent_refuses_a_missing_or_unparseable_config(standin_bin, started, tmp_path, content):
    config = tmp_path / "aa.toml"
    if content is not None:
        config.write_text(content)
    aa = started(standin_bin("attestation-agent"), "-c", str(config), "--socket", str(tmp_path / "aa.sock"))
    assert aa.exit_code() != 0
    assert not (tmp_path / "aa.sock").exists()


def test_kata_agent_answers_and_exits_cleanly_on_sigterm(standin_bin, started, tmp_path):
    sock = str(tmp_path / "agent.sock")
    kata = started(standin_bin("kata-agent"), "--socket", sock)
    kata.wait_answering(sock)
    assert answer(sock) == "kata-agent standin v1\n"
    kata.popen.send_signal(signal.SIGTERM)
    assert kata.exit_code() == 0


def test_ignore_sigterm_keeps_answering_after_sigterm(standin_bin, started, tmp_path):
    sock = str(tmp_path / "agent.sock")
    kata = started(standin_bin("kata-agent"), "--socket", sock, "--ignore-sigterm")
    kata.wait_answering(sock)
    kata.popen.send_signal(signal.SIGTERM)  # ignored signals are discarded when sent
    assert answer(sock) == "kata-agent standin v1\n"
    assert kata.popen.poll() is None


def test_forwarder_refuses_to_start_without_the_kata_agent_socket(standin_bin, started, tmp_path):
    apf = started(standin_bin("agent-protocol-forwarder"), "--requires", str(tmp_path / "missing.sock"),
                  "--listen", f"127.0.0.1:{free_port()}")
    assert apf.exit_code() == 1
    assert "does not exist" in apf.popen.stderr.read()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_forwarder_answers_on_tcp_with_its_version(standin_bin, started, tmp_path, version):
    (tmp_path / "agent.sock").touch()
    port = free_port()
    apf = started(standin_bin("agent-protocol-forwarder", version), "--requires", str(tmp_path / "agent.sock"),
                  "--listen", f"127.0.0.1:{port}")
    apf.wait_answering(("127.0.0.1", port))
    assert answer(("127.0.0.1", port)) == f"agent-protocol-forwarder standin {version}\n"


def _kata(standin_bin, started, tmp_path, control):
    sock = str(tmp_path / "agent.sock")
    kata = started(standin_bin("kata-agent"), "--socket", sock, env={"STANDIN_CONTROL_DIR": str(control)})
    kata.wait_answering(sock)
    return kata, sock


def test_crash_control_file_and_sigusr1_crash_it(standin_bin, started, tmp_path, control):
    kata, _ = _kata(standin_bin, started, tmp_path, control)
    (control / "kata-agent.crash").touch()
    assert kata.exit_code() == 70
    (control / "kata-agent.crash").unlink()
    kata, _ = _kata(standin_bin, started, tmp_path, control)
    kata.popen.send_signal(signal.SIGUSR1)
    assert kata.exit_code() == 70


@pytest.mark.parametrize("how", ["file", "signal"])
def test_hang_stops_answering_but_keeps_the_process(standin_bin, started, tmp_path, control, how):
    kata, sock = _kata(standin_bin, started, tmp_path, control)
    if how == "file":
        (control / "kata-agent.hang").touch()
    else:
        kata.popen.send_signal(signal.SIGUSR2)
    wait_until(lambda: not answers(sock), 15, "the stand-in to stop answering")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        s.connect(sock)  # the listener is still there...
        with pytest.raises(socket.timeout):
            s.recv(256)   # ...but nobody answers
    assert kata.popen.poll() is None


def test_unlisten_closes_the_listener_and_stays_alive(standin_bin, started, tmp_path, control):
    kata, sock = _kata(standin_bin, started, tmp_path, control)
    (control / "kata-agent.unlisten").touch()
    wait_until(lambda: not answers(sock), 10, "the listener to close")
    assert kata.popen.poll() is None


def test_ready_is_notified_when_notify_socket_is_set(standin_bin, started, tmp_path):
    notify = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind(str(notify))
        s.settimeout(10)
        started(standin_bin("kata-agent"), "--socket", str(tmp_path / "agent.sock"),
                env={"NOTIFY_SOCKET": str(notify)})
        assert s.recv(64) == b"READY=1"


def test_probe_mode_prints_the_answer(standin_bin, started, tmp_path):
    sock = str(tmp_path / "agent.sock")
    kata = started(standin_bin("kata-agent"), "--socket", sock)
    kata.wait_answering(sock)
    out = subprocess.run([str(standin_bin("kata-agent")), "probe", "unix", sock], capture_output=True, text=True)
    assert (out.returncode, out.stdout) == (0, "kata-agent standin v1\n")
    gone = subprocess.run([str(standin_bin("kata-agent")), "probe", "unix", str(tmp_path / "none")],
                          capture_output=True, text=True)
    assert gone.returncode == 1


def test_images_are_reproducible_and_versions_differ(tmp_path, standin_images):
    rebuilt = standins.build_all(tmp_path / "again")
    assert {k: v.digest for k, v in rebuilt.items()} == {k: v.digest for k, v in standin_images.items()}
    digests = {v.digest for v in standin_images.values()}
    assert len(digests) == len(standin_images)  # v1, v2 and padded of the forwarder all differ
    padded = standin_images[("agent-protocol-forwarder", "padded")]
    assert sum(f.stat().st_size for f in (padded.layout / "blobs").rglob("*")) > 45 * 1024 * 1024
    assert standin_images[("agent-protocol-forwarder", "v2")].version_line == "agent-protocol-forwarder standin v2"


def test_wait_until_is_bounded():
    with pytest.raises(BedError, match="timed out"):
        wait_until(lambda: False, 0.2, "nothing")
