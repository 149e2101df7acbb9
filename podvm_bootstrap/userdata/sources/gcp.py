"""GCE metadata server: the `user-data` instance attribute, base64 when the
`user-data-encoding` attribute says so (as cloud-init's GCE datasource reads it)."""

from __future__ import annotations

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.userdata.sources.http import MetadataClient, base64_limit
from podvm_bootstrap.userdata.sources.transport import decode_base64

ATTRIBUTES = "/computeMetadata/v1/instance/attributes/"
HEADERS = {"Metadata-Flavor": "Google"}


def fetch(client: MetadataClient, endpoint: str, max_size: int) -> bytes | None:
    data = client.request("GET", endpoint + ATTRIBUTES + "user-data", what="user-data",
                          limit=base64_limit(max_size), headers=HEADERS).body
    if data is None:
        return None
    encoding = client.request("GET", endpoint + ATTRIBUTES + "user-data-encoding",
                              what="user-data-encoding", limit=64, headers=HEADERS).body
    name = (encoding or b"").strip().lower()
    if name == b"base64":
        return decode_base64("gcp", data, max_size)
    if name not in (b"", b"plain"):
        shown = name.decode("ascii", "replace")[:32]
        raise UserDataError(f"gcp: unsupported user-data-encoding {shown!r} (expected base64)")
    if len(data) > max_size:
        raise UserDataError(f"gcp: user-data is larger than max_size ({max_size} bytes); refused")
    return data
