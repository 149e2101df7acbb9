"""AWS EC2 IMDS: IMDSv2 (session token), IMDSv1 only when the token call is refused."""

from __future__ import annotations

import re

from podvm_bootstrap.common.errors import UserDataError
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.userdata.sources.http import MetadataClient

log = get_logger("userdata")

TOKEN_PATH = "/latest/api/token"
USERDATA_PATH = "/latest/user-data"
TTL_HEADER = "X-aws-ec2-metadata-token-ttl-seconds"
TOKEN_HEADER = "X-aws-ec2-metadata-token"
TOKEN_TTL = "21600"
# The token PUT is "refused" (no IMDSv2 here: IMDSv1-only services and
# look-alikes) on 403 Forbidden, 404 Not Found and 405 Method Not Allowed.
# 5xx, 429 and connection errors are retried like any request; other 4xx fail.
TOKEN_REFUSED = (403, 404, 405)
_TOKEN = re.compile(rb"[A-Za-z0-9+/=_.-]{1,1024}")


def fetch(client: MetadataClient, endpoint: str, max_size: int) -> bytes | None:
    token = client.request("PUT", endpoint + TOKEN_PATH, what="IMDSv2 token", limit=1024,
                           headers={TTL_HEADER: TOKEN_TTL}, answer=TOKEN_REFUSED)
    if token.body is None:
        log.info("aws: IMDSv2 token refused (HTTP %d); falling back to IMDSv1", token.status)
        headers = {}
    else:
        value = token.body.strip()
        if not _TOKEN.fullmatch(value):
            raise UserDataError("aws: IMDSv2 token is malformed")
        headers = {TOKEN_HEADER: value.decode("ascii")}
    return client.request("GET", endpoint + USERDATA_PATH, what="user-data", limit=max_size,
                          headers=headers).body
