#!/usr/bin/env bash
# The generated SDKs, each against a live corral on the test driver: the drift check
# (sdk/generate.sh --check), then the Python and TypeScript smoke scenarios (the Rust
# SDK's runs among the cargo tests, tests/sdk.rs).
# Usage: .ci/sdk-smoke.sh [CORRAL_BINARY]   (default: the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/corral}

echo "-- drift"
bash sdk/generate.sh --check

echo "-- python"
venv=target/sdk-py-venv
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q ./sdk/python
tests/api/with-corral.sh "$bin" "$venv/bin/python" sdk/python/tests_live/smoke.py

echo "-- typescript"
(cd sdk/typescript && npm install --no-audit --no-fund --silent && npm run --silent build)
tests/api/with-corral.sh "$bin" node sdk/typescript/smoke/smoke.cjs
