"""The stand-ins of today's full peer-pods chain that the first three did not
cover: the confidential data hub (its unix socket, after the attestation
agent's), api-server-rest (HTTP on loopback, after the data hub's socket), and
the attestation agent's per-TEE images, which say which TEE they were built
for. Run on the machine, on 127.0.0.1 with free ports."""

from __future__ import annotations

import gzip
import http.client
import io
import json
import tarfile
from pathlib import Path

from tests.bed.proc import free_port
from tests.standins import images as standins
from tests.test_bed_standins import answer, started  # noqa: F401  (fixture)


def test_data_hub_needs_the_attestation_agent_socket(standin_bin, started, tmp_path):  # noqa: F811
    cdh = started(standin_bin("confidential-data-hub"), "--requires", str(tmp_path / "aa.sock"),
                  "--socket", str(tmp_path / "cdh.sock"))
    assert cdh.exit_code() == 1
    assert "does not exist" in cdh.popen.stderr.read()
    assert not (tmp_path / "cdh.sock").exists()


def test_data_hub_answers_on_its_socket_and_checks_a_config_it_is_given(standin_bin, started, tmp_path):  # noqa: F811
    (tmp_path / "aa.sock").touch()
    sock = str(tmp_path / "cdh.sock")
    # -c naming a file that is not there: the defaults (the adaptor may not send cdh.toml)
    cdh = started(standin_bin("confidential-data-hub"), "-c", str(tmp_path / "none.toml"),
                  "--requires", str(tmp_path / "aa.sock"), "--socket", sock)
    cdh.wait_answering(sock)
    assert answer(sock) == "confidential-data-hub standin v1\n"
    cdh.kill()
    bad = tmp_path / "cdh.toml"
    bad.write_text("[kbc]\nthis is not toml\n")
    refused = started(standin_bin("confidential-data-hub"), "-c", str(bad), "--requires", str(tmp_path / "aa.sock"),
                      "--socket", str(tmp_path / "cdh2.sock"))
    assert refused.exit_code() == 2


def test_api_server_rest_needs_the_data_hub_and_speaks_http(standin_bin, started, tmp_path):  # noqa: F811
    port = free_port()
    refused = started(standin_bin("api-server-rest"), "--requires", str(tmp_path / "cdh.sock"),
                      "--listen", f"127.0.0.1:{port}")
    assert refused.exit_code() == 1 and "does not exist" in refused.popen.stderr.read()

    (tmp_path / "cdh.sock").touch()
    asr = started(standin_bin("api-server-rest"), "--requires", str(tmp_path / "cdh.sock"),
                  "--listen", f"127.0.0.1:{port}")
    asr.wait_answering(("127.0.0.1", port))
    for path in ("/cdh/resource/default/key/1", "/aa/token?token_type=kbs"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            assert response.status == 200
            assert response.getheader("Content-Type") == "text/plain"
            assert response.read() == b"api-server-rest standin v1\n"
        finally:
            conn.close()


def _layer_files(image: standins.StandinImage) -> dict[str, bytes]:
    index = json.loads((image.layout / "index.json").read_text())
    blob = lambda digest: (image.layout / "blobs" / "sha256" / digest.split(":")[1]).read_bytes()  # noqa: E731
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    layer = gzip.decompress(blob(manifest["layers"][0]["digest"]))
    with tarfile.open(fileobj=io.BytesIO(layer)) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_every_component_and_every_attestation_agent_tee_build_has_an_image(standin_images):
    for component in standins.COMPONENTS:
        files = _layer_files(standin_images[(component, "v1")])
        assert "etc/standin-variant" not in files
        assert standin_images[(component, "v1")].version_line == f"{component} standin v1"
    tee_images = [standin_images[("attestation-agent", tee)] for tee in standins.AA_TEE_VARIANTS]
    for image in tee_images:
        assert _layer_files(image)["etc/standin-variant"] == f"{image.variant}\n".encode()
        assert image.version_line == f"attestation-agent standin v1 {image.variant}"
        assert image.repository == "confidential-containers/attestation-agent"
    digests = {i.digest for i in tee_images} | {standin_images[("attestation-agent", "v1")].digest}
    assert len(digests) == len(standins.AA_TEE_VARIANTS) + 1


def test_the_sample_manifest_has_a_stand_in_for_each_of_its_images(standin_images):
    import yaml

    sample = yaml.safe_load((Path(__file__).parent.parent / "image/config/components.yaml").read_text())
    for name, spec in sample["components"].items():
        assert (name, "v1") in standin_images
        for tee in spec.get("variants") or {}:
            assert (name, tee) in standin_images, f"no stand-in for {name} variant {tee}"
