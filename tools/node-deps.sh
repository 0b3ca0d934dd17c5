#!/bin/sh
# Installs the npm packages the browser specs and tools/report-screenshot.sh use
# (playwright-core, which drives Debian's /usr/bin/chromium over the DevTools
# protocol; it downloads no browser) into build/node, once: a later run with
# the same version there does nothing. Prints the node_modules directory.
# Exit 1 (one line on stderr) when npm is missing or the install fails.
set -eu
cd "$(dirname "$0")/.."
VERSION=1.65.2
DIR=build/node
if [ -f "$DIR/node_modules/playwright-core/package.json" ] &&
  grep -q "\"version\": \"$VERSION\"" "$DIR/node_modules/playwright-core/package.json"; then
  echo "$PWD/$DIR/node_modules"
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "node-deps: npm not found (apt-get install npm)" >&2
  exit 1
fi
mkdir -p "$DIR"
[ -f "$DIR/package.json" ] || echo '{ "private": true }' > "$DIR/package.json"
if ! PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --prefix "$DIR" --no-audit --no-fund --silent \
  "playwright-core@$VERSION" >"$DIR/npm.log" 2>&1; then
  echo "node-deps: npm install playwright-core@$VERSION failed (see $DIR/npm.log)" >&2
  exit 1
fi
echo "$PWD/$DIR/node_modules"
