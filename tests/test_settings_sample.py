"""The sample baked bootstrap.yaml (image/config) states the defaults. What
`podvm-bootstrap plan` and `render` print and write for configurations and
user-data are the cases of tests/cases/."""

from pathlib import Path

from podvm_bootstrap.config.settings import Settings, load_settings

CONFIG = Path(__file__).resolve().parent.parent / "image" / "config"


def test_sample_bootstrap_yaml_is_the_defaults():
    assert load_settings(CONFIG / "bootstrap.yaml") == Settings()
