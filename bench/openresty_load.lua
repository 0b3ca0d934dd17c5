-- bench/openresty_load.lua — issue 16.5: genaudit inside nginx under load.
--
-- Two nginx instances on loopback, each with worker_processes 1:
--   provider  an instant OpenAI-format server (a fixed chat.completion body
--             from ngx.print; it keeps the first request body it gets, so
--             the bench can hand the floor the very bytes genaudit sent).
--             The Lua mock tools/local_provider.lua serves one connection at
--             a time and would be the bottleneck of both sides;
--   handler   examples/openresty/nginx.conf as shipped (rendered by
--             tools/openresty-example.sh: the full pipeline with the example
--             templates and rules, a SQLite store with the async writer) with
--             two locations added by this bench: /bare (bench/openresty_bare.lua,
--             the same provider call over a raw cosocket, content answered as
--             JSON: the floor) and /bare_body (to set the floor's request body),
--             plus keepalive_requests high enough that no connection is
--             recycled mid-run (the same for both sides).
-- wrk (Debian, one thread, 50 connections, --latency) drives GET /generate
-- and GET /bare for DURATION each, ROUNDS times alternating, and once the
-- provider directly (its ceiling: it must be well above the floor's rate).
-- Printed: requests/s of each side (medians), the ratio (median of each
-- round's genaudit/bare), p50/p99 latencies and the p99 genaudit adds, the
-- nginx worker's CPU time per answer on each side (its writer thread
-- included: on a shared machine this moves less than requests/s); then
-- the checks: no non-2xx answer, no socket error, and after a graceful stop
-- every answered generation has its row in the store.
-- Runs from the checkout (make bench does; the spec runs it at BENCH_SIZE=small).
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")
local socket = require("socket")
local nginx = require("spec.support.nginx")

local DURATION = common.size{ small = 1, full = 10 } -- seconds per wrk run
local ROUNDS = common.size{ small = 1, full = 3 }
local WARMUP = common.size{ small = 0, full = 3 } -- seconds per side, not measured (none when 0)
local CONCURRENCY = 50
local KEY = "sk-bench-openresty-0123456789"

-- An answer that passes the example rules on linkedin (under 80 words, a
-- hashtag line last, no banned word): one call per generation, no repair.
local CONTENT = "The Anvil 2 is here. Acme built it for the people who keep workshops running: a calmer motor,"
  .. " a longer warranty and parts you can order by phone. Come see it at the open house in Lyon on April 12,"
  .. " where Dana's bakery will tell you how the first one held up.\n\n#Anvil2"
local REPLY = '{"id":"chatcmpl-bench","object":"chat.completion","created":1741570283,'
  .. '"model":"gpt-4o-mini-2024-07-18","system_fingerprint":"fp_06737a9306","choices":[{"index":0,'
  .. '"message":{"role":"assistant","content":' .. require("cjson").encode(CONTENT) .. ',"refusal":null},'
  .. '"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":412,"completion_tokens":61,'
  .. '"total_tokens":473,"prompt_tokens_details":{"cached_tokens":0},'
  .. '"completion_tokens_details":{"reasoning_tokens":0}}}'

local PROVIDER_CONF = [[
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
pid @PREFIX@/nginx.pid;
error_log @PREFIX@/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path @PREFIX@/tmp/body;
    client_body_buffer_size 1m;
    client_max_body_size 1m;
    keepalive_requests 100000000;
    lua_shared_dict bench_provider 4m;
    server {
        listen 127.0.0.1:@PORT@;
        location = /health { return 200 "ok\n"; }
        location = /v1/chat/completions {
            content_by_lua_block {
                ngx.req.read_body()
                local body = ngx.req.get_body_data()
                if body then ngx.shared.bench_provider:add("first", body) end
                local reply = @REPLY@
                ngx.header["Content-Type"] = "application/json"
                ngx.header["Content-Length"] = #reply
                ngx.print(reply)
            }
        }
        location = /first { content_by_lua_block { ngx.print(ngx.shared.bench_provider:get("first") or "") } }
    }
}
]]

-- The bench's additions to the rendered example config (http level, then
-- the two locations in its server).
local HTTP_ADD = [[
    lua_shared_dict bench_bare 4m;
    keepalive_requests 100000000;

]]
local LOCATIONS_ADD = [[
        location = /bare { content_by_lua_file @BARE@; }
        location = /bare_body {
            client_body_buffer_size 1m;
            client_max_body_size 1m;
            content_by_lua_block {
                ngx.req.read_body()
                ngx.shared.bench_bare:set("body", ngx.req.get_body_data() or "")
                ngx.say("ok")
            }
        }

]]

assert(io.open("tools/openresty-example.sh"), "run bench/openresty_load.lua from the checkout (make bench does)")
local WRK = common.run("command -v wrk || true"):match("%S+")
assert(WRK, "wrk is missing: `make deps` installs it (Debian package wrk)")
local pwd = common.run("pwd"):match("[^\n]+")

-- A port nothing listens on now (bound to 0, read, released).
local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

local function curl(args) return common.run("curl -s -S --max-time 10 " .. args) end

-- Adds the floor to the rendered example config; raises when the config no
-- longer has the lines it anchors to.
local function inject(prefix)
  local path = prefix .. "/nginx.conf"
  local text = assert(common.read_file(path))
  local bare = (LOCATIONS_ADD:gsub("@BARE@", function() return pwd .. "/bench/openresty_bare.lua" end))
  local n1, n2
  text, n1 = text:gsub("\n    server {\n", function() return "\n" .. HTTP_ADD .. "    server {\n" end, 1)
  local generate = "\n        location = /generate "
  text, n2 = text:gsub(generate, function() return "\n" .. bare .. generate:sub(2) end, 1)
  assert(n1 == 1 and n2 == 1, "examples/openresty/nginx.conf changed shape: no `server {` or `location = /generate`")
  local f = assert(io.open(path, "wb"))
  f:write(text)
  f:close()
end

-- Parses wrk's output: { rps, requests, non2xx, errors, p50_ms, p90_ms, p99_ms }.
local UNIT = { us = 0.001, ms = 1, s = 1000, m = 60000 }
local function parse_wrk(out)
  local r = { rps = tonumber(out:match("Requests/sec:%s*([%d.]+)")),
              requests = tonumber(out:match("(%d+) requests in")),
              non2xx = tonumber(out:match("Non%-2xx or 3xx responses:%s*(%d+)")) or 0, errors = 0 }
  local c, rd, w, t = out:match("Socket errors: connect (%d+), read (%d+), write (%d+), timeout (%d+)")
  if c then r.errors = tonumber(c) + tonumber(rd) + tonumber(w) + tonumber(t) end
  for p, v, u in out:gmatch("\n%s*(%d+)%%%s+([%d.]+)(%a+)") do r["p" .. p .. "_ms"] = tonumber(v) * UNIT[u] end
  assert(r.rps and r.requests and r.p99_ms, "cannot read wrk's output:\n" .. out)
  return r
end

-- CPU seconds (user + system, all threads: the writer's too) the processes
-- in pids have used.
local TICK = tonumber(common.run("getconf CLK_TCK"):match("%d+")) or 100
local function cpu_s(pids)
  local t = 0
  for _, pid in ipairs(pids) do
    local stat = common.read_file("/proc/" .. pid .. "/stat") or ""
    local utime, stime = stat:match("^%d+ %b() %a" .. (" %S+"):rep(10) .. " (%d+) (%d+)")
    t = t + ((tonumber(utime) or 0) + (tonumber(stime) or 0)) / TICK
  end
  return t
end

-- One wrk run of `seconds` against url (script: a wrk Lua script or nil);
-- with pids, also the CPU microseconds those processes spent per answer.
local function wrk(url, seconds, script, pids)
  local cmd = ("%s -t1 -c%d -d%ds --timeout 10s --latency %s%s 2>&1"):format(WRK, CONCURRENCY, seconds,
    script and ("-s " .. common.quote(script) .. " ") or "", common.quote(url))
  local c0 = pids and cpu_s(pids)
  local r = parse_wrk(common.run(cmd))
  if pids then r.cpu_us = (cpu_s(pids) - c0) * 1e6 / r.requests end
  return r
end

common.title(("OpenResty under load: wrk -t1 -c%d, %d s per run, %d rounds alternating; nginx worker_processes 1")
  :format(CONCURRENCY, DURATION, ROUNDS))
local dir = common.tmpdir("openresty")
local db = dir .. "/audit.db"
if common.run("id -u"):match("^0") then assert(os.execute("chmod 755 " .. common.quote(dir))) end

local provider = nginx.start{ port = free_port(),
  config = PROVIDER_CONF:gsub("@REPLY@", function() return ("%q"):format(REPLY):gsub("\\\n", "\\n") end) }
local handler
local ok, err = pcall(function()
  handler = nginx.start{ port = free_port(), workers = 1, db = db, prepare = inject,
    env = { GENAUDIT_API_KEY = KEY, GENAUDIT_BASE_URL = provider.url, GENAUDIT_MODEL = "gpt-4o-mini" } }
  -- one generation first: the provider keeps its request body for the floor
  local first = curl(common.quote(handler.url .. "/generate"))
  assert(first:find('"snapshot_id"', 1, true) and first:find('"repairs":0', 1, true),
    "the example handler did not answer one generation without repair: " .. first)
  local body_path = dir .. "/request.json"
  curl(common.quote(provider.url .. "/first") .. " -o " .. common.quote(body_path))
  local body = assert(common.read_file(body_path))
  assert(#body > 0 and body:find('"messages"', 1, true), "the provider kept no request body")
  curl("--data-binary @" .. common.quote(body_path) .. " -H 'Content-Type: application/json' "
    .. common.quote(handler.url .. "/bare_body"))
  local bare_first = curl(common.quote(handler.url .. "/bare"))
  assert(bare_first:find('"content"', 1, true), "the bare handler did not answer: " .. bare_first)

  -- the provider's own ceiling, with the same body POSTed directly
  local script = dir .. "/post.lua"
  local f = assert(io.open(script, "wb"))
  f:write(('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    .. 'local f = io.open(%q, "rb")\nwrk.body = f:read("*a")\nf:close()\n'):format(body_path))
  f:close()
  local direct = wrk(provider.url .. "/v1/chat/completions", DURATION, script)

  if WARMUP > 0 then
    wrk(handler.url .. "/generate", WARMUP)
    wrk(handler.url .. "/bare", WARMUP)
  end
  local workers = {}
  for pid in common.run("pgrep -P " .. string.format("%d", handler.pid)):gmatch("%d+") do
    workers[#workers + 1] = pid
  end
  assert(#workers == 1, "expected one nginx worker, found " .. #workers)
  local ga, bare, ratios, added99, added50, cpu_ratios = {}, {}, {}, {}, {}, {}
  local served, bad = 1, 0 -- generations answered (the first one included); bad answers and socket errors
  for i = 1, ROUNDS do
    ga[i] = wrk(handler.url .. "/generate", DURATION, nil, workers)
    bare[i] = wrk(handler.url .. "/bare", DURATION, nil, workers)
    ratios[i] = ga[i].rps / bare[i].rps
    cpu_ratios[i] = ga[i].cpu_us / bare[i].cpu_us
    added99[i] = ga[i].p99_ms - bare[i].p99_ms
    added50[i] = ga[i].p50_ms - bare[i].p50_ms
    served = served + ga[i].requests
    bad = bad + ga[i].non2xx + ga[i].errors + bare[i].non2xx + bare[i].errors
  end
  local function med(runs, key)
    local v = {}
    for i, r in ipairs(runs) do v[i] = r[key] end
    return common.median(v)
  end
  handler:stop() -- graceful: the writer commits every acknowledged row first
  local log = handler:error_log()
  local store = assert(genaudit.open("sqlite:" .. db, { readonly = true }))
  local rows = store:query("SELECT count(*) AS n, sum(status = 'completed') AS ok FROM generation_snapshots")[1]
  store:close()
  local stored, completed = tonumber(rows.n), tonumber(rows.ok)
  -- wrk counts only the answers it read before its deadline (nginx finishes
  -- and stores the ones in flight), and the warm-up's are not counted: at least
  local errors_logged = select(2, log:gsub("%[error%]", ""))

  common.bench("openresty_load", "req/s", {
    { "genaudit", med(ga, "rps") }, { "baseline", "bare_cosocket:" .. common.num(med(bare, "rps")) },
    { "ratio", string.format("%.3f", common.median(ratios)) }, { "target", ">=0.80" },
    { "p99_added_ms", common.median(added99) }, { "p50_added_ms", common.median(added50) },
    { "genaudit_p99_ms", med(ga, "p99_ms") }, { "bare_p99_ms", med(bare, "p99_ms") },
    { "genaudit_cpu_us", med(ga, "cpu_us") }, { "bare_cpu_us", med(bare, "cpu_us") },
    { "cpu_ratio", string.format("%.3f", common.median(cpu_ratios)) }, { "provider_direct", direct.rps },
    { "concurrency", CONCURRENCY }, { "workers", 1 },
    { "rows", stored }, { "bad_answers", bad }, { "errors_logged", errors_logged },
  })
  for i = 1, ROUNDS do
    common.say("round %d: genaudit %s req/s (p50 %s ms, p99 %s ms, %d answers, %s us worker CPU each), bare %s req/s"
      .. " (p50 %s ms, p99 %s ms, %s us CPU each): ratio %.3f", i, common.num(ga[i].rps), common.num(ga[i].p50_ms),
      common.num(ga[i].p99_ms), ga[i].requests, common.num(ga[i].cpu_us), common.num(bare[i].rps),
      common.num(bare[i].p50_ms), common.num(bare[i].p99_ms), common.num(bare[i].cpu_us), ratios[i])
  end
  common.say("provider alone (wrk POSTing the same body): %s req/s, p99 %s ms — the floor's ceiling",
    common.num(direct.rps), common.num(direct.p99_ms))
  common.say("request body %d bytes; %d rows stored (%d completed) for %d generations wrk counted (+ warm-up)",
    #body, stored, completed, served)
  assert(bad == 0, "non-2xx answers or socket errors under load: " .. bad)
  assert(errors_logged == 0, "nginx logged errors:\n" .. log)
  assert(stored >= served and completed == stored,
    ("rows stored %d (completed %d) for %d answered generations"):format(stored, completed, served))
end)
if handler then handler:stop() handler:cleanup() end
provider:stop()
provider:cleanup()
common.rm(dir)
if not ok then error(err, 0) end
