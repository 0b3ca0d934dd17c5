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
-- Then one more round with the provider answering after DELAY_MS (a fast
-- real provider; the rate is then bound by concurrency / latency, not CPU).
-- Printed: requests/s of each side (medians), the ratio (median of each
-- round's genaudit/bare), p50/p99 latencies and the p99 genaudit adds, the
-- nginx worker's CPU time per answer on each side (its writer thread
-- included: on a shared machine this moves less than requests/s); then
-- the checks: no non-2xx answer, no socket error, and after a graceful stop
-- every answered generation has its row in the store.
-- Nothing is pinned: wrk, the provider's worker and the handler's worker
-- (with its writer threads) share the machine's cores (2 here) as the
-- scheduler likes, as they would on a small host. The bench accounts for it
-- instead: per answer, the CPU of the provider's worker (provider_cpu_us)
-- and of wrk (wrk_cpu_us) beside the handler's, their sums' ratio
-- (cpu_all_ratio: genaudit's over the floor's, what the rate ratio comes to
-- when these three alone saturate the cores), and how busy the whole
-- machine was (machine_busy, 0..1 of all cores: near 1 with the three using
-- much less means other jobs took the rest, and the rates say little).
-- Runs from the checkout (make bench does; the spec runs it at BENCH_SIZE=small).
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local genaudit = require("genaudit")
local socket = require("socket")
local nginx = require("spec.support.nginx")
local tmp = require("spec.support.tmp")

local DURATION = common.size{ small = 1, full = 10 } -- seconds per wrk run
local ROUNDS = common.size{ small = 1, full = 3 }
local WARMUP = common.size{ small = 0, full = 3 } -- seconds per side, not measured (none when 0)
local CONCURRENCY = 50
local DELAY_MS = 100 -- the second measurement's provider answer time
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
                local delay = ngx.shared.bench_provider:get("delay_ms")
                if delay and delay > 0 then ngx.sleep(delay / 1000) end
                local body = ngx.req.get_body_data()
                if body then ngx.shared.bench_provider:add("first", body) end
                local reply = @REPLY@
                ngx.header["Content-Type"] = "application/json"
                ngx.header["Content-Length"] = #reply
                ngx.print(reply)
            }
        }
        location = /first { content_by_lua_block { ngx.print(ngx.shared.bench_provider:get("first") or "") } }
        location = /delay {
            content_by_lua_block {
                ngx.shared.bench_provider:set("delay_ms", tonumber(ngx.var.arg_ms) or 0)
                ngx.say("ok")
            }
        }
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

-- CPU seconds (user + system) the processes in pids have used: all their
-- threads, and apart the threads other than the main one (the store's writer).
local TICK = tonumber(common.run("getconf CLK_TCK"):match("%d+")) or 100
local CORES = tonumber(common.run("nproc"):match("%d+")) or 0
local function ticks(path)
  local stat = common.read_file(path) or ""
  local utime, stime = stat:match("^%d+ %b() %a" .. (" %S+"):rep(10) .. " (%d+) (%d+)")
  return ((tonumber(utime) or 0) + (tonumber(stime) or 0)) / TICK
end
local function cpu_s(pids)
  local all, others = 0, 0
  for _, pid in ipairs(pids) do
    all = all + ticks("/proc/" .. pid .. "/stat")
    for tid in common.run("ls /proc/" .. pid .. "/task"):gmatch("%d+") do
      if tid ~= pid then others = others + ticks("/proc/" .. pid .. "/task/" .. tid .. "/stat") end
    end
  end
  return all, others
end

-- The machine's CPU seconds so far, busy and in all (every core: /proc/stat's
-- first line; busy is all but idle and iowait).
local function machine_s()
  local f = io.open("/proc/stat", "rb")
  local line = f and f:read("l") or ""
  if f then f:close() end
  local busy, all, i = 0, 0, 0
  for v in line:gmatch("%d+") do
    i = i + 1
    if i <= 8 then -- user nice system idle iowait irq softirq steal (guest is inside user)
      all = all + tonumber(v)
      if i ~= 4 and i ~= 5 then busy = busy + tonumber(v) end
    end
  end
  return busy / TICK, all / TICK
end

-- One wrk run of `seconds` against url (script: a wrk Lua script or nil);
-- with pids, also the CPU microseconds those processes spent per answer
-- (cpu_us; thread_cpu_us: in threads other than the main one), and with
-- others (the provider's worker pids) theirs (provider_cpu_us). Always:
-- wrk's own CPU per answer (wrk_cpu_us, from the shell's `times`) and the
-- whole machine's busy share of all its cores during the run (machine_busy,
-- 0..1: with 2 cores wrk, the provider and the handler share them, and
-- other jobs on a shared machine show up here as what the three do not use).
local function wrk(url, seconds, script, pids, others)
  local cmd = ("%s -t1 -c%d -d%ds --timeout 10s --latency %s%s 2>&1; times"):format(WRK, CONCURRENCY, seconds,
    script and ("-s " .. common.quote(script) .. " ") or "", common.quote(url))
  local c0, t0, p0
  if pids then c0, t0 = cpu_s(pids) end
  if others then p0 = cpu_s(others) end
  local b0, a0 = machine_s()
  local out = common.run(cmd)
  local b1, a1 = machine_s()
  local r = parse_wrk(out)
  -- `times`: the shell's user and system times, then its children's (wrk)
  local T = "(%d+)m([%d.]+)s"
  local um, us_, sm, ss = out:match(T .. " " .. T .. "%s*$")
  r.wrk_cpu_us = um and (tonumber(um) * 60 + tonumber(us_) + tonumber(sm) * 60 + tonumber(ss)) * 1e6 / r.requests
    or 0 / 0
  r.machine_busy = a1 > a0 and (b1 - b0) / (a1 - a0) or 0 / 0
  if pids then
    local c1, t1 = cpu_s(pids)
    r.cpu_us, r.thread_cpu_us = (c1 - c0) * 1e6 / r.requests, (t1 - t0) * 1e6 / r.requests
  end
  if others then r.provider_cpu_us = (cpu_s(others) - p0) * 1e6 / r.requests end
  return r
end

common.title(("OpenResty under load: wrk -t1 -c%d, %d s per run, %d rounds alternating; nginx worker_processes 1")
  :format(CONCURRENCY, DURATION, ROUNDS))
local dir = common.tmpdir("openresty")
-- the store in a directory of its own under /tmp, as spec/nginx_spec.lua has
-- it: as root the workers run as nobody, who cannot enter $BENCH_TMPDIR (0700)
local dbdir = tmp.dir()
local db = dbdir .. "/audit.db"

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
  local function children(pid)
    local out = {}
    for c in common.run("pgrep -P " .. string.format("%d", pid)):gmatch("%d+") do out[#out + 1] = c end
    return out
  end
  local workers, provider_workers = children(handler.pid), children(provider.pid)
  assert(#workers == 1, "expected one nginx worker, found " .. #workers)
  assert(#provider_workers == 1, "expected one provider nginx worker, found " .. #provider_workers)
  local served, bad = 1, 0 -- generations answered (the first one included); bad answers and socket errors
  local function med(runs, key)
    local v = {}
    for i, r in ipairs(runs) do v[i] = r[key] end
    return common.median(v)
  end
  -- n rounds of `seconds` per side, alternating: { ga, bare, ratio, cpu_ratio, added99, added50 } (medians
  -- of the rounds' paired figures)
  local function rounds(n, seconds)
    local t = { ga = {}, bare = {}, ratios = {}, cpu = {}, cpu_all = {}, added99 = {}, added50 = {} }
    for i = 1, n do
      local g = wrk(handler.url .. "/generate", seconds, nil, workers, provider_workers)
      local b = wrk(handler.url .. "/bare", seconds, nil, workers, provider_workers)
      t.ga[i], t.bare[i] = g, b
      t.ratios[i], t.cpu[i] = g.rps / b.rps, g.cpu_us / b.cpu_us
      -- the three processes' CPU per answer: what the rates come to when they alone share the cores
      t.cpu_all[i] = (g.cpu_us + g.provider_cpu_us + g.wrk_cpu_us) / (b.cpu_us + b.provider_cpu_us + b.wrk_cpu_us)
      t.added99[i], t.added50[i] = g.p99_ms - b.p99_ms, g.p50_ms - b.p50_ms
      served = served + g.requests
      bad = bad + g.non2xx + g.errors + b.non2xx + b.errors
    end
    t.ratio, t.cpu_ratio, t.cpu_all_ratio = common.median(t.ratios), common.median(t.cpu), common.median(t.cpu_all)
    t.p99_added, t.p50_added = common.median(t.added99), common.median(t.added50)
    return t
  end
  local instant = rounds(ROUNDS, DURATION)
  -- the same with a provider that takes DELAY_MS per answer (a fast real one)
  curl(common.quote(provider.url .. "/delay?ms=" .. DELAY_MS))
  local delayed = rounds(1, DURATION)
  handler:stop() -- graceful: the writer commits every acknowledged row first
  local log = handler:error_log()
  local store = assert(genaudit.open("sqlite:" .. db, { readonly = true }))
  local rows = store:query("SELECT count(*) AS n, sum(status = 'completed') AS ok FROM generation_snapshots")[1]
  store:close()
  local stored, completed = tonumber(rows.n), tonumber(rows.ok)
  -- wrk counts only the answers it read before its deadline (nginx finishes
  -- and stores the ones in flight), and the warm-up's are not counted: at least
  local errors_logged = select(2, log:gsub("%[error%]", ""))

  local function line(name, t, extra)
    local fields = {
      { "genaudit", med(t.ga, "rps") }, { "baseline", "bare_cosocket:" .. common.num(med(t.bare, "rps")) },
      { "ratio", string.format("%.3f", t.ratio) }, { "target", ">=0.80" },
      { "p99_added_ms", t.p99_added }, { "p50_added_ms", t.p50_added },
      { "genaudit_p99_ms", med(t.ga, "p99_ms") }, { "bare_p99_ms", med(t.bare, "p99_ms") },
      { "genaudit_cpu_us", med(t.ga, "cpu_us") }, { "writer_cpu_us", med(t.ga, "thread_cpu_us") },
      { "bare_cpu_us", med(t.bare, "cpu_us") }, { "cpu_ratio", string.format("%.3f", t.cpu_ratio) },
      { "provider_cpu_us", med(t.ga, "provider_cpu_us") }, { "wrk_cpu_us", med(t.ga, "wrk_cpu_us") },
      { "bare_provider_cpu_us", med(t.bare, "provider_cpu_us") }, { "bare_wrk_cpu_us", med(t.bare, "wrk_cpu_us") },
      { "cpu_all_ratio", string.format("%.3f", t.cpu_all_ratio) },
      { "machine_busy", string.format("%.2f", med(t.ga, "machine_busy")) },
      { "bare_machine_busy", string.format("%.2f", med(t.bare, "machine_busy")) }, { "cores", CORES },
    }
    for _, e in ipairs(extra) do fields[#fields + 1] = e end
    common.bench(name, "req/s", fields)
  end
  line("openresty_load", instant, { { "provider_direct", direct.rps }, { "concurrency", CONCURRENCY },
    { "workers", 1 }, { "rows", stored }, { "bad_answers", bad }, { "errors_logged", errors_logged } })
  line("openresty_load_delay" .. DELAY_MS, delayed,
    { { "provider_delay_ms", DELAY_MS }, { "concurrency", CONCURRENCY } })
  local function detail(label, t)
    for i, g in ipairs(t.ga) do
      local b = t.bare[i]
      common.say("%s %d: genaudit %s req/s (p50 %s ms, p99 %s ms, %d answers, %s us worker CPU each, %s of them in"
        .. " the writer thread; provider %s us, wrk %s us; machine %d%% busy), bare %s req/s (p50 %s ms, p99 %s ms,"
        .. " %s us CPU each; provider %s us, wrk %s us; machine %d%% busy): ratio %.3f", label, i,
        common.num(g.rps), common.num(g.p50_ms), common.num(g.p99_ms), g.requests, common.num(g.cpu_us),
        common.num(g.thread_cpu_us), common.num(g.provider_cpu_us), common.num(g.wrk_cpu_us),
        math.floor(g.machine_busy * 100 + 0.5), common.num(b.rps), common.num(b.p50_ms), common.num(b.p99_ms),
        common.num(b.cpu_us), common.num(b.provider_cpu_us), common.num(b.wrk_cpu_us),
        math.floor(b.machine_busy * 100 + 0.5), t.ratios[i])
    end
  end
  detail("instant provider, round", instant)
  detail("provider taking " .. DELAY_MS .. " ms, round", delayed)
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
tmp.rm(dbdir)
if not ok then error(err, 0) end
