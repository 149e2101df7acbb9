"""bootstrap.yaml: defaults, values, and a ConfigError naming file and key for each mistake."""

from __future__ import annotations

import pytest

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.settings import DEFAULT_ALLOWED_PATHS, DEFAULT_ENDPOINTS, Settings, load_settings


def test_missing_file_means_every_default(tmp_path):
    settings = load_settings(tmp_path / "bootstrap.yaml")
    assert settings == Settings()
    ud = settings.userdata
    assert (ud.provider, ud.timeout, ud.max_size, ud.file) == ("auto", 180.0, 256 * 1024, "/media/cidata/user-data")
    assert dict(ud.endpoints) == dict(DEFAULT_ENDPOINTS)
    assert settings.provision.allowed_paths == DEFAULT_ALLOWED_PATHS


def test_empty_file_means_every_default(tmp_path):
    path = tmp_path / "bootstrap.yaml"
    path.write_text("")
    assert load_settings(path) == Settings()


def test_values_are_read(tmp_path):
    path = tmp_path / "bootstrap.yaml"
    path.write_text(
        "userdata:\n  provider: aws\n  timeout: 1m30s\n  max_size: 1MiB\n  file: /seed/ud\n"
        "  endpoints:\n    aws: http://127.0.0.1:8080/\n"
        "provision:\n  allowed_paths: [/run/peerpod/x.toml]\n")
    settings = load_settings(path)
    ud = settings.userdata
    assert (ud.provider, ud.timeout, ud.max_size, ud.file) == ("aws", 90.0, 1024 * 1024, "/seed/ud")
    assert ud.endpoints["aws"] == "http://127.0.0.1:8080"  # trailing slash dropped
    assert ud.endpoints["azure"] == DEFAULT_ENDPOINTS["azure"]  # the others keep their defaults
    assert settings.provision.allowed_paths == ("/run/peerpod/x.toml",)


@pytest.mark.parametrize("text, key", [
    ("userdata: {timeout: soon}\n", "userdata.timeout"),
    ("userdata: {timeout: 0s}\n", "userdata.timeout"),
    ("userdata: {max_size: lots}\n", "userdata.max_size"),
    ("userdata: {max_size: 0}\n", "userdata.max_size"),
    ("userdata: {provider: openstack}\n", "userdata.provider"),
    ("userdata: {file: media/user-data}\n", "userdata.file"),
    ("userdata: {endpoints: {aws: 'ftp://127.0.0.1'}}\n", "userdata.endpoints.aws"),
    ("userdata: {endpoints: {gcp: 'http://127.0.0.1:8080/?x=1'}}\n", "userdata.endpoints.gcp"),
    ("userdata: {endpoints: {gcp: 'metadata.google.internal'}}\n", "userdata.endpoints.gcp"),
    ("userdata: {endpoints: {aws: 8080}}\n", "userdata.endpoints.aws"),
    ("userdata: {endpoints: {openstack: 'http://127.0.0.1'}}\n", "userdata.endpoints.openstack"),
    ("userdata: {endpoints: [http://127.0.0.1]}\n", "userdata.endpoints"),
    ("userdata: {retries: 3}\n", "userdata.retries"),
    ("userdata: yes\n", "userdata"),
    ("provision: {allowed_paths: [run/x]}\n", "provision.allowed_paths[0]"),
    ("provision: {allowed_paths: [/run/peerpod/../etc/shadow]}\n", "provision.allowed_paths[0]"),
    ("provision: {allowed_paths: [/run/ok, 3]}\n", "provision.allowed_paths[1]"),
    ("runtime: {pull_retries: -1}\n", "runtime.pull_retries"),
    ("measure: {pcr: 24}\n", "measure.pcr"),
    ("measure: {tpm: 'swtpm:127.0.0.1'}\n", "measure.tpm"),
    ("measure: {eventlog: run/attestation-agent/eventlog}\n", "measure.eventlog"),
    ("measure: {eventlog: /run/../etc/eventlog}\n", "measure.eventlog"),
    ("measure: {eventlog: /run/attestation-agent/}\n", "measure.eventlog"),
    ("measure: {initdata_pcr: 24}\n", "measure.initdata_pcr"),
    ("measure: {initdata_pcr: -1}\n", "measure.initdata_pcr"),
    ("measure: {initdata_pcr: off}\n", "measure.initdata_pcr"),
    ("measure: {initdata_pcr: eight}\n", "measure.initdata_pcr"),
    ("measure: {initdata_pcr: 23}\n", "measure.initdata_pcr"),
    ("measure: {pcr: 8}\n", "measure.initdata_pcr"),
    ("measure: {initdata: 8}\n", "measure.initdata"),
    ("user_data: {}\n", "user_data"),
])
def test_each_mistake_is_a_config_error_naming_file_and_key(tmp_path, text, key):
    path = tmp_path / "bootstrap.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert (info.value.file, info.value.key) == (str(path), key)
    assert str(info.value).startswith(f"{path}: {key}: ")
    assert info.value.exit_code == 2


def test_invalid_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "bootstrap.yaml"
    path.write_text("userdata:\n  timeout: [\n")
    with pytest.raises(ConfigError, match=rf"^{path}: .*line \d+"):
        load_settings(path)


@pytest.mark.parametrize("text", ["userdata:\n  timeout: 2001-13-14\n", "userdata:\n  max_size: " + "9" * 5000 + "\n"])
def test_scalars_the_safe_loader_cannot_build_are_config_errors_naming_the_file(tmp_path, text):
    path = tmp_path / "bootstrap.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"^{path}: invalid value: "):
        load_settings(path)


def test_a_top_level_that_is_not_a_mapping_is_refused(tmp_path):
    path = tmp_path / "bootstrap.yaml"
    path.write_text("- userdata\n")
    with pytest.raises(ConfigError, match="expected a mapping at the top level"):
        load_settings(path)


def test_measure_defaults_and_values(tmp_path):
    measure = load_settings(tmp_path / "absent.yaml").measure
    assert (measure.tpm, measure.pcr, measure.eventlog, measure.initdata_pcr) == (
        "auto", 23, "/run/attestation-agent/eventlog", 8)
    path = tmp_path / "bootstrap.yaml"
    path.write_text("measure:\n  pcr: 16\n  eventlog: /run/x/log\n  initdata_pcr: none\n")
    measure = load_settings(path).measure
    assert (measure.pcr, measure.eventlog, measure.initdata_pcr) == (16, "/run/x/log", None)
    path.write_text("measure:\n  initdata_pcr: 9\n")
    assert load_settings(path).measure.initdata_pcr == 9
