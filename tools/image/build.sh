#!/usr/bin/env bash
# Build the triserve image without a container engine or a registry, for tests/deploy/test_image.py.
#
# The Dockerfile stays the release recipe (python:3.11-slim-bookworm plus the wheels of
# requirements/runtime.lock). This builds the same thing from Debian packages: mmdebstrap makes
# a bookworm root filesystem with Debian's Python 3.11, pip installs the hash-locked runtime
# wheels and triserve's own wheel into /opt/triserve inside it, and umoci turns that into an OCI
# image layout with the Dockerfile's user, entrypoint, command, environment, ports and labels.
#
# The layout goes to .cache/image/<version>-<hash>/ (ignored by git), named by a hash of the
# inputs (this script, the runtime lock, pyproject.toml, README.md and src/), so an unchanged
# tree is reused. Downloaded .debs and wheels are kept under .cache/image/ too, so a rebuild
# after a source change downloads nothing. Needs mmdebstrap and umoci (Debian packages of those
# names) and the Debian mirror; run as root (mmdebstrap's root mode; its unprivileged unshare
# mode may work too, but is not tested).
# Prints the layout's directory, then `:<tag>`, on its last line: `<dir>:<tag>`.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
python="${PYTHON:-python3}"
cache="$repo/.cache/image"
version="$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/pyproject.toml" | head -1)"
suite=bookworm
arch="$(dpkg --print-architecture)"

inputs_hash="$(
  cd "$repo"
  { printf '%s\n' tools/image/build.sh requirements/runtime.lock pyproject.toml README.md
    find src -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -path '*.egg-info/*'
  } | LC_ALL=C sort | xargs sha256sum | sha256sum | cut -c1-12
)"
out="$cache/$version-$inputs_hash"
if [[ -f "$out/index.json" ]]; then
  echo "$out:$version"
  exit 0
fi
start=$(date +%s)
mkdir -p "$cache"
work="$(mktemp -d "$cache/tmp.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$cache/debs" "$work/wheels"

# The runtime wheels exactly as hash-locked, for CPython 3.11 on bookworm's glibc (2.36), then
# triserve's own. They are installed below by the image's own pip, which checks the hashes again.
machine="$(uname -m)"
platforms=()
for glibc in 36 35 34 31 28 27 24 17 12 5; do platforms+=(--platform "manylinux_2_${glibc}_$machine"); done
platforms+=(--platform "manylinux2014_$machine" --platform "linux_$machine")
"$python" -m pip download -q --require-hashes --only-binary=:all: --no-deps \
  --implementation cp --python-version 3.11 "${platforms[@]}" \
  --dest "$cache/wheels" -r "$repo/requirements/runtime.lock"
cp "$cache/wheels/"*.whl "$work/wheels/"
"$python" -m pip wheel -q --no-deps --no-build-isolation --wheel-dir "$work/wheels" "$repo" >/dev/null
cp "$repo/requirements/runtime.lock" "$work/wheels/"

# The image's own pip, with a clean environment (no PIP_* of the build host).
pip='PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 /opt/triserve/bin/pip'
# Debian's python3 (3.11 in bookworm) on the Essential set; python3-venv brings ensurepip and
# grpcio needs libstdc++. Documentation, manuals and translations are left out, as in Debian's
# -slim images.
# The .debs are synced in and out of .cache/image/debs so that a rebuild downloads nothing.
mmdebstrap --variant=essential --arch="$arch" --format=tar \
  --include=python3,python3-venv,libstdc++6,ca-certificates,tzdata \
  --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  --skip=essential/unlink \
  --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
  --setup-hook="sync-in '$cache/debs' /var/cache/apt/archives/" \
  --customize-hook="sync-out /var/cache/apt/archives '$cache/debs'" \
  --customize-hook="copy-in '$work/wheels' /tmp" \
  --customize-hook='chroot "$1" env -i /usr/bin/python3 -m venv /opt/triserve' \
  --customize-hook="chroot \"\$1\" env -i $pip install -q --no-index --find-links=/tmp/wheels --require-hashes -r /tmp/wheels/runtime.lock" \
  --customize-hook="chroot \"\$1\" env -i $pip install -q --no-index --no-deps --find-links=/tmp/wheels triserve==$version" \
  --customize-hook='chroot "$1" env -i /opt/triserve/bin/triserve --version' \
  --customize-hook='rm -rf "$1"/tmp/wheels' \
  "$suite" "$work/rootfs.tar" \
  "deb http://deb.debian.org/debian $suite main" \
  "deb http://deb.debian.org/debian $suite-updates main" \
  "deb http://deb.debian.org/debian-security $suite-security main"

# One layer, configured as the Dockerfile's final stage is (USER, WORKDIR, ENV, EXPOSE,
# ENTRYPOINT, CMD, LABEL); tests/deploy/test_image.py holds the two to each other.
umoci init --layout "$work/oci"
umoci new --image "$work/oci:$version"
umoci raw add-layer --image "$work/oci:$version" --history.created_by "tools/image/build.sh (mmdebstrap $suite, runtime.lock, triserve $version)" "$work/rootfs.tar"
revision="$(git -C "$repo" rev-parse HEAD 2>/dev/null || echo unknown)"
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
source=https://github.com/triserve/triserve
config=(
  --os linux --architecture "$arch"
  --config.user 65532:65532 --config.workingdir /tmp
  --config.entrypoint triserve --config.cmd --help
  --config.exposedports 8080/tcp --config.exposedports 9402/tcp
  --config.env PATH=/opt/triserve/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
  --config.env LANG=C.UTF-8
  --config.env PIP_NO_CACHE_DIR=1 --config.env PIP_DISABLE_PIP_VERSION_CHECK=1
  --config.env PYTHONDONTWRITEBYTECODE=1 --config.env PYTHONUNBUFFERED=1 --config.env HOME=/tmp
  --config.label org.opencontainers.image.title=triserve
  --config.label "org.opencontainers.image.description=Kubernetes operator and node agent for GPU energy policy in multimodal inference serving (Tri-serve clock control)"
  --config.label "org.opencontainers.image.version=$version"
  --config.label "org.opencontainers.image.revision=$revision"
  --config.label "org.opencontainers.image.created=$created"
  --config.label org.opencontainers.image.licenses=Apache-2.0
  --config.label "org.opencontainers.image.source=$source"
  --config.label "org.opencontainers.image.url=$source"
  --config.label "org.opencontainers.image.documentation=$source/blob/main/docs/install.md"
  --config.label org.opencontainers.image.vendor=triserve
  --config.label "org.opencontainers.image.base.name=docker.io/library/debian:$suite"
)
umoci config --image "$work/oci:$version" "${config[@]}"
umoci gc --layout "$work/oci"
rm -rf "$out"
mv "$work/oci" "$out"
# Only the newest layout is kept (each is about 100 MB).
for old in "$cache/$version"-*/; do
  [[ "${old%/}" == "$out" ]] || rm -rf "$old"
done
echo "built $out ($(du -sm "$out" | cut -f1) MB) in $(( $(date +%s) - start ))s" >&2
echo "$out:$version"
