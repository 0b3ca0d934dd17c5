#!/bin/sh
# Makes docs/report.png, the README's picture of `genaudit report html`: fills
# a fresh demo-like store (tools/report_demo_store.lua: 14 days of the example
# templates), renders the page with the CLI and takes a full-page screenshot
# in Debian's headless Chromium (spec/support/html_check.js, playwright-core
# from tools/node-deps.sh), failing if the page logged an error or asked for
# anything but itself. Needs `make all` (build/lua54) first.
set -eu
cd "$(dirname "$0")/.."
modules=$(sh tools/node-deps.sh)
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
export LUA_PATH="./lua/?.lua;./lua/?/init.lua;./?.lua;;" LUA_CPATH="./build/lua54/?.so;;"
lua5.4 tools/report_demo_store.lua "$dir/demo.db"
lua5.4 bin/genaudit --db "$dir/demo.db" report html --out "$dir/report.html"
mkdir -p docs
node spec/support/html_check.js "$modules" --screenshot docs/report.png "$dir/report.html" >"$dir/check.json"
node -e '
  const p = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))[0];
  const bad = p.console_errors.concat(p.page_errors, p.blocked);
  if (bad.length) { console.error("report-screenshot: " + bad.join("; ")); process.exit(1); }
  console.log("docs/report.png: " + p.figures.length + " figures, " + p.figures.reduce((n, f) => n + f.bars, 0) + " bars");
' "$dir/check.json"
