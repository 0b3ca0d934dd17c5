#!/bin/sh
# Installs OpenAI's tokenizer as the npm package `tiktoken` (Rust compiled to
# WASM; the reference genaudit.tokens is checked and benchmarked against)
# into a cache dir, once. Prints the dir whose node_modules/ holds it.
#   sh tools/tiktoken-node.sh            -> build/node-tiktoken
#   GENAUDIT_TIKTOKEN_DIR=/path sh tools/tiktoken-node.sh
# (its own prefix: npm install --no-save prunes packages it did not install,
# so sharing build/node with tools/node-deps.sh would remove theirs)
# Fails (exit 1, one line on stderr) when node/npm are missing or the
# install fails; never commits node_modules (build/ is ignored).
set -eu
DIR=${GENAUDIT_TIKTOKEN_DIR:-build/node-tiktoken}
VER=1.0.22
PKG="$DIR/node_modules/tiktoken/package.json"
if [ -f "$PKG" ] && grep -q "\"version\": \"$VER\"" "$PKG"; then
  echo "$DIR"
  exit 0
fi
command -v node >/dev/null 2>&1 || { echo "tiktoken-node: node not found (Debian: apt-get install nodejs)" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "tiktoken-node: npm not found (Debian: apt-get install npm)" >&2; exit 1; }
mkdir -p "$DIR"
if ! npm install --prefix "$DIR" --no-save --no-audit --no-fund --loglevel=error "tiktoken@$VER" >&2; then
  echo "tiktoken-node: npm install tiktoken@$VER into $DIR failed" >&2
  exit 1
fi
[ -f "$PKG" ] || { echo "tiktoken-node: $PKG missing after npm install" >&2; exit 1; }
echo "$DIR"
