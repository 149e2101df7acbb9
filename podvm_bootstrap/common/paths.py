"""Where things live (docs/operating.md "Paths in the pod VM"), moved by --root
and the --*-dir flags."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

CONFIG_DIR = "/etc/podvm-bootstrap"
STATE_DIR = "/run/podvm-bootstrap"
UNIT_DIR = "/run/systemd/system"


def under_root(root: Path, path: str | Path) -> Path:
    """`path` (absolute, as the pod VM sees it) inside `root`."""
    return root / str(path).lstrip("/")


@dataclass(frozen=True)
class Paths:
    """Resolved locations. Defaults are prefixed by --root; a directory given
    explicitly on the command line is taken as it is."""

    root: Path
    config_dir: Path
    state_dir: Path
    unit_dir: Path

    @classmethod
    def build(cls, root: str | None = None, config_dir: str | None = None,
              state_dir: str | None = None, unit_dir: str | None = None) -> Paths:
        r = Path(root) if root else Path("/")
        return cls(
            root=r,
            config_dir=Path(config_dir) if config_dir else under_root(r, CONFIG_DIR),
            state_dir=Path(state_dir) if state_dir else under_root(r, STATE_DIR),
            unit_dir=Path(unit_dir) if unit_dir else under_root(r, UNIT_DIR),
        )

    def rooted(self, path: str | Path) -> Path:
        return under_root(self.root, path)

    @property
    def bootstrap_yaml(self) -> Path:
        return self.config_dir / "bootstrap.yaml"

    @property
    def components_yaml(self) -> Path:
        return self.config_dir / "components.yaml"

    @property
    def policy_yaml(self) -> Path:
        return self.config_dir / "policy.yaml"
