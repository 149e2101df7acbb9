"""A software TPM on loopback for the tests (Debian's swtpm), and tpm2-tools
as the independent reader of it.

    with running_swtpm(tmp_path) as tpm:
        tpm.tcti                      # "swtpm:host=127.0.0.1,port=P" (measure.tpm)
        tpm.pcrread(23)               # bytes, read with tpm2_pcrread
        tpm.quoted_pcr(23)            # bytes, from a quote checked with tpm2_checkquote
        tpm.quoted_pcrs(8, 23)        # {8: bytes, 23: bytes}, from one quote

swtpm is started on free ports and stopped by its PID. It serves one
connection at a time: every client opens, uses and closes it."""

from __future__ import annotations

import os
import re
import secrets
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.bed.proc import BedError, Service, free_port, port_open

TOOL_TIMEOUT = 60


class Swtpm:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "state").mkdir(parents=True, exist_ok=True)
        # The swtpm TCTI finds the control channel at the server's port + 1.
        self.port = _free_port_pair()
        self.ctrl_port = self.port + 1
        self.service = Service("swtpm", [
            "swtpm", "socket", "--tpm2", "--tpmstate", f"dir={workdir / 'state'}",
            "--server", f"type=tcp,port={self.port},bindaddr=127.0.0.1",
            "--ctrl", f"type=tcp,port={self.ctrl_port},bindaddr=127.0.0.1",
            "--flags", "not-need-init,startup-clear"], workdir / "swtpm.log")
        self.service.wait_ready(lambda: port_open(self.ctrl_port), 20, "listening")
        self._ak: Path | None = None

    @property
    def tcti(self) -> str:
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def pid(self) -> int:
        return self.service.pid

    def tool(self, *argv: str) -> subprocess.CompletedProcess:
        """Run a tpm2-tools command against this TPM (in its work directory)."""
        env = {**os.environ, "TPM2TOOLS_TCTI": self.tcti}
        out = subprocess.run(list(argv), cwd=self.workdir, env=env, capture_output=True, text=True,
                             timeout=TOOL_TIMEOUT)
        if out.returncode != 0:
            raise BedError(f"{' '.join(argv)} exited {out.returncode}: {out.stderr.strip()[:2000]}")
        return out

    def pcrread(self, pcr: int) -> bytes:
        """PCR `pcr`'s sha256 value, as tpm2_pcrread reads it."""
        out = self.tool("tpm2_pcrread", f"sha256:{pcr}").stdout
        match = re.search(rf"^\s*{pcr}\s*:\s*0x([0-9A-Fa-f]{{64}})\s*$", out, re.M)
        if match is None:
            raise BedError(f"tpm2_pcrread printed no sha256 value for PCR {pcr}: {out!r}")
        return bytes.fromhex(match.group(1))

    def extend(self, pcr: int, digest_hex: str) -> None:
        self.tool("tpm2_pcrextend", f"{pcr}:sha256={digest_hex}")

    def quoted_pcr(self, pcr: int) -> bytes:
        """PCR `pcr` as a relying party sees it (see quoted_pcrs)."""
        return self.quoted_pcrs(pcr)[pcr]

    def quoted_pcrs(self, *pcrs: int) -> dict[int, bytes]:
        """PCRs as a relying party sees them: one quote over a fresh nonce by
        an attestation key made under the endorsement key, checked with
        tpm2_checkquote (signature, nonce, PCR digest). Returns the quoted
        sha256 values."""
        if self._ak is None:
            # No resource manager in front of swtpm: transient objects are
            # flushed after each command, or the TPM runs out of object slots.
            self.tool("tpm2_createek", "-c", "ek.ctx", "-G", "ecc", "-u", "ek.pub")
            self.tool("tpm2_flushcontext", "-t")
            self.tool("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256", "-s", "ecdsa",
                      "-u", "ak.pem", "-f", "pem", "-n", "ak.name")
            self.tool("tpm2_flushcontext", "-t")
            self.tool("tpm2_flushcontext", "-s")
            self._ak = self.workdir / "ak.pem"
        nonce = secrets.token_hex(16)
        selection = "sha256:" + ",".join(str(p) for p in pcrs)
        self.tool("tpm2_quote", "-c", "ak.ctx", "-l", selection, "-q", nonce, "-m", "quote.msg",
                  "-s", "quote.sig", "-o", "quote.pcrs", "-g", "sha256")
        self.tool("tpm2_flushcontext", "-t")
        out = self.tool("tpm2_checkquote", "-u", "ak.pem", "-m", "quote.msg", "-s", "quote.sig",
                        "-f", "quote.pcrs", "-g", "sha256", "-q", nonce).stdout
        values = {}
        for pcr in pcrs:
            match = re.search(rf"^\s*{pcr}\s*:\s*0x([0-9A-Fa-f]{{64}})\s*$", out, re.M)
            if match is None:
                raise BedError(f"tpm2_checkquote printed no sha256 value for PCR {pcr}: {out!r}")
            values[pcr] = bytes.fromhex(match.group(1))
        return values

    def stop(self) -> None:
        self.service.stop()


def _free_port_pair(attempts: int = 50) -> int:
    for _ in range(attempts):
        port = free_port()
        if port < 65535 and not port_open(port + 1):
            try:
                with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
                    s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
            return port
    raise BedError(f"no two free consecutive ports on 127.0.0.1 in {attempts} attempts")


@contextmanager
def running_swtpm(workdir: Path) -> Iterator[Swtpm]:
    """A fresh swtpm (every PCR at its reset value) for the block; stopped by PID after."""
    tpm = Swtpm(workdir)
    try:
        yield tpm
    finally:
        tpm.stop()
