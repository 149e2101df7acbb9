#!/usr/bin/env bash
# `make deb`: builds the Debian package with Debian's own tooling
# (dpkg-buildpackage, debhelper, pybuild) from a copy of the sources in a
# directory of its own under build/ (dpkg-buildpackage writes its results
# beside the source directory, its debian/ work files must not land in the
# clone, and two builds at once must not share one).
# Prints the path of the .deb, which is also copied to dist/.
set -euo pipefail
cd "$(dirname "$0")/.."

version=$(dpkg-parsechangelog -l debian/changelog -S Version)
mkdir -p build dist
work=$(mktemp -d build/deb.XXXXXX)
trap 'rm -rf "$work"' EXIT
src="$work/podvm-bootstrap-$version"
mkdir -p "$src"
cp -r --parents pyproject.toml README.md docs podvm_bootstrap systemd debian scripts/build-man.py \
  image/config/bootstrap.yaml image/config/components.yaml image/config/policy.yaml \
  containers/registries.d "$src/"
find "$src" -name __pycache__ -prune -exec rm -rf {} +
# A fixed timestamp: the same sources give the same package.
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(dpkg-parsechangelog -l debian/changelog -S Timestamp)}
# Debian's own Python and tools, not a virtualenv's or pyenv's found first on PATH.
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage --build=binary --no-sign >../build.log 2>&1) || {
  tail -n 40 "$work/build.log" >&2
  echo "make deb: dpkg-buildpackage failed (the last 40 lines of its log above)" >&2
  exit 1
}
name="podvm-bootstrap_${version}_all.deb"
cp "$work/$name" "dist/.$name.$$"
mv -f "dist/.$name.$$" "dist/$name"  # atomic: a concurrent reader never sees half a package
echo "dist/$name"
