"""Azure IMDS: the VM's userData, base64 in the body."""

from __future__ import annotations

from podvm_bootstrap.userdata.sources.http import MetadataClient, base64_limit
from podvm_bootstrap.userdata.sources.transport import decode_base64

PATH = "/metadata/instance/compute/userData?api-version=2021-01-01&format=text"


def fetch(client: MetadataClient, endpoint: str, max_size: int) -> bytes | None:
    reply = client.request("GET", endpoint + PATH, what="user-data", limit=base64_limit(max_size),
                           headers={"Metadata": "true"})
    # Azure answers 200 with an empty body when the VM has no user-data.
    if reply.body is None or not reply.body.strip():
        return None
    return decode_base64("azure", reply.body, max_size)
