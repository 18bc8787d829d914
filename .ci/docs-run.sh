#!/usr/bin/env bash
# Docs that run: every ```sh block of README.md and scripts/README.md, verbatim and in
# order, against a live corral on the test driver (tests/api/with-corral.sh), with the
# `corral` under test first on PATH and CORRAL_URL / CORRAL_TOKEN set as a user's shell
# would have them. A block right after a `<!-- docs: not run (why) -->` line is skipped and
# reported as skipped. Any failing command fails the run.
# Usage: .ci/docs-run.sh [CORRAL_BINARY]   (default: the debug build)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(readlink -f "${1:-target/debug/corral}")
here=$PWD
if [ -z "${CORRAL_URL:-}" ]; then
    exec tests/api/with-corral.sh "$bin" "$0" "$bin"
fi

bindir=$(mktemp -d)
trap 'rm -rf "$bindir"' EXIT
ln -s "$bin" "$bindir/corral"
export PATH="$bindir:$PATH"
CORRAL_TOKEN=$(curl -sf -H 'content-type: application/json' \
    -d "{\"username\":\"$CORRAL_USER\",\"password\":\"$CORRAL_PASSWORD\"}" "$CORRAL_URL/auth/login" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])')
export CORRAL_TOKEN

blocks=$(mktemp -d)
python3 - "$blocks" README.md scripts/README.md <<'PY'
import pathlib, re, sys
out = pathlib.Path(sys.argv[1])
n = 0
for doc in sys.argv[2:]:
    lines = pathlib.Path(doc).read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```sh":
            skip = None
            if i > 0 and (m := re.match(r"<!-- docs: not run \((.*)\) -->", lines[i - 1].strip())):
                skip = m.group(1)
            j = i + 1
            while lines[j].strip() != "```":
                j += 1
            n += 1
            name = f"{n:02d}-{doc.replace('/', '_')}-line{i + 1}"
            body = "\n".join(lines[i + 1:j]) + "\n"
            if skip:
                (out / f"{name}.skip").write_text(skip + "\n")
            else:
                (out / f"{name}.sh").write_text(body)
            i = j
        i += 1
PY
ran=0
skipped=0
for f in "$blocks"/*; do
    name=$(basename "$f")
    if [[ $f == *.skip ]]; then
        echo "SKIPPED ${name%.skip}: $(cat "$f")"
        skipped=$((skipped + 1))
        continue
    fi
    echo "== ${name%.sh}"
    # Each command is echoed before it runs, as a reader would type it.
    (cd "$here" && bash -euo pipefail -x "$f") || {
        echo "FAILED: ${name%.sh}"
        exit 1
    }
    ran=$((ran + 1))
done
echo "docs: $ran blocks ran, $skipped skipped"
