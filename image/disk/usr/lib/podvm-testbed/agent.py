"""TEST BED ONLY: runs the commands a test host sends over a virtio-serial port.

One JSON line per request, {"id": N, "argv": [...], "timeout": S, "input": B64},
one JSON line per answer, {"id": N, "rc": RC, "stdout": B64, "stderr": B64}
(rc -1 and "timeout": true when the command outlived its timeout). Without the
port (no test host attached it) it exits within a minute."""

import base64
import json
import os
import subprocess
import sys
import time

MAX_LINE = 1 << 20


def answer(fd: int, doc: dict) -> None:
    data = json.dumps(doc).encode() + b"\n"
    while data:
        data = data[os.write(fd, data):]


def handle(fd: int, line: bytes) -> None:
    try:
        req = json.loads(line)
        argv, timeout = req["argv"], float(req.get("timeout", 60))
        data = base64.b64decode(req["input"]) if req.get("input") else None
    except (ValueError, KeyError, TypeError) as exc:
        answer(fd, {"id": None, "rc": -2, "stdout": "", "stderr": base64.b64encode(str(exc).encode()).decode()})
        return
    doc = {"id": req.get("id")}
    try:
        done = subprocess.run(argv, input=data, capture_output=True, timeout=timeout,
                              stdin=None if data is not None else subprocess.DEVNULL)
        doc.update(rc=done.returncode, stdout=done.stdout, stderr=done.stderr)
    except subprocess.TimeoutExpired as exc:
        doc.update(rc=-1, timeout=True, stdout=exc.stdout or b"", stderr=exc.stderr or b"")
    except OSError as exc:
        doc.update(rc=127, stdout=b"", stderr=str(exc).encode())
    doc["stdout"] = base64.b64encode(doc["stdout"]).decode()
    doc["stderr"] = base64.b64encode(doc["stderr"]).decode()
    answer(fd, doc)


def main(port: str) -> int:
    for _ in range(300):
        if os.path.exists(port):
            break
        time.sleep(0.2)
    else:
        return 0
    fd = os.open(port, os.O_RDWR)
    buf = b""
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:  # no host on the other end (yet)
            time.sleep(0.2)
            continue
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            if line.strip():
                handle(fd, line)
        if len(buf) > MAX_LINE:
            buf = b""


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
