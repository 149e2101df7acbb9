"""Each metadata provider against a real fake metadata service on 127.0.0.1."""

from __future__ import annotations

import base64
import re
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest
import requests

from podvm_bootstrap.common.errors import UsageError, UserDataError
from podvm_bootstrap.config.settings import PROVIDERS, UserDataSettings
from podvm_bootstrap.userdata.sources import RetryPolicy, fetch_userdata
from tests.fakes.metadata import AWS_TOKEN, drip, head, running_metadata_server, running_raw_server, send_then_close

T = TypeVar("T")
FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, attempt_timeout=2.0)
USER_DATA = b"#cloud-config\nwrite_files: []\n# binary tail: \x00\xff\xfe\n"
AWS_TTL = "X-aws-ec2-metadata-token-ttl-seconds"
AWS_TOKEN_HEADER = "X-aws-ec2-metadata-token"


def settings_for(url: str, provider: str, max_size: int = 256 * 1024) -> UserDataSettings:
    return UserDataSettings(provider=provider, max_size=max_size, endpoints={p: url for p in PROVIDERS})


def fetch(cloud: str, url: str, *, timeout: float = 5.0, retry: RetryPolicy = FAST,
          max_size: int = 256 * 1024, root: Path = Path("/nonexistent-root")) -> bytes | None:
    return bounded(lambda: fetch_userdata(settings_for(url, cloud, max_size), root=root,
                                          timeout=timeout, retry=retry))


def bounded(fn: Callable[[], T], limit: float = 30.0) -> T:
    """Run fn in a thread; fail the test (rather than hang) if it does not return."""
    outcome: dict[str, object] = {}

    def target() -> None:
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(limit)
    assert not thread.is_alive(), f"fetch still running after {limit}s: not bounded by its deadline"
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def raw_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def attempts_in(error: BaseException) -> int:
    match = re.search(r"\((\d+) attempts?,", str(error))
    assert match, f"no attempt count in {error}"
    return int(match.group(1))


# --- success, for every cloud ------------------------------------------------------

@pytest.mark.parametrize("cloud, behaviour", [
    ("azure", {}),
    ("aws", {}),
    ("gcp", {}),
    ("gcp", {"gcp_encoding": "base64"}),
    ("alibaba", {}),
])
def test_fetches_user_data_with_transport_encoding_removed(cloud, behaviour):
    with running_metadata_server(cloud, user_data=USER_DATA, **behaviour) as fake:
        assert fetch(cloud, fake.url) == USER_DATA


def test_gcp_plain_user_data_that_looks_like_base64_is_not_decoded():
    text = base64.b64encode(b"hello")
    with running_metadata_server("gcp", user_data=text) as fake:
        assert fetch("gcp", fake.url) == text
    assert [r.path.rsplit("/", 1)[1] for r in fake.requests] == ["user-data", "user-data-encoding"]


def test_gcp_unknown_encoding_is_an_error():
    with running_metadata_server("gcp", user_data=b"x", gcp_encoding="rot13") as fake:
        with pytest.raises(UserDataError, match="gcp: unsupported user-data-encoding 'rot13'"):
            fetch("gcp", fake.url)


# --- header and token rules: the fake enforces them, the client follows them -------

def test_azure_fake_refuses_a_request_without_the_metadata_header():
    with running_metadata_server("azure", user_data=USER_DATA) as fake, raw_session() as s:
        url = fake.url + "/metadata/instance/compute/userData?api-version=2021-01-01&format=text"
        assert s.get(url).status_code == 400
        assert s.get(url, headers={"Metadata": "true"}).content == base64.b64encode(USER_DATA)


def test_azure_client_sends_metadata_header_and_api_version():
    with running_metadata_server("azure", user_data=USER_DATA) as fake:
        fetch("azure", fake.url)
    [request] = fake.requests
    assert request.method == "GET"
    assert request.path == "/metadata/instance/compute/userData?api-version=2021-01-01&format=text"
    assert request.header("Metadata") == "true"


def test_gcp_fake_refuses_a_request_without_metadata_flavor():
    with running_metadata_server("gcp", user_data=USER_DATA) as fake, raw_session() as s:
        url = fake.url + "/computeMetadata/v1/instance/attributes/user-data"
        assert s.get(url).status_code == 403
        assert s.get(url, headers={"Metadata-Flavor": "Google"}).content == USER_DATA


def test_gcp_client_sends_metadata_flavor_on_every_request():
    with running_metadata_server("gcp", user_data=USER_DATA, gcp_encoding="base64") as fake:
        fetch("gcp", fake.url)
    assert len(fake.requests) == 2
    assert all(r.header("Metadata-Flavor") == "Google" for r in fake.requests)


def test_aws_fake_requires_a_token_and_a_ttl():
    with running_metadata_server("aws", user_data=USER_DATA) as fake, raw_session() as s:
        assert s.get(fake.url + "/latest/user-data").status_code == 401
        assert s.put(fake.url + "/latest/api/token").status_code == 400
        token = s.put(fake.url + "/latest/api/token", headers={AWS_TTL: "60"}).text
        assert s.get(fake.url + "/latest/user-data", headers={AWS_TOKEN_HEADER: token}).content == USER_DATA


def test_aws_uses_imdsv2_and_never_asks_without_the_token():
    with running_metadata_server("aws", user_data=USER_DATA) as fake:
        assert fetch("aws", fake.url) == USER_DATA
    put, get = fake.requests
    assert (put.method, put.path, put.header(AWS_TTL)) == ("PUT", "/latest/api/token", "21600")
    assert (get.method, get.path, get.header(AWS_TOKEN_HEADER)) == ("GET", "/latest/user-data", AWS_TOKEN)


@pytest.mark.parametrize("token_status", [403, 404, 405])
def test_aws_falls_back_to_imdsv1_when_the_token_call_is_refused(token_status):
    with running_metadata_server("aws", user_data=USER_DATA, imdsv1_only=True,
                                 token_status=token_status) as fake:
        assert fetch("aws", fake.url) == USER_DATA
    put, get = fake.requests  # the refusal is not retried
    assert put.method == "PUT"
    assert (get.method, get.header(AWS_TOKEN_HEADER)) == ("GET", None)


@pytest.mark.parametrize("token_status", [400, 401])
def test_aws_other_token_refusals_are_errors_not_a_fallback(token_status):
    with running_metadata_server("aws", user_data=USER_DATA, imdsv1_only=True,
                                 token_status=token_status) as fake:
        with pytest.raises(UserDataError, match=f"aws: IMDSv2 token .* HTTP {token_status}"):
            fetch("aws", fake.url)
    assert [r.method for r in fake.requests] == ["PUT"]


@pytest.mark.parametrize("token", ["", "tok\r\nX-Injected: 1", "tok en"])
def test_aws_malformed_token_is_an_error_and_never_sent(token):
    with running_metadata_server("aws", user_data=USER_DATA, aws_token=token) as fake:
        with pytest.raises(UserDataError, match="aws: IMDSv2 token is malformed"):
            fetch("aws", fake.url)
    assert [r.method for r in fake.requests] == ["PUT"]


def test_aws_token_call_5xx_is_retried_then_imdsv2_is_used():
    with running_metadata_server("aws", user_data=USER_DATA, failures=2) as fake:
        assert fetch("aws", fake.url) == USER_DATA
    assert [r.method for r in fake.requests] == ["PUT", "PUT", "PUT", "GET"]
    assert fake.requests[-1].header(AWS_TOKEN_HEADER) == AWS_TOKEN


def test_aws_429_is_retried():
    with running_metadata_server("aws", user_data=USER_DATA, failures=2, failure_status=429) as fake:
        assert fetch("aws", fake.url) == USER_DATA
    assert len(fake.requests) == 4


# --- retries, timeouts, refusals -----------------------------------------------------

@pytest.mark.parametrize("cloud", ["azure", "aws", "gcp", "alibaba"])
def test_5xx_answers_are_retried_until_success(cloud):
    with running_metadata_server(cloud, user_data=USER_DATA, failures=3, failure_status=500) as fake:
        assert fetch(cloud, fake.url) == USER_DATA
    # 3 failed attempts + the requests of a success (aws: token + get; gcp: data + encoding)
    assert len(fake.requests) == 3 + {"azure": 1, "aws": 2, "gcp": 2, "alibaba": 1}[cloud]


def test_5xx_until_the_deadline_is_an_error_naming_provider_and_status():
    with running_metadata_server("alibaba", user_data=USER_DATA, failures=10**6) as fake:
        with pytest.raises(UserDataError, match=r"^alibaba: cannot fetch user-data .*within 1s .*HTTP 503") as info:
            fetch("alibaba", fake.url, timeout=1.0)
    assert attempts_in(info.value) == len(fake.requests) >= 2


def test_an_attempt_cut_at_the_deadline_still_names_the_last_answer():
    first, hang = send_then_close(head("503 Service Unavailable")), drip(head(), b" ", 0.05)
    served = []

    def answer(conn: socket.socket, stop: threading.Event) -> None:
        served.append(1)
        (first if len(served) == 1 else hang)(conn, stop)

    with running_raw_server(answer) as server:
        with pytest.raises(UserDataError) as info:
            fetch("alibaba", server.url, timeout=1.0)
    assert str(info.value).endswith("(2 attempts, last: cut at the deadline; before: HTTP 503)"), info.value


@pytest.mark.parametrize("cloud, requests_made", [("aws", 2), ("gcp", 1), ("alibaba", 1)])
def test_404_means_no_user_data_and_is_not_retried(cloud, requests_made):
    with running_metadata_server(cloud, user_data=None) as fake:
        assert fetch(cloud, fake.url) is None
    assert len(fake.requests) == requests_made
    assert [r.method for r in fake.requests].count("GET") == 1


def test_azure_empty_body_means_no_user_data():
    with running_metadata_server("azure", user_data=None) as fake:
        assert fetch("azure", fake.url) is None
    assert len(fake.requests) == 1


@pytest.mark.parametrize("status", [400, 401, 403])
def test_other_4xx_fails_at_once(status):
    with running_metadata_server("alibaba", user_data=USER_DATA, answer_status=status) as fake:
        with pytest.raises(UserDataError, match=f"alibaba: user-data .* refused: HTTP {status}"):
            fetch("alibaba", fake.url)
    assert len(fake.requests) == 1


def test_redirects_are_not_followed():
    with running_metadata_server("alibaba", user_data=USER_DATA, answer_status=302) as fake:
        with pytest.raises(UserDataError, match="HTTP 302 .redirects are not followed"):
            fetch("alibaba", fake.url)
    assert len(fake.requests) == 1


def test_slow_answers_beyond_the_timeout_are_an_error():
    with running_metadata_server("alibaba", user_data=USER_DATA, delay=20.0) as fake:
        with pytest.raises(UserDataError, match=r"alibaba: .*within 0.4s .*cut at the deadline") as info:
            fetch("alibaba", fake.url, timeout=0.4)
    # one attempt, cut at the deadline (not at the 2s attempt cap, not at the 20s answer)
    assert attempts_in(info.value) == 1
    assert len(fake.requests) == 1


def test_a_slow_answer_is_abandoned_at_the_attempt_cap_and_retried():
    retry = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, attempt_timeout=0.3)
    with running_metadata_server("alibaba", user_data=USER_DATA, delay=20.0, delayed=1) as fake:
        assert fetch("alibaba", fake.url, timeout=10.0, retry=retry) == USER_DATA
    assert len(fake.requests) == 2


def test_connection_refused_is_retried_until_the_deadline():
    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(UserDataError, match=r"^aws: cannot fetch IMDSv2 token .*connection failed") as info:
        fetch("aws", url, timeout=0.5)
    assert attempts_in(info.value) >= 2


# --- bodies that are refused --------------------------------------------------------

def test_azure_invalid_base64_is_an_error():
    with running_metadata_server("azure", user_data=USER_DATA, garbage=True) as fake:
        with pytest.raises(UserDataError, match="azure: user-data is not valid base64"):
            fetch("azure", fake.url)
    assert len(fake.requests) == 1  # a bad body is not retried


def test_gcp_invalid_base64_is_an_error():
    with running_metadata_server("gcp", user_data=USER_DATA, garbage=True, gcp_encoding="base64") as fake:
        with pytest.raises(UserDataError, match="gcp: user-data is not valid base64"):
            fetch("gcp", fake.url)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "no-content-length"])
@pytest.mark.parametrize("cloud", ["aws", "alibaba", "gcp", "azure"])
def test_oversize_bodies_are_refused(cloud, chunked):
    with running_metadata_server(cloud, oversize=4 * 1024 * 1024, chunked=chunked) as fake:
        with pytest.raises(UserDataError, match=f"^{cloud}: user-data .*larger than"):
            fetch(cloud, fake.url, max_size=1000)


@pytest.mark.parametrize("cloud, behaviour", [
    ("alibaba", {}), ("aws", {}), ("azure", {}), ("gcp", {}), ("gcp", {"gcp_encoding": "base64"})])
def test_max_size_is_inclusive_and_one_more_byte_is_refused(cloud, behaviour):
    with running_metadata_server(cloud, user_data=b"a" * 1000, **behaviour) as fake:
        assert fetch(cloud, fake.url, max_size=1000) == b"a" * 1000
    with running_metadata_server(cloud, user_data=b"a" * 1001, **behaviour) as fake:
        with pytest.raises(UserDataError, match="larger than"):
            fetch(cloud, fake.url, max_size=1000)


# --- the edges of fetch_userdata ----------------------------------------------------

def test_proxies_from_the_environment_are_ignored(monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead_proxy = f"http://127.0.0.1:{s.getsockname()[1]}"
    for name in ("HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(name, dead_proxy)
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    with running_metadata_server("alibaba", user_data=USER_DATA) as fake:
        assert fetch("alibaba", fake.url) == USER_DATA


def test_explicit_endpoint_overrides_the_settings():
    with running_metadata_server("alibaba", user_data=USER_DATA) as fake:
        settings = settings_for("http://127.0.0.1:9", "alibaba")
        assert fetch_userdata(settings, root=Path("/nonexistent"), endpoint=fake.url + "/",
                              timeout=5, retry=FAST) == USER_DATA


def test_settings_timeout_is_used_when_none_is_given():
    with running_metadata_server("alibaba", user_data=USER_DATA, delay=20.0) as fake:
        settings = UserDataSettings(provider="alibaba", timeout=0.3, endpoints={"alibaba": fake.url})
        with pytest.raises(UserDataError, match="within 0.3s"):
            bounded(lambda: fetch_userdata(settings, root=Path("/nonexistent"), retry=FAST))


@pytest.mark.parametrize("endpoint", ["ftp://127.0.0.1/", "127.0.0.1:80", "http://", "http://127.0.0.1/?x=1"])
def test_endpoint_must_be_an_http_url(endpoint):
    with pytest.raises(UsageError, match="endpoint must be an http"):
        fetch_userdata(settings_for("http://127.0.0.1:9", "aws"), root=Path("/x"), endpoint=endpoint)


def test_provider_none_fetches_nothing(tmp_path):
    with running_metadata_server("aws", user_data=USER_DATA) as fake:
        (tmp_path / "media/cidata").mkdir(parents=True)
        (tmp_path / "media/cidata/user-data").write_bytes(USER_DATA)
        assert fetch_userdata(settings_for(fake.url, "none"), root=tmp_path) is None
    assert fake.requests == []
