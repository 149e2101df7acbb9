#!/usr/bin/env bash
# `make deb`: builds the Debian package with Debian's own tooling
# (dpkg-buildpackage, debhelper, pybuild) from a copy of the sources under
# build/deb (dpkg-buildpackage writes its results beside the source
# directory, and its debian/ work files must not land in the clone).
# Prints the path of the .deb, which is also copied to dist/.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(dpkg-parsechangelog -l debian/changelog -S Version)
work=build/deb
src="$work/podvm-bootstrap-$version"
rm -rf "$work"
mkdir -p "$src" dist
cp -r --parents pyproject.toml README.md podvm_bootstrap systemd debian \
  image/config/bootstrap.yaml image/config/components.yaml image/config/policy.yaml \
  image/config/registries.d "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
# A fixed timestamp: the same sources give the same package.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -l debian/changelog -S Timestamp)}
# Debian's own Python and tools, not a virtualenv's or pyenv's found first on PATH.
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage --build=binary --no-sign >../build.log 2>&1) || {
  tail -n 40 "$work/build.log" >&2
  echo "make deb: dpkg-buildpackage failed; the whole log is $work/build.log" >&2
  exit 1
}
deb="$work/podvm-bootstrap_${version}_all.deb"
cp "$deb" dist/
echo "dist/$(basename "$deb")"
