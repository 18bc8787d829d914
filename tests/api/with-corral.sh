#!/usr/bin/env bash
# Runs a command against a live corral on libvirt's test driver:
#
#   tests/api/with-corral.sh CORRAL_BINARY COMMAND [ARGS...]
#
# Starts Redis, a controller and a node in a scratch directory, waits until the API
# answers, then runs COMMAND with:
#   CORRAL_URL             the API base, http://127.0.0.1:<port>/api/v1
#   CORRAL_USER, CORRAL_PASSWORD   the administrator's credentials
#   CORRAL_TEMPLATE_IMAGE  a small qcow2 image to register as a template
# and stops everything afterwards. The command's exit status is the script's; on failure
# the controller's log tail is printed.
set -euo pipefail

bin=$(readlink -f "$1")
shift
work=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rport=$(free_port)
port=$(free_port)
redis-server --port "$rport" --bind 127.0.0.1 --dir "$work" --save '' --appendonly no \
    >"$work/redis.log" 2>&1 &
pids+=($!)

(
    export CORRAL_LISTEN=127.0.0.1:$port
    export CORRAL_DATABASE=$work/corral.db
    export CORRAL_DATA_DIR=$work
    export CORRAL_REDIS_URL=redis://127.0.0.1:$rport
    export CORRAL_ADMIN_PASSWORD=live-admin
    export CORRAL_IMAGE_DIRS=$work,/var/lib/corral/templates
    # The machine's load (a parallel build or test run) is not an input of these checks.
    export CORRAL_PLACEMENT_MAX_LOAD_PER_CPU=1000000
    export CORRAL_LOG=warn
    exec "$bin" controller
) >"$work/controller.log" 2>&1 &
pids+=($!)

export CORRAL_URL=http://127.0.0.1:$port/api/v1
export CORRAL_USER=admin CORRAL_PASSWORD=live-admin
for _ in $(seq 300); do
    curl -sf -H 'content-type: application/json' \
        -d "{\"username\":\"admin\",\"password\":\"live-admin\"}" "$CORRAL_URL/auth/login" \
        >"$work/login.json" 2>/dev/null && break
    sleep 0.1
done
token=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["token"])' "$work/login.json")
# The node is enrolled first: it reports through its own Redis user.
curl -sf -H "authorization: Bearer $token" -H 'content-type: application/json' \
    -d '{"id":"test-node"}' "$CORRAL_URL/nodes" >"$work/node-credential.json"
node_url=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["redis_url"])' \
    "$work/node-credential.json")
(
    export CORRAL_LISTEN=127.0.0.1:$port
    export CORRAL_DATA_DIR=$work
    export CORRAL_STORAGE_DIR=$work/images
    export CORRAL_REDIS_URL=$node_url
    export CORRAL_HYPERVISOR_URI=test:///default
    export CORRAL_NODE_ID=test-node
    export CORRAL_IMAGE_DIRS=$work,/var/lib/corral/templates
    export CORRAL_LOG=warn
    exec "$bin" agent
) >"$work/node.log" 2>&1 &
pids+=($!)
for _ in $(seq 300); do
    curl -sf -H "authorization: Bearer $token" "$CORRAL_URL/nodes/test-node" 2>/dev/null |
        grep -q '"online":true' && break
    sleep 0.1
done
qemu-img create -q -f qcow2 "$work/base.qcow2" 16M
export CORRAL_TEMPLATE_IMAGE=$work/base.qcow2

status=0
"$@" || status=$?
if [ "$status" -ne 0 ]; then
    echo "--- controller log (tail)"
    tail -30 "$work/controller.log"
    echo "--- node log (tail)"
    tail -10 "$work/node.log"
fi
exit "$status"
