"""Alibaba Cloud ECS metadata service: the user-data as it was given."""

from __future__ import annotations

from podvm_bootstrap.userdata.sources.http import MetadataClient

PATH = "/latest/user-data"


def fetch(client: MetadataClient, endpoint: str, max_size: int) -> bytes | None:
    return client.request("GET", endpoint + PATH, what="user-data", limit=max_size).body
