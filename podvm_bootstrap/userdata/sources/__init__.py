"""User-data sources: this VM's user-data from its cloud's metadata service,
or from a file, one module per provider (like cloud-init's datasources).

fetch_userdata() returns the user-data with the provider's transport encoding
removed (Azure's base64, GCP's when user-data-encoding says so), None when the
VM has none, and raises UserDataError when it cannot be had in time, is larger
than max_size, or does not decode."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from podvm_bootstrap.common.backoff import Deadline
from podvm_bootstrap.common.errors import UsageError
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.config.settings import PROVIDERS, UserDataSettings, endpoint_ok
from podvm_bootstrap.userdata.sources import alibaba, aws, azure, detect, file, gcp
from podvm_bootstrap.userdata.sources.http import MetadataClient, RetryPolicy

__all__ = ["fetch_userdata", "RetryPolicy"]

log = get_logger("userdata")

_FETCHERS: dict[str, Callable[[MetadataClient, str, int], bytes | None]] = {
    "azure": azure.fetch,
    "aws": aws.fetch,
    "gcp": gcp.fetch,
    "alibaba": alibaba.fetch,
}


def fetch_userdata(settings: UserDataSettings, *, root: Path, provider: str | None = None,
                   endpoint: str | None = None, timeout: float | None = None,
                   retry: RetryPolicy | None = None) -> bytes | None:
    provider = provider or settings.provider
    timeout = settings.timeout if timeout is None else timeout
    if provider == "none":
        log.info("user-data provider is none")
        return None
    if provider == "file":
        return file.fetch(root, settings.file, settings.max_size)
    if provider == "auto":
        if file.path_of(root, settings.file).exists():
            log.info("user-data provider: file %s", settings.file)
            return file.fetch(root, settings.file, settings.max_size)
        detected = detect.detect(root)
        if detected is None:
            log.info("user-data provider: none detected (no %s, no known cloud in DMI data)", settings.file)
            return None
        log.info("user-data provider: %s (detected)", detected)
        provider = detected
    if provider not in _FETCHERS:
        raise UsageError(f"unknown user-data provider {provider!r} (known: auto, {', '.join(PROVIDERS)}, file, none)")
    url = _endpoint(provider, endpoint or settings.endpoints.get(provider, ""))
    log.debug("fetching user-data from %s (%s, timeout %gs)", url, provider, timeout)
    with MetadataClient(provider, Deadline(timeout), retry=retry) as client:
        data = _FETCHERS[provider](client, url, settings.max_size)
    if data is None:
        log.info("%s: this VM has no user-data", provider)
    else:
        log.debug("%s: %d bytes of user-data after %d requests", provider, len(data), client.attempts)
    return data


def _endpoint(provider: str, url: str) -> str:
    if not endpoint_ok(url):
        raise UsageError(f"{provider}: endpoint must be an http:// or https:// URL, got {url!r}")
    return url.rstrip("/")
