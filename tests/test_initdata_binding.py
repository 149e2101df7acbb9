"""Initdata bound into PCR 8 (podvm_bootstrap.attest.initdata_binding) by the
measurement step, against a real software TPM read back with tpm2-tools, and
against the cloud-api-adaptor's own way of binding it (its image runs
`tpm2_pcrextend 8:sha256=$(head -c64 /run/peerpod/initdata.digest)`)."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from podvm_bootstrap.attest.initdata_binding import describe, predicted
from podvm_bootstrap.attest.launch_measurement import MeasurementError, measure_launch
from podvm_bootstrap.common.paths import Paths
from podvm_bootstrap.config.settings import MeasureSettings, Settings
from podvm_bootstrap.userdata.initdata import PLACEHOLDER_TOML, placeholder_blob
from tests.bed.swtpm import running_swtpm
from tests.test_launch_measurement import FIVE, START_ORDER

UPSTREAM = Path(__file__).parent / "fixtures" / "upstream" / "cloud-api-adaptor"
PLACEHOLDER_DIGEST = hashlib.sha256(PLACEHOLDER_TOML).hexdigest()
ADAPTOR_SHA384 = ("52af3178dd7ad4bf551e629b84b45bfd1fbe1434b980120267181ae3575ea20ca9013b8eadf31d27eed7ff2552d500ef")


def trustee_expects(digest_hex: str) -> bytes:
    """What Trustee's tpm / az-snp-vtpm / az-tdx-vtpm verifiers compare PCR 8 with."""
    return hashlib.sha256(bytes(32) + bytes.fromhex(digest_hex)[:32]).digest()


# --- pure: the prediction -----------------------------------------------------------

def test_the_placeholder_is_predicted_when_the_user_data_carries_no_initdata():
    assert predicted(8, None, 1 << 20) == {
        "pcr": 8, "digest": f"sha256:{PLACEHOLDER_DIGEST}",
        "expected": f"sha256:{trustee_expects(PLACEHOLDER_DIGEST).hex()}"}


def test_the_adaptors_sha384_vector_is_predicted_cut_to_32_bytes():
    blob = (UPSTREAM / "provision_test-ccInitData.b64").read_bytes()
    assert predicted(8, blob, 1 << 20) == {"pcr": 8, "digest": f"sha384:{ADAPTOR_SHA384}",
                                           "expected": f"sha256:{trustee_expects(ADAPTOR_SHA384).hex()}"}


def test_nothing_is_predicted_when_not_bound_or_unreadable():
    assert predicted(None, placeholder_blob(), 1 << 20) is None
    assert predicted(8, b"@@not initdata@@", 1 << 20) is None


# --- the step, with a real TPM ------------------------------------------------------

class Bed:
    def __init__(self, root: Path, tpm: str, digest: str | None = PLACEHOLDER_DIGEST,
                 initdata_pcr: int | None = 8) -> None:
        self.paths = Paths.build(root=str(root))
        self.settings = Settings(measure=MeasureSettings(tpm=tpm, initdata_pcr=initdata_pcr))
        self.refused: dict[str, str] = {}
        boot_id = root / "proc/sys/kernel/random/boot_id"
        boot_id.parent.mkdir(parents=True, exist_ok=True)
        boot_id.write_text("boot-1\n")
        if digest is not None:
            self.write_digest(digest)

    def write_digest(self, digest: str) -> None:
        path = self.paths.rooted("/run/peerpod/initdata.digest")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(digest)

    def measure(self) -> dict:
        return measure_launch(self.paths, self.settings, START_ORDER, FIVE,
                              lambda name, reason, recorded: self.refused.__setitem__(name, reason))


@pytest.mark.parametrize("digest", [PLACEHOLDER_DIGEST, ADAPTOR_SHA384, "ab" * 64], ids=["sha256", "sha384", "sha512"])
def test_pcr8_reads_what_trustee_expects_and_what_the_adaptors_image_gives(tmp_path, swtpm, digest):
    record = Bed(tmp_path, swtpm.tcti, digest).measure()
    assert swtpm.pcrread(8) == trustee_expects(digest)
    assert swtpm.quoted_pcr(8) == trustee_expects(digest)
    assert record["initdata"] == {**describe(8, digest), "bound": True, "error": None}
    # The adaptor's own unit line, on a fresh TPM, gives the same register.
    (tmp_path / "initdata.digest").write_text(digest)
    with running_swtpm(tmp_path / "adaptor") as theirs:
        subprocess.run(["bash", "-c", f"tpm2_pcrextend 8:sha256=$(head -c64 {tmp_path / 'initdata.digest'})"],
                       env={"TPM2TOOLS_TCTI": theirs.tcti, "PATH": "/usr/bin:/bin"}, check=True, timeout=60,
                       capture_output=True)
        assert theirs.pcrread(8) == swtpm.pcrread(8)


def test_a_restarted_daemon_binds_nothing_twice(tmp_path, swtpm):
    bed = Bed(tmp_path, swtpm.tcti)
    bed.measure()
    again = bed.measure()
    assert swtpm.pcrread(8) == trustee_expects(PLACEHOLDER_DIGEST)
    assert again["initdata"]["bound"] is True and again["measured"] is True


@pytest.mark.parametrize("before", ["other", "changed-initdata"])
def test_a_register_this_boots_initdata_does_not_explain_stops_the_boot(tmp_path, swtpm, before):
    bed = Bed(tmp_path, swtpm.tcti)
    if before == "other":
        swtpm.extend(8, "cd" * 32)
    else:   # bound by an earlier daemon of this boot, then the user-data's initdata changed
        bed.measure()
        bed.write_digest(ADAPTOR_SHA384)
    pcr8, pcr23 = swtpm.pcrread(8), swtpm.pcrread(23)
    with pytest.raises(MeasurementError, match=r"^initdata binding failed, nothing started: PCR 8 reads sha256:"):
        bed.measure()
    assert swtpm.pcrread(8) == pcr8 and swtpm.pcrread(23) == pcr23   # nothing extended, no launch measured


def test_without_a_digest_the_boot_goes_on_and_pcr8_stays_zero(tmp_path, swtpm):
    record = Bed(tmp_path, swtpm.tcti, digest=None).measure()
    assert swtpm.pcrread(8) == bytes(32)
    assert record["measured"] is True
    assert record["initdata"]["bound"] is False
    assert "initdata.digest does not exist" in record["initdata"]["error"]


def test_initdata_pcr_none_binds_nothing(tmp_path, swtpm):
    record = Bed(tmp_path, swtpm.tcti, initdata_pcr=None).measure()
    assert swtpm.pcrread(8) == bytes(32) and record["initdata"] is None


def test_without_a_tpm_the_binding_is_reported_not_done(tmp_path):
    record = Bed(tmp_path, "none").measure()
    assert record["initdata"] == {**describe(8, PLACEHOLDER_DIGEST), "bound": False, "error": None}
