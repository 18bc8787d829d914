#!/usr/bin/env bash
# Installs and starts everything corral and its tests need on a Debian/Ubuntu host, as
# root, without systemd: build packages, Redis, libvirt + QEMU, the tools the test guest
# fixture is built with; then starts virtlogd and libvirtd. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

say() { echo "host-setup: $*"; }

PKGS="libvirt-dev pkg-config redis-server redis-tools libvirt-daemon libvirt-daemon-driver-qemu
      libvirt-clients genisoimage iptables dnsmasq-base fdisk e2fsprogs extlinux syslinux-common
      busybox-static iproute2 qemu-system-x86 qemu-utils procps python3-venv curl"

missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    say "installing:$missing"
    apt-get update -qq
    # Some images ship a newer qemu-utils than the distribution's qemu-system-x86 accepts
    # ("qemu-utils Breaks qemu-system-common"): pin both to the same candidate version.
    V=$(apt-cache policy qemu-system-x86 | awk '/Candidate/{print $2}')
    QEMU_PIN=""
    if [ -n "$V" ] && [ "$V" != "(none)" ]; then
        QEMU_PIN="qemu-system-x86=$V qemu-utils=$V"
        if apt-cache show "qemu-block-extra=$V" >/dev/null 2>&1; then
            QEMU_PIN="$QEMU_PIN qemu-block-extra=$V"
        fi
    fi
    others=$(echo "$PKGS" | tr ' ' '\n' | grep -v -E '^(qemu-system-x86|qemu-utils)$' | tr '\n' ' ')
    # shellcheck disable=SC2086
    apt-get install -y -q --allow-downgrades $others $QEMU_PIN >/dev/null
fi

# The SDKs: openapi-generator runs on a Java runtime; the TypeScript SDK builds with npm.
# Installed only when the command is missing (a NodeSource node ships its own npm, which
# Debian's npm package would conflict with).
need_cmd() {
    if ! command -v "$1" >/dev/null; then
        say "installing ${*:2} for $1"
        apt-get update -qq
        apt-get install -y -q "${@:2}" >/dev/null
    fi
}
need_cmd java default-jre-headless
need_cmd npm nodejs npm

# libvirt refuses to start without its qemu user and groups.
getent group kvm >/dev/null || groupadd -r kvm
getent group libvirt-qemu >/dev/null || groupadd -r libvirt-qemu
getent passwd libvirt-qemu >/dev/null || useradd -r -g libvirt-qemu -G kvm libvirt-qemu

# Run guests as root without relabelling: these hosts have no security driver set up.
QC=/etc/libvirt/qemu.conf
set_conf() {
    if grep -qE "^\s*$1\s*=" "$QC"; then
        sed -i -E "s|^\s*$1\s*=.*|$1 = $2|" "$QC"
    else
        echo "$1 = $2" >> "$QC"
    fi
}
set_conf user '"root"'
set_conf group '"root"'
set_conf dynamic_ownership 0
set_conf security_driver '"none"'

mkdir -p /var/log/libvirt /var/run/libvirt
alive() { ps -C "$1" -o stat= 2>/dev/null | grep -qv '^Z'; }
answers() { virsh -c qemu:///system version >/dev/null 2>&1; }
alive virtlogd || virtlogd -d
if ! answers; then
    # Not answering: start it, or restart one that is wedged (a previous run killed).
    if alive libvirtd; then
        say "restarting libvirtd"
        pkill -x libvirtd || true
        sleep 1
    else
        say "starting libvirtd"
    fi
    rm -f /var/run/libvirtd.pid
    libvirtd -d
fi
for _ in $(seq 1 100); do
    if answers; then
        say "libvirt ready: $(virsh -c qemu:///system version 2>/dev/null | grep -i 'running hypervisor' || true)"
        exit 0
    fi
    sleep 0.2
done
echo "host-setup: libvirtd did not answer on qemu:///system within 20 s" >&2
exit 1
