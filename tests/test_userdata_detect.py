"""Auto detection from a DMI tree under --root, and the file provider."""

from __future__ import annotations

from pathlib import Path

import pytest

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.config.settings import PROVIDERS, UserDataSettings
from podvm_bootstrap.userdata.sources import RetryPolicy, fetch_userdata
from podvm_bootstrap.userdata.sources.detect import detect
from tests.fakes.metadata import running_metadata_server

FAST = RetryPolicy(initial_backoff=0.01, max_backoff=0.05, attempt_timeout=2.0)
USER_DATA = b"#cloud-config\n{}\n"
CIDATA = "/media/cidata/user-data"

# What each cloud's firmware says (one marker per case, as ds-identify reads them).
PLATFORMS = {
    "azure-asset-tag": ("azure", {"chassis_asset_tag": "7783-7084-3265-9085-8269-3286-77",
                                  "product_name": "Virtual Machine"}),
    "azure-vendor": ("azure", {"sys_vendor": "Microsoft Corporation"}),
    "aws-nitro": ("aws", {"sys_vendor": "Amazon EC2", "product_name": "m5.large"}),
    "aws-bios": ("aws", {"bios_vendor": "Amazon EC2"}),
    "aws-board-asset-tag": ("aws", {"board_asset_tag": "i-0123456789abcdef0"}),
    "aws-xen-hypervisor": ("aws", {"sys_vendor": "Xen", "_hypervisor_uuid": "ec2e1916-9099-7caf-fd21-012345abcdef"}),
    "aws-xen-uuid": ("aws", {"product_uuid": "EC2E1916-9099-7CAF-FD21-012345ABCDEF",
                             "product_serial": "ec2e1916-9099-7caf-fd21-012345abcdef"}),
    "gcp-product": ("gcp", {"sys_vendor": "Google", "product_name": "Google Compute Engine"}),
    "gcp-bios": ("gcp", {"bios_vendor": "Google"}),
    "alibaba-vendor": ("alibaba", {"sys_vendor": "Alibaba Cloud"}),
    "alibaba-product": ("alibaba", {"product_name": "Alibaba Cloud ECS"}),
    "qemu": (None, {"sys_vendor": "QEMU", "product_name": "Standard PC (Q35 + ICH9, 2009)",
                    "bios_vendor": "SeaBIOS", "board_asset_tag": "i-not-an-instance-id"}),
    "empty": (None, {}),
}


def make_platform(root: Path, fields: dict[str, str]) -> None:
    dmi = root / "sys/class/dmi/id"
    dmi.mkdir(parents=True, exist_ok=True)
    for name, value in fields.items():
        if name == "_hypervisor_uuid":
            (root / "sys/hypervisor").mkdir(parents=True, exist_ok=True)
            (root / "sys/hypervisor/uuid").write_text(value + "\n")
        else:
            (dmi / name).write_text(value + "\n")  # the kernel ends each with a newline


def settings_for(url: str, provider: str = "auto", **kw: object) -> UserDataSettings:
    return UserDataSettings(provider=provider, endpoints={p: url for p in PROVIDERS}, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("case", sorted(PLATFORMS))
def test_detects_the_cloud_from_dmi(tmp_path, case):
    expected, fields = PLATFORMS[case]
    make_platform(tmp_path, fields)
    assert detect(tmp_path) == expected


def test_nothing_under_an_empty_root_is_detected(tmp_path):
    assert detect(tmp_path) is None


@pytest.mark.parametrize("case", ["azure-asset-tag", "aws-nitro", "gcp-product", "alibaba-product"])
def test_auto_fetches_from_the_detected_cloud(tmp_path, case):
    cloud, fields = PLATFORMS[case]
    make_platform(tmp_path, fields)
    with running_metadata_server(cloud, user_data=USER_DATA) as fake:
        assert fetch_userdata(settings_for(fake.url), root=tmp_path, timeout=5, retry=FAST) == USER_DATA
    assert fake.requests  # it really went to that cloud's service


def test_auto_with_explicit_endpoint_uses_it_for_the_detected_cloud(tmp_path):
    make_platform(tmp_path, PLATFORMS["aws-nitro"][1])
    with running_metadata_server("aws", user_data=USER_DATA) as fake:
        settings = settings_for("http://127.0.0.1:9")
        assert fetch_userdata(settings, root=tmp_path, endpoint=fake.url, timeout=5, retry=FAST) == USER_DATA


def test_auto_prefers_the_file_over_detection(tmp_path):
    make_platform(tmp_path, PLATFORMS["azure-asset-tag"][1])
    (tmp_path / "media/cidata").mkdir(parents=True)
    (tmp_path / "media/cidata/user-data").write_bytes(b"from the file\n")
    with running_metadata_server("azure", user_data=USER_DATA) as fake:
        assert fetch_userdata(settings_for(fake.url), root=tmp_path, timeout=5, retry=FAST) == b"from the file\n"
    assert fake.requests == []


def test_auto_with_nothing_detected_is_no_user_data(tmp_path):
    make_platform(tmp_path, PLATFORMS["qemu"][1])
    with running_metadata_server("aws", user_data=USER_DATA) as fake:
        assert fetch_userdata(settings_for(fake.url), root=tmp_path, timeout=5, retry=FAST) is None
    assert fake.requests == []


def test_file_provider_reads_under_root(tmp_path):
    (tmp_path / "seed").mkdir()
    (tmp_path / "seed/ud").write_bytes(USER_DATA)
    settings = UserDataSettings(provider="file", file="/seed/ud")
    assert fetch_userdata(settings, root=tmp_path) == USER_DATA


def test_file_provider_without_the_file_is_no_user_data(tmp_path):
    assert fetch_userdata(UserDataSettings(provider="file", file=CIDATA), root=tmp_path) is None


def test_file_provider_refuses_an_oversize_file(tmp_path):
    (tmp_path / "ud").write_bytes(b"x" * 101)
    with pytest.raises(UserDataError, match=r"^file: user-data .*/ud is larger than max_size \(100 bytes\)"):
        fetch_userdata(UserDataSettings(provider="file", file="/ud", max_size=100), root=tmp_path)
    (tmp_path / "ud").write_bytes(b"x" * 100)
    assert fetch_userdata(UserDataSettings(provider="file", file="/ud", max_size=100), root=tmp_path) == b"x" * 100


def test_file_provider_reports_an_unreadable_path(tmp_path):
    (tmp_path / "ud").mkdir()
    with pytest.raises(UserDataError, match="^file: user-data .*/ud is a directory, not a regular file; refused"):
        fetch_userdata(UserDataSettings(provider="file", file="/ud"), root=tmp_path)
