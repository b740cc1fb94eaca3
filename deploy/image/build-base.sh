#!/usr/bin/env bash
# Build the Dockerfile's two base images from Debian packages with mmdebstrap,
# reproducibly, and `docker import` them under the tags the Dockerfile's FROM uses:
#   apisix-python-runner-base:<suite>-<snapshot>    python3 only: the runtime (no pip, no apt)
#   apisix-python-runner-build:<suite>-<snapshot>   + python3-pip, python3-setuptools: the build stage
#
# The package set is fixed by a snapshot.debian.org date, and SOURCE_DATE_EPOCH
# (derived from that date) makes mmdebstrap's tarball bit-for-bit reproducible:
# the same SNAPSHOT gives the same tarball, whose sha256 is printed and stored in
# the image's labels. Usage (as root, or with mmdebstrap's unshare mode):
#   deploy/image/build-base.sh                       # the pinned default snapshot
#   SNAPSHOT=20270115T000000Z deploy/image/build-base.sh   # move the pin (then update the Dockerfile's ARGs)
#   MIRROR=http://deb.debian.org/debian SECURITY_MIRROR=http://deb.debian.org/debian-security \
#     deploy/image/build-base.sh                     # today's archive instead: NOT reproducible, same tags
# Needs: mmdebstrap, docker (a running daemon). Idempotent: rebuilds and re-tags.
set -euo pipefail

SUITE=${SUITE:-trixie}
SNAPSHOT=${SNAPSHOT:-20261201T000000Z}
MIRROR=${MIRROR:-http://snapshot.debian.org/archive/debian/$SNAPSHOT}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://snapshot.debian.org/archive/debian-security/$SNAPSHOT}
OUT=${OUT:-${TMPDIR:-/tmp}/apisix-python-runner-base}
TAG=$SUITE-${SNAPSHOT%%T*}
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(date -u -d "${SNAPSHOT:0:4}-${SNAPSHOT:4:2}-${SNAPSHOT:6:2}" +%s)}
export SOURCE_DATE_EPOCH

# 65532 is the conventional non-root uid of minimal images (distroless "nonroot").
add_nonroot='echo "nonroot:x:65532:65532:nonroot:/nonexistent:/usr/sbin/nologin" >> "$1/etc/passwd";
             echo "nonroot:x:65532:" >> "$1/etc/group"'
# What a container never needs; keeps the copyright files.
slim=(--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright'
      --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/info/*'
      --dpkgopt='path-exclude=/usr/share/locale/*' --dpkgopt='path-include=/usr/share/locale/locale.alias')

build() {  # name, extra packages
    local name=$1 packages=$2 tarball=$OUT/$1-$TAG.tar
    mkdir -p "$OUT"
    mmdebstrap --variant=essential --include="$packages" "${slim[@]}" \
        --aptopt='Acquire::Check-Valid-Until "false"' \
        --customize-hook="$add_nonroot" \
        --customize-hook='rm -rf "$1"/var/cache/apt/* "$1"/var/lib/apt/lists/* "$1"/var/log/*' \
        --format=tar "$SUITE" "$tarball" \
        "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main"
    local digest
    digest=$(sha256sum "$tarball" | cut -d' ' -f1)
    docker import \
        --change "LABEL org.debian.suite=$SUITE org.debian.snapshot=$SNAPSHOT org.debian.mirror=$MIRROR" \
        --change "LABEL source-date-epoch=$SOURCE_DATE_EPOCH rootfs-tarball-sha256=$digest" \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'CMD ["/usr/bin/python3"]' \
        "$tarball" "apisix-python-runner-$name:$TAG" >/dev/null
    echo "apisix-python-runner-$name:$TAG  rootfs tarball sha256 $digest  ($MIRROR)"
}

build base python3
build build python3,python3-pip,python3-setuptools
