"""components.yaml loading: the sample, defaults, and every error naming file and key."""

from pathlib import Path

import pytest
import yaml

from podvm_bootstrap.common.errors import ConfigError
from podvm_bootstrap.config.manifest import load_manifest
from podvm_bootstrap.config.model import Health, Probe, Restart

SAMPLE = Path(__file__).resolve().parent.parent / "image" / "config" / "components.yaml"
D = "sha256:" + "1" * 64
IMAGE = f"quay.io/org/app@{D}"


def write(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "components.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    return path


def manifest_of(**components: dict) -> dict:
    return {"version": 1, "components": components}


def config_error(tmp_path: Path, data: object) -> ConfigError:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_manifest(path)
    err = info.value
    assert err.file == str(path)
    assert str(err).startswith(f"{path}: ")
    assert "\n" not in str(err)
    return err


def test_sample_manifest_loads_as_designed():
    m = load_manifest(SAMPLE)
    assert m.source == str(SAMPLE)
    assert m.names == ("attestation-agent", "confidential-data-hub", "kata-agent", "agent-protocol-forwarder",
                       "api-server-rest")
    aa, cdh, kata, apf, asr = m.components
    assert aa.image.repository == "quay.io/confidential-containers/attestation-agent"
    assert aa.image.digest is not None
    assert aa.unit == "attestation-agent.service"
    assert aa.ready == Probe("unix_socket", "/run/confidential-containers/attestation-agent/attestation-agent.sock")
    assert aa.container.command == ("attestation-agent", "-c", "/run/peerpod/aa.toml")
    assert aa.container.volumes == ("/run/confidential-containers:/run/confidential-containers",
                                    "/run/peerpod:/run/peerpod:ro",
                                    "/run/attestation-agent:/run/attestation-agent")  # the agent's event log
    assert not aa.essential
    assert [v.tee for v in aa.variants] == ["az-snp-vtpm", "az-tdx-vtpm", "tdx", "snp", "se"]
    for v in aa.variants:
        assert v.image.repository == aa.image.repository and v.image.digest not in (None, aa.image.digest)
        assert v.container_keys == ("devices",)
    assert cdh.after == ("attestation-agent",) and not cdh.essential
    assert cdh.ready == Probe("unix_socket", "/run/confidential-containers/cdh.sock")
    assert cdh.container.command == ("confidential-data-hub", "-c", "/run/peerpod/cdh.toml")
    assert kata.essential and kata.after == ("confidential-data-hub",)
    assert kata.ready == Probe("unix_socket", "/run/kata-containers/agent.sock", 60.0)
    assert kata.container.privileged and kata.container.pid == "host" and kata.container.network == "host"
    assert apf.after == ("kata-agent",)
    assert apf.ready == Probe("tcp", "127.0.0.1:15150")
    assert apf.health == Health(interval=5.0, timeout=Health().timeout, failures=3)
    assert apf.stop_timeout == 10.0
    assert asr.after == ("confidential-data-hub", "agent-protocol-forwarder")
    assert asr.ready == Probe("tcp", "127.0.0.1:8006")
    assert all(not c.variants for c in (cdh, kata, apf, asr))


def test_full_component_with_every_key(tmp_path):
    m = load_manifest(write(tmp_path, manifest_of(
        base={"image": IMAGE},
        app={
            "image": "quay.io/org/app:v1",
            "unit": "my-app@one.service",
            "after": ["base"],
            "essential": True,
            "ready": {"exec": ["/bin/check", "--ready"], "timeout": "2m"},
            "health": {"interval": "30s", "timeout": "2s", "failures": 5},
            "restart": {"delay": "500ms", "max_delay": "1m"},
            "stop_timeout": "20s",
            "container": {
                "command": ["app", "--flag=x y"],
                "env": {"MODE": "prod", "_X1": ""},
                "network": "host", "pid": "host", "privileged": False,
                "capabilities": ["NET_ADMIN", "CAP_SYS_ADMIN"],
                "devices": ["/dev/fuse", "/dev/sev:/dev/sev:rw"],
                "volumes": ["/run/a:/run/a", "/var/b:/b:ro,z"],
                "read_only": True, "user": "1000:1000",
            },
        })))
    app = m.get("app")
    assert app.unit == "my-app@one.service"
    assert app.after == ("base",) and app.essential
    assert app.ready == Probe("exec", ("/bin/check", "--ready"), 120.0)
    assert app.health == Health(30.0, 2.0, 5)
    assert app.restart == Restart(0.5, 60.0)
    assert app.stop_timeout == 20.0
    c = app.container
    assert c.command == ("app", "--flag=x y")
    assert c.env == (("MODE", "prod"), ("_X1", ""))
    assert c.capabilities == ("NET_ADMIN", "CAP_SYS_ADMIN")
    assert c.devices == ("/dev/fuse", "/dev/sev:/dev/sev:rw")
    assert c.volumes == ("/run/a:/run/a", "/var/b:/b:ro,z")
    assert c.read_only and c.user == "1000:1000" and not c.privileged


def test_defaults(tmp_path):
    c = load_manifest(write(tmp_path, manifest_of(solo={"image": IMAGE}))).get("solo")
    assert c.unit == "solo.service"
    assert c.after == () and not c.essential and c.ready is None
    assert c.health == Health() and c.restart == Restart() and c.stop_timeout == 10.0
    assert c.container.command == () and c.container.env == ()


@pytest.mark.parametrize("probe, expected", [
    ({"unix_socket": "/run/x.sock"}, Probe("unix_socket", "/run/x.sock")),
    ({"tcp": "[::1]:8080"}, Probe("tcp", "[::1]:8080")),
    ({"tcp": "localhost:1"}, Probe("tcp", "localhost:1")),
    ({"file": "/run/ready", "timeout": 5}, Probe("file", "/run/ready", 5.0)),
    ({"notify": True}, Probe("notify", "")),
])
def test_probe_kinds(tmp_path, probe, expected):
    assert load_manifest(write(tmp_path, manifest_of(a={"image": IMAGE, "ready": probe}))).get("a").ready == expected


@pytest.mark.parametrize("data, key", [
    (manifest_of(a={"image": IMAGE}) | {"extra": 1}, "extra"),
    (manifest_of(a={"image": IMAGE, "imagee": "x"}), "components.a.imagee"),
    (manifest_of(a={"image": IMAGE, "ready": {"tcp": "127.0.0.1:1", "retries": 3}}), "components.a.ready.retries"),
    (manifest_of(a={"image": IMAGE, "ready": {"notify": True}, "health": {"period": "1s"}}), "components.a.health.period"),
    (manifest_of(a={"image": IMAGE, "restart": {"backoff": "1s"}}), "components.a.restart.backoff"),
    (manifest_of(a={"image": IMAGE, "container": {"ports": ["80:80"]}}), "components.a.container.ports"),
])
def test_unknown_keys_at_every_level(tmp_path, data, key):
    err = config_error(tmp_path, data)
    assert err.key == key
    assert "unknown key" in err.message


@pytest.mark.parametrize("data, key, words", [
    ({"components": {"a": {"image": IMAGE}}}, "version", "required"),
    ({"version": 2, "components": {"a": {"image": IMAGE}}}, "version", "unsupported"),
    ({"version": "1", "components": {"a": {"image": IMAGE}}}, "version", "unsupported"),
    ({"version": True, "components": {"a": {"image": IMAGE}}}, "version", "unsupported"),
    ({"version": 1}, "components", "non-empty"),
    ({"version": 1, "components": {}}, "components", "non-empty"),
    ({"version": 1, "components": ["a"]}, "components", "mapping"),
    (manifest_of(a="quay.io/x/y"), "components.a", "mapping"),
    (manifest_of(a={"unit": "a.service"}), "components.a.image", "required"),
    (manifest_of(a={"image": 5}), "components.a.image", "string"),
    (manifest_of(a={"image": "quay.io/Org/app"}), "components.a.image", "invalid"),
    (manifest_of(a={"image": IMAGE, "essential": "yes"}), "components.a.essential", "true or false"),
    (manifest_of(a={"image": IMAGE, "after": "b"}), "components.a.after", "list"),
    (manifest_of(a={"image": IMAGE, "after": [1]}), "components.a.after[0]", "string"),
    (manifest_of(a={"image": IMAGE, "stop_timeout": "soon"}), "components.a.stop_timeout", "duration"),
    (manifest_of(a={"image": IMAGE, "stop_timeout": 0}), "components.a.stop_timeout", "greater than zero"),
    (manifest_of(a={"image": IMAGE, "restart": {"delay": "10s", "max_delay": "1s"}}), "components.a.restart.max_delay", "at least"),
    (manifest_of(a={"image": IMAGE, "ready": {"notify": True}, "health": {"failures": 0}}), "components.a.health.failures", "integer"),
    (manifest_of(a={"image": IMAGE, "ready": {"notify": True}, "health": {"interval": "0s"}}), "components.a.health.interval", "greater than zero"),
    (manifest_of(a={"image": IMAGE, "health": {"interval": "5s"}}), "components.a.health", "ready probe"),
    (manifest_of(a={"image": IMAGE, "container": {"command": "app --x"}}), "components.a.container.command", "list"),
    (manifest_of(a={"image": IMAGE, "container": {"privileged": "true"}}), "components.a.container.privileged", "true or false"),
    (manifest_of(a={"image": IMAGE, "container": {"network": "host bridge"}}), "components.a.container.network", "whitespace"),
    (manifest_of(a={"image": IMAGE, "container": {"user": 1000}}), "components.a.container.user", "string"),
    (manifest_of(a={"image": IMAGE, "container": {"capabilities": ["SYS ADMIN"]}}), "components.a.container.capabilities[0]", "capability"),
    (manifest_of(a={"image": IMAGE, "container": {"devices": ["fuse"]}}), "components.a.container.devices[0]", "/dev/"),
    (manifest_of(a={"image": IMAGE, "container": {"volumes": ["/run/a"]}}), "components.a.container.volumes[0]", "host:container"),
    (manifest_of(a={"image": IMAGE, "container": {"volumes": ["run/a:/a"]}}), "components.a.container.volumes[0]", "absolute"),
    (manifest_of(a={"image": IMAGE, "container": {"volumes": ["/run/a:a"]}}), "components.a.container.volumes[0]", "absolute"),
    (manifest_of(a={"image": IMAGE, "container": {"volumes": ["/run/../etc:/a"]}}), "components.a.container.volumes[0]", "'..'"),
    (manifest_of(a={"image": IMAGE, "container": {"volumes": ["/a:/b:ro:z"]}}), "components.a.container.volumes[0]", "host:container"),
    (manifest_of(a={"image": IMAGE, "container": {"volumes": ["/a:/b:r o"]}}), "components.a.container.volumes[0]", "host:container"),
    (manifest_of(a={"image": IMAGE, "container": {"env": ["A=1"]}}), "components.a.container.env", "mapping"),
    ("version: 1\ncomponents:\n  a: {image: x\n", "", "line"),
])
def test_bad_types_and_values(tmp_path, data, key, words):
    err = config_error(tmp_path, data)
    assert err.key == key
    assert words in err.message


@pytest.mark.parametrize("name", ["Kata", "kata_agent", "-kata", "kata.agent", "a" * 64, "ka ta"])
def test_bad_component_names(tmp_path, name):
    err = config_error(tmp_path, manifest_of(**{name: {"image": IMAGE}}))
    assert err.key == f"components.{name}"
    assert "invalid component name" in err.message


def test_component_name_must_be_a_string(tmp_path):
    err = config_error(tmp_path, "version: 1\ncomponents:\n  1: {image: quay.io/a/b}\n")
    assert err.key == "components"


@pytest.mark.parametrize("unit", [
    "a.socket", "../evil.service", "a/b.service", "a b.service", "a\n.service", ".service",
    "a@.service", "podvm-bootstrap.service", "a$.service", "x" * 250 + ".service",
])
def test_bad_unit_names(tmp_path, unit):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE, "unit": unit}))
    assert err.key == "components.a.unit"


def test_two_components_cannot_share_a_unit(tmp_path):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE}, b={"image": IMAGE, "unit": "a.service"}))
    assert err.key == "components.b.unit"
    assert "'a'" in err.message


@pytest.mark.parametrize("env_key", ["1A", "A-B", "A B", "A=B", ""])
def test_bad_env_names(tmp_path, env_key):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE, "container": {"env": {env_key: "v"}}}))
    assert err.key == f"components.a.container.env.{env_key}"
    assert "environment variable name" in err.message


@pytest.mark.parametrize("value", [1, 1.5, True, None, ["x"]])
def test_env_values_must_be_strings(tmp_path, value):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE, "container": {"env": {"PORT": value}}}))
    assert err.key == "components.a.container.env.PORT"
    assert "string" in err.message


@pytest.mark.parametrize("probe, key, words", [
    ({}, "components.a.ready", "exactly one"),
    ({"timeout": "5s"}, "components.a.ready", "exactly one"),
    ({"tcp": "127.0.0.1:1", "file": "/x"}, "components.a.ready", "exactly one"),
    ({"ping": "x"}, "components.a.ready.ping", "unknown key"),
    ({"unix_socket": "run/x.sock"}, "components.a.ready.unix_socket", "absolute"),
    ({"unix_socket": 5}, "components.a.ready.unix_socket", "absolute"),
    ({"file": "/run/x\n"}, "components.a.ready.file", "absolute"),
    ({"tcp": "127.0.0.1"}, "components.a.ready.tcp", "host:port"),
    ({"tcp": "127.0.0.1:0"}, "components.a.ready.tcp", "host:port"),
    ({"tcp": "127.0.0.1:70000"}, "components.a.ready.tcp", "host:port"),
    ({"tcp": ":80"}, "components.a.ready.tcp", "host:port"),
    ({"tcp": 8080}, "components.a.ready.tcp", "host:port"),
    ({"exec": "check"}, "components.a.ready.exec", "list"),
    ({"exec": []}, "components.a.ready.exec", "list"),
    ({"exec": ["check", 1]}, "components.a.ready.exec[1]", "string"),
    ({"notify": False}, "components.a.ready.notify", "true"),
    ({"notify": "yes"}, "components.a.ready.notify", "true"),
    ({"notify": True, "timeout": "0s"}, "components.a.ready.timeout", "greater than zero"),
    ({"notify": True, "timeout": "later"}, "components.a.ready.timeout", "duration"),
])
def test_bad_probe_shapes(tmp_path, probe, key, words):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE, "ready": probe}))
    assert err.key == key
    assert words in err.message


def test_ready_must_be_a_mapping(tmp_path):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE, "ready": "tcp"}))
    assert err.key == "components.a.ready"


def test_cycle_is_named(tmp_path):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE, "after": ["b"]}, b={"image": IMAGE, "after": ["a"]}))
    assert str(err).endswith("components.a.after: cycle a -> b -> a")


def test_longer_cycle_is_named_from_its_first_component(tmp_path):
    err = config_error(tmp_path, manifest_of(
        root={"image": IMAGE},
        x={"image": IMAGE, "after": ["root", "z"]},
        y={"image": IMAGE, "after": ["x"]},
        z={"image": IMAGE, "after": ["y"]},
    ))
    assert err.key == "components.x.after"
    assert err.message == "cycle x -> z -> y -> x"


def test_self_dependency(tmp_path):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE, "after": ["a"]}))
    assert err.key == "components.a.after"
    assert "itself" in err.message


def test_unknown_after(tmp_path):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE}, b={"image": IMAGE, "after": ["a", "c"]}))
    assert err.key == "components.b.after[1]"
    assert "unknown component 'c'" in err.message


def test_duplicate_after(tmp_path):
    err = config_error(tmp_path, manifest_of(a={"image": IMAGE}, b={"image": IMAGE, "after": ["a", "a"]}))
    assert err.key == "components.b.after[1]"


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError) as info:
        load_manifest(tmp_path / "components.yaml")
    assert "not found" in str(info.value)


def test_manifest_digest_reads_the_baked_file_bounded(tmp_path):
    import hashlib

    from podvm_bootstrap.config.manifest import MAX_MANIFEST_BYTES, manifest_digest

    path = tmp_path / "components.yaml"
    path.write_bytes(b"version: 1\n")
    assert manifest_digest(path) == "sha256:" + hashlib.sha256(b"version: 1\n").hexdigest()
    path.write_bytes(b"#" * (MAX_MANIFEST_BYTES + 1))
    with pytest.raises(ConfigError) as info:
        manifest_digest(path)
    assert str(info.value) == f"{path}: the file is larger than {MAX_MANIFEST_BYTES} bytes"
    with pytest.raises(ConfigError, match="cannot read: No such file or directory"):
        manifest_digest(tmp_path / "absent.yaml")
