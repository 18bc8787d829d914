#!/usr/bin/env bash
# Builds the browser console into web/dist/ (committed; embedded in the controller).
# Deterministic: a rebuild from a clean clone gives byte-identical files.
set -euo pipefail
cd "$(dirname "$0")"

npm ci --no-audit --no-fund
npx tsc --noEmit -p .
rm -rf dist
mkdir -p dist
npx esbuild src/main.ts \
  --bundle --format=esm --minify --target=es2022 --legal-comments=none \
  --charset=utf8 --log-level=warning --outfile=dist/app.js
cp index.html app.css dist/
