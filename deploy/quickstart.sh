#!/usr/bin/env bash
# One command from a fresh Debian/Ubuntu machine to a running corral (single machine):
# installs Redis, libvirt and QEMU, starts the libvirt daemons, builds the web console
# (web/build.sh) and corral, and runs
# `corral up` (controller + local node, SQLite in /var/lib/corral, local Redis).
set -euo pipefail
cd "$(dirname "$0")/.."
bash .ci/host-setup.sh
if ! command -v cargo >/dev/null; then
    # shellcheck disable=SC1091
    [ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
fi
command -v cargo >/dev/null || { echo "install Rust first: https://rustup.rs" >&2; exit 1; }
bash web/build.sh
cargo build --release
install -m 0755 target/release/corral target/release/corral-node /usr/local/bin/
exec corral up "$@"
