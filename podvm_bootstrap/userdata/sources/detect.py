"""Which cloud this VM runs on, from DMI and hypervisor data, the way
cloud-init's ds-identify tells its datasources apart (no network involved)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from podvm_bootstrap.common.paths import under_root

DMI_DIR = "/sys/class/dmi/id"
HYPERVISOR_UUID = "/sys/hypervisor/uuid"
DMI_FIELDS = ("sys_vendor", "product_name", "product_serial", "product_uuid", "bios_vendor",
              "board_vendor", "board_asset_tag", "chassis_vendor", "chassis_asset_tag")
AZURE_CHASSIS_ASSET_TAG = "7783-7084-3265-9085-8269-3286-77"
_EC2_INSTANCE_ID = re.compile(r"i-[0-9a-f]{8,17}")


@dataclass(frozen=True)
class Platform:
    """What the firmware and hypervisor say about the machine ("" when unknown)."""

    dmi: dict[str, str]
    hypervisor_uuid: str = ""

    def get(self, name: str) -> str:
        return self.dmi.get(name, "")


def read_platform(root: Path) -> Platform:
    dmi_dir = under_root(root, DMI_DIR)
    dmi = {name: _read(dmi_dir / name) for name in DMI_FIELDS}
    return Platform({k: v for k, v in dmi.items() if v}, _read(under_root(root, HYPERVISOR_UUID)))


def identify(platform: Platform) -> str | None:
    """The provider name for this platform, or None when nothing matches."""
    p = platform.get
    # Hyper-V outside Azure also says "Microsoft Corporation"; the file
    # provider, tried first, covers such local VMs.
    if p("chassis_asset_tag") == AZURE_CHASSIS_ASSET_TAG or p("sys_vendor") == "Microsoft Corporation":
        return "azure"
    if ("Amazon EC2" in (p("sys_vendor"), p("bios_vendor"), p("board_vendor"))
            or p("bios_vendor").lower() == "amazon"
            or _EC2_INSTANCE_ID.fullmatch(p("board_asset_tag"))
            or platform.hypervisor_uuid.lower().startswith("ec2")
            or (p("product_uuid").lower().startswith("ec2") and p("product_serial").lower().startswith("ec2"))):
        return "aws"
    if (p("product_name") == "Google Compute Engine" or p("sys_vendor") == "Google"
            or p("bios_vendor") == "Google" or p("product_serial").startswith("GoogleCloud-")):
        return "gcp"
    if p("sys_vendor") == "Alibaba Cloud" or p("product_name") == "Alibaba Cloud ECS":
        return "alibaba"
    return None


def detect(root: Path) -> str | None:
    return identify(read_platform(root))


def _read(path: Path) -> str:
    try:
        with open(path, "rb") as f:
            return f.read(256).decode("utf-8", "replace").strip()
    except OSError:  # absent, or root-only like product_serial when unprivileged
        return ""
