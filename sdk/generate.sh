#!/usr/bin/env bash
# Regenerates the three SDKs from openapi/corral.json with openapi-generator (the PyPI
# package, which bundles the generator; it runs on a Java runtime):
#   sdk/python      (generator `python`, package `corral_client`)
#   sdk/typescript  (generator `typescript-fetch`, package `corral-client`)
#   sdk/rust        (generator `rust`, crate `corral-client`, async reqwest)
# Each SDK's hand-written layer (login, wait for an operation, follow events) lives beside
# the generated code and is listed in its `.openapi-generator-ignore`, so it survives.
#
#   sdk/generate.sh          regenerate in place
#   sdk/generate.sh --check  regenerate into a scratch copy and fail if anything differs
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
GENERATOR_VERSION=7.26.0
venv=${CORRAL_SDK_VENV:-$root/target/sdk-venv}
if [ ! -x "$venv/bin/openapi-generator-cli" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "openapi-generator-cli==$GENERATOR_VERSION"
fi
gen() { "$venv/bin/openapi-generator-cli" generate -i "$root/openapi/corral.json" "$@" >/dev/null; }

# Hand-written files: kept across regeneration (each SDK's .openapi-generator-ignore names
# them too); everything else in an SDK directory is generated from scratch every time.
hand_written() {
    case $1 in
        python) echo ".openapi-generator-ignore corral_client/session.py tests_live" ;;
        typescript) echo ".openapi-generator-ignore src/session.ts src/index.ts package.json package-lock.json tsconfig.json smoke" ;;
        rust) echo ".openapi-generator-ignore Cargo.toml src/lib.rs src/session.rs tests" ;;
    esac
}

out=$root/sdk
if [ "${1:-}" = "--check" ]; then
    out=$(mktemp -d)
    trap 'rm -rf "$out"' EXIT
fi
for lang in python typescript rust; do
    keep=$(mktemp -d)
    for f in $(hand_written $lang); do
        if [ -e "$root/sdk/$lang/$f" ]; then
            mkdir -p "$keep/$(dirname "$f")"
            cp -a "$root/sdk/$lang/$f" "$keep/$f"
        fi
    done
    rm -rf "${out:?}/$lang"
    mkdir -p "$out/$lang"
    cp -a "$keep/." "$out/$lang/"
    rm -rf "$keep"
done

gen -g python -o "$out/python" --package-name corral_client \
    --additional-properties=projectName=corral-client,packageVersion=0.1.0
gen -g typescript-fetch -o "$out/typescript" \
    --additional-properties=npmName=corral-client,npmVersion=0.1.0,supportsES6=true
gen -g rust -o "$out/rust" \
    --additional-properties=packageName=corral-client,packageVersion=0.1.0,library=reqwest,supportAsync=true,preferUnsignedInt=true
# The generator's formatting is not rustfmt's; the committed crate is formatted.
(cd "$out/rust" && cargo fmt 2>/dev/null || rustfmt --edition 2021 src/lib.rs)

if [ "${1:-}" = "--check" ]; then
    stale=0
    # Build outputs (ignored by git: pip's build/, npm's node_modules and dist, ...) are
    # not the SDK: a checkout that ran the smoke tests before still compares clean.
    skip=(-x node_modules -x dist -x target -x __pycache__ -x '*.egg-info' -x build)
    for lang in python typescript rust; do
        diff -r "${skip[@]}" "$root/sdk/$lang" "$out/$lang" | head -40 && true
        diff -r -q "${skip[@]}" "$root/sdk/$lang" "$out/$lang" >/dev/null || stale=1
    done
    if [ "$stale" -ne 0 ]; then
        echo "the SDKs are stale: run sdk/generate.sh and commit the result"
        exit 1
    fi
    echo "SDKs match openapi/corral.json"
fi
