"""Whatever goes wrong while obtaining or verifying one component's image is
that image's ImageError (the component fails, or falls back to its default),
never an exception that would end the daemon."""

from __future__ import annotations

import json

import pytest

from podvm_bootstrap.config.model import Component, PlannedComponent
from podvm_bootstrap.images.imageref import parse_reference
from podvm_bootstrap.images.storage import ImageError
from podvm_bootstrap.runtime.image_step import as_image_error

IMAGE = parse_reference("quay.io/confidential-containers/kata-agent@sha256:" + "a" * 64)
PLANNED = PlannedComponent(Component("kata-agent", IMAGE, "kata-agent.service"), IMAGE, "default")


def malformed_json() -> None:
    json.loads("{not json")


def unreadable() -> None:
    raise PermissionError(13, "Permission denied", "/var/lib/containers/storage/overlay-images/x/manifest")


def bad_digest() -> None:
    IMAGE.with_digest("sha256:short")


@pytest.mark.parametrize("failure", [malformed_json, unreadable, bad_digest])
def test_any_failure_of_an_image_step_is_an_image_error_naming_the_image(failure):
    with pytest.raises(ImageError) as info:
        as_image_error(failure, PLANNED)
    message = str(info.value)
    assert message.startswith(f"{IMAGE}: ") and "\n" not in message


def test_an_image_error_passes_as_it_is_and_a_result_is_returned():
    original = ImageError("digest mismatch")
    with pytest.raises(ImageError) as info:
        as_image_error(lambda: (_ for _ in ()).throw(original), PLANNED)
    assert info.value is original
    assert as_image_error(lambda: 42, PLANNED) == 42
