#!/usr/bin/env bash
# The API as clients see it: the committed OpenAPI document passes a standard validator
# (openapi-spec-validator), and schemathesis, run against a live corral on libvirt's test
# driver for a bounded time (CORRAL_FUZZ_SECS, default 120), finds no 5xx, no response
# outside its schema, no undocumented status and no bad input accepted.
# Usage: .ci/api-contract.sh [CORRAL_BINARY]   (default: the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/corral}
venv=target/ci-venv
if [ ! -x "$venv/bin/schemathesis" ] || [ ! -x "$venv/bin/openapi-spec-validator" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q -r tests/api/requirements.txt
fi
"$venv/bin/openapi-spec-validator" openapi/corral.json
PATH="$PWD/$venv/bin:$PATH" tests/api/fuzz.sh "$bin" "${CORRAL_FUZZ_SECS:-120}"
