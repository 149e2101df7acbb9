#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian 12 machine (as root):
# Debian packages (podman, registry, debootstrap, nspawn, swtpm and tpm2-tools, QEMU)
# and the virtualenv (tpm2-pytss is built there from source against libtss2-dev;
# ruff, mypy and type stubs for make lint, pinned in pyproject.toml's lint extra).
# Idempotent and quick when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  python3-venv podman runc crun skopeo docker-registry debootstrap systemd-container
  busybox-static uidmap iproute2 apache2-utils gcc libc6-dev
  python3-dev libgirepository1.0-dev libcairo2-dev pkg-config
  swtpm swtpm-tools tpm2-tools libtss2-dev libtss2-tcti-swtpm0
  # Debian's HTTP stack (urllib3 1.26), the pod VM image's: the metadata client is tested on it too
  python3-requests python3-urllib3 python3-yaml
)
# The pod VM as a disk booted under QEMU (image/disk.py, tests/bed/qemu.py): QEMU and
# qemu-img, the cidata ISO, sfdisk (GPT on a file), veritysetup, debugfs.
APT_PACKAGES+=(qemu-system-x86 qemu-utils genisoimage fdisk cryptsetup-bin e2fsprogs)
# make deb: Debian's packaging tools.
APT_PACKAGES+=(dpkg-dev debhelper dh-python pybuild-plugin-pyproject python3-all python3-setuptools)
# make man and its tests: man -l renders the pages (groff).
APT_PACKAGES+=(man-db groff-base)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "host-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get -o DPkg::Lock::Timeout=300 update -qq
  apt-get -o DPkg::Lock::Timeout=300 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

VENV=${VENV:-.venv}
PY=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp="$VENV/.deps-$(sha256sum pyproject.toml | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  "$VENV/bin/pip" install -q --upgrade pip
  "$VENV/bin/pip" install -q 'PyGObject<3.50'
  "$VENV/bin/pip" install -q -e '.[test,lint,tpm]'
  touch "$stamp"
fi
