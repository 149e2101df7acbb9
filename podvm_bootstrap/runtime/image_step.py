"""The plan's images, before anything is measured or started: each one
ensured in local storage (pulled when missing) and verified, all at once; an
override that is unusable falls back to its default unless the policy says
fail. A re-run of the daemon in the same boot whose plan names an image the
boot's launch set does not hold keeps the recorded image instead."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import replace
from typing import TYPE_CHECKING, TypeVar

from podvm_bootstrap.attest.launch_set import LaunchedComponent
from podvm_bootstrap.common.backoff import Backoff
from podvm_bootstrap.common.errors import one_line
from podvm_bootstrap.common.log import get_logger
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.model import (
    ImageSource,
    OverrideDecision,
    PlannedComponent,
    RequestSource,
    source_label,
)
from podvm_bootstrap.images.imageref import ImageRef, parse_reference
from podvm_bootstrap.images.storage import ImageError, PodmanImages, PullPacing
from podvm_bootstrap.runtime.context import RunContext, for_component

if TYPE_CHECKING:
    from podvm_bootstrap.config.policy import Policy
    from podvm_bootstrap.config.settings import Settings

log = get_logger("daemon")

T = TypeVar("T")


def as_image_error(fn: Callable[[], T], planned: PlannedComponent) -> T:
    """Run an image operation; whatever goes wrong in it (a malformed store or
    registry answer, an unreadable file) is that image's ImageError, never a
    crash of the daemon."""
    try:
        return fn()
    except ImageError:
        raise
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise ImageError(f"{planned.image}: {type(exc).__name__}: {one_line(exc)}") from None


def podman_images(paths: Paths, settings: Settings) -> PodmanImages:
    """A podman client as the settings describe it (socket, auth file, pull pacing)."""
    runtime = settings.runtime
    return PodmanImages(
        runtime.podman_socket, auth_file=paths.rooted(runtime.auth_file),
        pacing=PullPacing(runtime.pull_retries, runtime.pull_timeout,
                          Backoff(runtime.pull_backoff, runtime.pull_backoff_max)))


class ImageStep:
    """Changes ctx.planned (each component's image as stored: its digest, the
    signature found), ctx.resolved_from and the supervisor's image states."""

    def __init__(self, ctx: RunContext, policy: Policy) -> None:
        self.ctx = ctx
        self.policy = policy

    def ensure_all(self) -> None:
        ctx = self.ctx
        assert ctx.supervisor is not None
        pool = ThreadPoolExecutor(max_workers=max(1, len(ctx.planned)), thread_name_prefix="image")
        try:
            futures: dict[Future, str] = {}
            for name, planned in ctx.planned.items():
                ctx.supervisor.image_pulling(name)
                futures[pool.submit(self._ensure_one, planned)] = name
            ctx.write_state()
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.5)
                for future in done:
                    self._image_result(futures[future], future)
                ctx.write_state()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _image_result(self, name: str, future: Future) -> None:
        assert self.ctx.supervisor is not None
        try:
            planned = future.result()
        except ImageError as exc:
            log.error("image unusable, component not started: %s", exc, **for_component(name))
            self.ctx.supervisor.image_failed(name, str(exc))
            return
        self.ctx.planned[name] = planned
        self.ctx.supervisor.image_ready(name)
        signed = f", signed by {planned.signature}" if planned.signature else ""
        source = source_label(planned.source, None, planned.override.requested_by if planned.override else None)
        log.info("image %s verified (%s%s)", planned.image, source, signed, **for_component(name))

    def _ensure_one(self, planned: PlannedComponent) -> PlannedComponent:
        allow_tag = self.policy.mutable_tags
        try:
            return self._stored(planned, allow_tag)
        except ImageError as exc:
            if planned.source != "override":
                raise
            if self.policy.on_rejected_override == "fail":
                raise ImageError(f"override {planned.image} unusable and the policy says fail: {exc}") from None
            log.error("override %s unusable (%s); falling back to the default %s",
                      planned.image, exc, planned.component.image, **for_component(planned.name))
            refused = (OverrideDecision(str(planned.image), False, f"image unusable: {exc}")
                       if planned.override is None else
                       replace(planned.override, accepted=False, reason=f"image unusable: {exc}"))
            fallback = PlannedComponent(planned.component, planned.component.image, "default", refused,
                                        signed_by=planned.signed_by)
            return self._stored(fallback, allow_tag)

    def _stored(self, planned: PlannedComponent, allow_tag: bool) -> PlannedComponent:
        images = self.ctx.images
        assert images is not None
        trust = self.policy.trust_for(planned.name)
        stored = as_image_error(lambda: images.ensure(planned.image, allow_tag=allow_tag, trust=trust), planned)
        if stored.from_tag is not None:
            self.ctx.resolved_from[planned.name] = str(planned.image)
        return replace(planned, image=stored.ref, signature=stored.signature)

    def keep_recorded(self, name: str, reason: str, recorded: LaunchedComponent | None) -> None:
        """The plan's image is not in this boot's launch set (a daemon re-run
        in the same boot with a changed plan): it does not start. The image the
        records hold for the component is planned instead, so its unit is
        rendered as it runs (adopted untouched: stopping the forwarder or
        kata-agent would end the pod) and every later start, the daemon's or
        systemd's, runs that recorded image. None recorded: nothing starts."""
        assert self.ctx.supervisor is not None
        planned = self.ctx.planned[name]
        if recorded is None:
            log.error("not started: %s", reason, **for_component(name))
            self.ctx.supervisor.image_failed(name, reason)
            return
        kept_reason = f"{reason}; its recorded {recorded.image} runs"
        if planned.source == "override" and planned.override is not None:
            override: OverrideDecision | None = replace(planned.override, accepted=False, reason=kept_reason)
        elif recorded.source == "override":
            requested_by: RequestSource = "initdata" if recorded.requested_by == "initdata" else "user-data"
            override = OverrideDecision(recorded.image, True, kept_reason, requested_by)
        else:
            override = planned.override
        source: ImageSource = ("override" if recorded.source == "override" else
                          "variant" if recorded.source == "variant" else "default")
        try:
            kept = PlannedComponent(planned.component, self._recorded_reference(name, recorded), source,
                                    override, signed_by=planned.signed_by)
            kept = self._stored(kept, allow_tag=False)
        except (ImageError, ValueError) as exc:
            message = f"{reason}; its recorded {recorded.image} is unusable: {one_line(exc)}"
            log.error("not started: %s", message, **for_component(name))
            self.ctx.supervisor.image_failed(name, message)
            return
        self.ctx.planned[name] = kept
        log.error("%s", kept_reason, **for_component(name))

    def _recorded_reference(self, name: str, recorded: LaunchedComponent) -> ImageRef:
        """The recorded image as the previous daemon of this boot rendered it
        (a tag kept beside the digest: its unit text unchanged), else the
        record's repo@digest. Raises ValueError for a record that does not parse."""
        ref = parse_reference(recorded.image)
        before = ((self.ctx.previous_state.get("components") or {}).get(name) or {}).get("image")
        try:
            previous = parse_reference(before) if isinstance(before, str) else None
        except ValueError:
            previous = None
        if previous is not None and (previous.repository, previous.digest) == (ref.repository, ref.digest):
            return previous
        return ref
