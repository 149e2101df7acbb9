"""The daemon's user-data fetch in a child process (stages.ChildFetch),
against the fake metadata services on loopback: the same answer, the same
one-line errors as the fetch in-process, and no HTTP library in the daemon."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from podvm_bootstrap.common.errors import UsageError, UserDataError
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import PROVIDERS, UserDataSettings
from podvm_bootstrap.runtime.stages import ChildFetch, UserDataSource, read_raw_userdata
from tests.fakes.metadata import running_metadata_server

REPO = Path(__file__).resolve().parent.parent
USER_DATA = b"#cloud-config\nwrite_files: []\n"


def settings_for(url: str, provider: str, max_size: int = 256 * 1024) -> UserDataSettings:
    return UserDataSettings(provider=provider, max_size=max_size, timeout=20.0,
                            endpoints={p: url for p in PROVIDERS})


def no_child_left(pid: int) -> bool:
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return True
    return False


@pytest.mark.parametrize("cloud", ["aws", "azure", "gcp", "alibaba"])
def test_the_child_hands_back_what_the_service_serves(tmp_path: Path, cloud: str) -> None:
    with running_metadata_server(cloud, user_data=USER_DATA) as fake:
        child = ChildFetch.start(Paths.build(root=str(tmp_path)), settings_for(fake.url, cloud), UserDataSource())
        assert child.result() == USER_DATA
    assert no_child_left(child.pid or 0)


def test_no_user_data_is_none(tmp_path: Path) -> None:
    with running_metadata_server("aws", user_data=None) as fake:
        child = ChildFetch.start(Paths.build(root=str(tmp_path)), settings_for(fake.url, "aws"), UserDataSource())
        assert child.result() is None


def test_errors_are_the_in_process_fetchs_own_lines(tmp_path: Path) -> None:
    paths = Paths.build(root=str(tmp_path))
    with running_metadata_server("aws", user_data=b"x" * 2048) as fake:
        settings = settings_for(fake.url, "aws", max_size=1024)
        with pytest.raises(UserDataError) as inline:
            read_raw_userdata(paths, settings, UserDataSource())
        with pytest.raises(UserDataError) as forked:
            ChildFetch.start(paths, settings, UserDataSource()).result()
    assert str(forked.value) == str(inline.value) and "larger than" in str(forked.value)
    with pytest.raises(UsageError, match="endpoint must be an http:// or https:// URL"):
        ChildFetch.start(paths, settings_for("ftp://127.0.0.1/", "aws"), UserDataSource()).result()


def test_a_child_still_fetching_is_ended_by_its_pid(tmp_path: Path) -> None:
    with running_metadata_server("aws", user_data=USER_DATA, delay=30.0) as fake:
        child = ChildFetch.start(Paths.build(root=str(tmp_path)), settings_for(fake.url, "aws"), UserDataSource())
        pid = child.pid
        child.close()
        assert child.pid == 0 and no_child_left(pid)


def test_the_daemon_never_loads_the_http_library(tmp_path: Path) -> None:
    """In a fresh interpreter: the fetch through the child leaves requests,
    and urllib3 out of the parent's modules."""
    code = (
        "import sys\n"
        "from tests.fakes.metadata import running_metadata_server\n"
        "from podvm_bootstrap.common.paths import Paths\n"
        "from podvm_bootstrap.config.settings import PROVIDERS, UserDataSettings\n"
        "from podvm_bootstrap.runtime.stages import ChildFetch, UserDataSource\n"
        "import http.server, threading\n"   # the fake server's own needs, loaded before the check
        "loaded = [m for m in ('requests', 'urllib3') if m in sys.modules]\n"
        "with running_metadata_server('aws', user_data=b'hi') as fake:\n"
        "    s = UserDataSettings(provider='aws', endpoints={p: fake.url for p in PROVIDERS})\n"
        f"    data = ChildFetch.start(Paths.build(root={str(tmp_path)!r}), s, UserDataSource()).result()\n"
        "print(data, loaded, [m for m in ('requests', 'urllib3') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "b'hi' [] []"


def test_a_fetch_that_outlives_its_deadline_is_ended(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What the fetch's own deadline cannot cut (a stalled DNS lookup in the C
    library) stands in here as a fetch that sleeps: the daemon's wait ends at
    the fetch timeout plus the grace, and the child is ended and reaped."""
    import time

    from podvm_bootstrap.runtime import stages

    monkeypatch.setattr(stages, "read_raw_userdata", lambda *args: time.sleep(120))
    monkeypatch.setattr(ChildFetch, "GRACE", 0.2)
    child = ChildFetch.start(Paths.build(root=str(tmp_path)), settings_for("http://127.0.0.1:9", "aws"),
                             UserDataSource(timeout=0.1))
    pid = child.pid
    with pytest.raises(UserDataError, match=r"^cannot fetch user-data: the fetch was still running 0.2s after its "
                                            r"timeout, and was ended$"):
        child.result()
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no such child any more
