#!/usr/bin/env bash
# Build the Debian root filesystems that systemd.sh boots with systemd-nspawn:
#   $MACHINES/deb12  Debian 12 bookworm (systemd 252)
#   $MACHINES/deb13  Debian 13 trixie   (systemd 257)
# Each holds what a fresh minimal server has plus systemd, dbus, python3 and python3-venv.
# Idempotent: an existing tree is kept (delete it to rebuild). About 2 minutes per tree.
set -euo pipefail
MACHINES=${MACHINES:-/var/lib/machines}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
packages=systemd,systemd-sysv,dbus,python3,python3-venv,passwd,ca-certificates,procps

for spec in deb12:bookworm deb13:trixie; do
    name=${spec%%:*} suite=${spec#*:} dir=$MACHINES/${spec%%:*}
    if [ -x "$dir/usr/lib/systemd/systemd" ] || [ -x "$dir/lib/systemd/systemd" ]; then
        echo "$dir: exists"
        continue
    fi
    mkdir -p "$MACHINES"
    mmdebstrap --variant=apt --include="$packages" \
        --customize-hook='echo '"$name"' > "$1/etc/hostname"' \
        --customize-hook='rm -f "$1/etc/machine-id"; : > "$1/etc/machine-id"' \
        "$suite" "$dir.tmp" \
        "deb $MIRROR $suite main" "deb $MIRROR $suite-updates main" "deb $SECURITY_MIRROR $suite-security main"
    mv "$dir.tmp" "$dir"
    echo "$dir: built"
done
