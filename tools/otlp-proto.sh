#!/bin/sh
# Installs (once; cached in build/node/otlp) what spec/otel_spec.lua decodes
# the exported spans with: protobufjs and the official opentelemetry-proto
# .proto files (as shipped in @opentelemetry/otlp-grpc-exporter-base 0.34.0,
# build/protos/). Prints the directory holding node_modules. Exit status 1
# with one line on stderr when node/npm are missing or the registry cannot
# be reached: the spec then fails, saying so.
set -eu
cd "$(dirname "$0")/.."
DIR=${GENAUDIT_NODE_DIR:-build/node/otlp}
PROTOBUFJS=7.6.6
PROTOS_PKG=@opentelemetry/otlp-grpc-exporter-base@0.34.0
STAMP="$DIR/.installed-protobufjs-$PROTOBUFJS-grpc-exporter-base-0.34.0"
PROTO="$DIR/node_modules/@opentelemetry/otlp-grpc-exporter-base/build/protos/opentelemetry/proto/collector/trace/v1/trace_service.proto"
if [ -f "$STAMP" ] && [ -f "$PROTO" ] && [ -d "$DIR/node_modules/protobufjs" ]; then
  echo "$DIR"
  exit 0
fi
for tool in node npm; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    echo "otlp-proto: $tool not found (Debian: apt-get install nodejs npm)" >&2
    exit 1
  fi
done
mkdir -p "$DIR"
[ -f "$DIR/package.json" ] || echo '{"private": true, "description": "genaudit spec tooling (not shipped)"}' >"$DIR/package.json"
log="$DIR/npm-install.log"
if ! (cd "$DIR" && npm install --no-audit --no-fund --ignore-scripts --loglevel=error \
      "protobufjs@$PROTOBUFJS" "$PROTOS_PKG") >"$log" 2>&1; then
  echo "otlp-proto: npm install of protobufjs@$PROTOBUFJS $PROTOS_PKG failed (registry unreachable?): $(tail -n 1 "$log")" >&2
  exit 1
fi
if [ ! -f "$PROTO" ]; then
  echo "otlp-proto: $PROTOS_PKG did not bring $PROTO" >&2
  exit 1
fi
touch "$STAMP"
echo "$DIR"
