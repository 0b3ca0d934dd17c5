-- spec/nginx_metrics_spec.lua
-- Owns: genaudit's Prometheus metrics inside nginx (lua/genaudit/nginx_metrics.lua,
-- openresty.init_worker's counting and serve_metrics, the /metrics location
-- of examples/openresty/nginx.conf). The example config runs as shipped
-- with two workers against the local provider; generations (repaired ones,
-- failed ones) go through it; its /metrics passes the real `promtool check
-- metrics`, equals `genaudit metrics` over the same store sample for sample
-- and what SQL says; a real Prometheus server scrapes it on loopback and its
-- query API returns the same counters. The counters go on across a
-- reload; a writer held up by a lock shows its queue's depth, and the
-- snapshots its full queue refused are counted. A full shared dict drops
-- updates, counts them and fails no request.
local cjson = require("cjson")
local socket = require("socket")
local http = require("socket.http")
local genaudit = require("genaudit")
local core = require("genaudit.core")
local json = require("genaudit.json")
local provider_server = require("spec.support.provider")
local nginx = require("spec.support.nginx")
local tmp = require("spec.support.tmp")
local util = require("spec.support.util")

local q = util.q
local KEY = "sk-nginx-metrics-0123456789"
local N = 40 -- generations through nginx

-- Runs a shell command (without the ASan preload: promtool and prometheus are
-- Go programs); returns its output (stdout and stderr) and exit code.
local function sh(cmd)
  local p = assert(io.popen("env -u LD_PRELOAD " .. cmd .. " 2>&1; echo \"rc=$?\""))
  local all = p:read("a")
  p:close()
  local out, rc = all:match("^(.*)rc=(%d+)\n$")
  return out, tonumber(rc)
end

local function free_port()
  local s = assert(socket.bind("127.0.0.1", 0))
  local _, port = s:getsockname()
  s:close()
  return tonumber(port)
end

-- GET from nginx: status, lower-cased headers, body.
local function get(port, path)
  local parts = {}
  local _, status, headers = http.request{ url = "http://127.0.0.1:" .. port .. path,
    sink = require("ltn12").sink.table(parts) }
  return status, headers or {}, table.concat(parts)
end

-- name{labels} -> number, for every sample line of an exposition
local function samples(text)
  local out = {}
  for line in text:gmatch("[^\n]+") do
    if not line:find("^#") then
      local k, v = line:match("^(.-) (%S+)$")
      out[k] = tonumber(v) or (v == "+Inf" and math.huge) or v
    end
  end
  return out
end

local function alive(pid)
  local f = io.open("/proc/" .. pid .. "/stat")
  if not f then return false end
  local state = f:read("a"):match("^%d+ %b() (%a)")
  f:close()
  return state ~= nil and state ~= "Z"
end

-- Polls fn() every 0.2 s until it returns a truthy value, for up to `seconds`;
-- returns that value, or nil and the last one seen.
local function poll(seconds, fn)
  local deadline = socket.gettime() + seconds
  local last
  repeat
    local v, seen = fn()
    if v then return v end
    last = seen
    socket.sleep(0.2)
  until socket.gettime() > deadline
  return nil, last
end

local function sum_of(s, prefix)
  local n = 0
  for k, v in pairs(s) do
    if k:sub(1, #prefix) == prefix then n = n + v end
  end
  return n
end

local SHARED = { "genaudit_generations_total", "genaudit_replays_total", "genaudit_cost_usd_total",
  "genaudit_unpriced_generations_total", "genaudit_repairs_total", "genaudit_repair_types_total",
  "genaudit_rule_errors_total", "gen_ai_client_token_usage", "gen_ai_client_operation_duration_seconds",
  "genaudit_generation_duration_seconds" }

local function family_of(series)
  local name = series:match("^[%w_]+")
  for _, f in ipairs(SHARED) do
    if name == f or name == f .. "_bucket" or name == f .. "_sum" or name == f .. "_count" then return f end
  end
  return nil
end

describe("genaudit metrics in nginx #nginx", function()
  local srv, dir, db, server, text, head, rows

  local function paths(n)
    local templates = { "launch-post", "weekly-tips", "event-invite", "customer-story" }
    local out = {}
    for i = 1, n do
      out[i] = ("/generate?org_id=o%d&user_id=%d&template_id=%s&platform=linkedin")
        :format(i % 3, i, i % 10 == 0 and "no-such-template" or templates[i % 4 + 1])
    end
    return out
  end

  setup(function()
    srv = provider_server.start{ api_key = KEY, quiet = true }
    dir = tmp.dir()
    db = dir .. "/audit.db"
    -- every 7th model call refused (400: not retried, a failed generation),
    -- a banned word now and then (a repair); the rest the provider's default
    local script = {}
    for i = 1, 30 do
      if i % 7 == 0 then script[#script + 1] = { status = 400, message = "refused by the spec" }
      elseif i % 5 == 0 then script[#script + 1] = { content = "A synergy launch.\n\n#launch" }
      else script[#script + 1] = {} end
    end
    srv:queue(script)
    local port = free_port()
    server = nginx.start{ port = port, workers = 2, db = db,
      env = { GENAUDIT_API_KEY = KEY, GENAUDIT_BASE_URL = srv.url, GENAUDIT_MODEL = "gpt-4o-mini" },
      -- one connection per request, spread over both workers by the kernel
      -- (SO_REUSEPORT hashes each connection to one worker's socket): without
      -- it, on a busy machine, the worker that wakes first may accept them all
      prepare = function(prefix)
        local conf = tmp.read(prefix .. "/nginx.conf")
        local edited, n = conf:gsub("listen 127%.0%.0%.1:" .. port .. ";",
          "listen 127.0.0.1:" .. port .. " reuseport;\n        keepalive_timeout 0;")
        assert.equal(1, n)
        tmp.write(prefix .. "/nginx.conf", edited)
      end }
    local responses = server:load(paths(N), 8)
    local stored = 0
    for i, r in ipairs(responses) do
      local doc = cjson.decode(r.body)
      assert.is_string(doc.snapshot_id, "request " .. i .. ": " .. tostring(r.body))
      stored = stored + 1
    end
    -- until every worker's writer has committed its rows and published it (each second)
    local written, last = poll(30, function()
      local _, _, body = get(server.port, "/metrics")
      local n = sum_of(samples(body), "genaudit_writer_rows_written_total{")
      return n == stored and body, n
    end)
    assert(written, "the writers published " .. tostring(last) .. " rows written, not " .. stored .. " within 30 s")
    local status
    status, head, text = get(server.port, "/metrics")
    assert.equal(200, status)
    local store = assert(genaudit.open("sqlite:" .. db, { readonly = true }))
    rows = assert(store:query("SELECT * FROM generation_snapshots", {}))
    store:close()
    assert.equal(N, #rows)
  end)

  teardown(function()
    if server then
      server:stop()
      server:cleanup()
    end
    if srv then srv:stop() end
    tmp.rm(dir)
  end)

  it("serves text format 0.0.4 that the real promtool accepts, as it does genaudit metrics'", function()
    assert.equal("text/plain; version=0.0.4; charset=utf-8", head["content-type"])
    tmp.write(dir .. "/nginx.prom", text)
    assert.same({ "", 0 }, { sh("promtool check metrics < " .. q(dir .. "/nginx.prom")) })
    local out, err, rc = util.cli("--db " .. q(db) .. " metrics")
    assert.same({ "", 0 }, { err, rc })
    tmp.write(dir .. "/cli.prom", out)
    assert.same({ "", 0 }, { sh("promtool check metrics < " .. q(dir .. "/cli.prom")) })
    assert.truthy(text:find("# TYPE genaudit_writer_queue_depth gauge\n", 1, true))
    assert.truthy(text:find('le="67108864"}', 1, true))
    assert.is_nil(text:find("org_id", 1, true)) -- no tenant or user labels
    assert.is_nil(text:find('user', 1, true))
  end)

  it("counts what the stored rows say: sample for sample what genaudit metrics computes in SQL", function()
    local live = samples(text)
    local cli = samples((util.cli("--db " .. q(db) .. " metrics")))
    local compared = 0
    for k, v in pairs(cli) do
      if family_of(k) then
        compared = compared + 1
        if k:find("_seconds_sum{", 1, true) then -- summed in integer µs here, in float ms by SQL
          assert.is_true(math.abs(live[k] - v) <= 1e-9 * math.max(1, v), k .. ": " .. tostring(live[k]) .. " vs " .. v)
        else
          assert.equal(v, live[k], k)
        end
      end
    end
    for k in pairs(live) do
      if family_of(k) then assert.is_not_nil(cli[k], "only in nginx: " .. k) end
    end
    assert.is_true(compared > 100, compared)
    -- and straight from the rows: the run had failures, repairs and a cost
    local failed, repairs, pico = 0, 0, {}
    for _, r in ipairs(rows) do
      if r.status == "failed" then failed = failed + 1 end
      repairs = repairs + (r.repair_count or 0)
      if r.estimated_cost_picousd then
        local key = r.template_id .. "|" .. (r.model_identifier or "")
        pico[key] = (pico[key] or 0) + r.estimated_cost_picousd
      end
    end
    assert.is_true(failed >= 4, "failed: " .. failed) -- 4 unknown templates, refused calls
    assert.is_true(repairs > 0)
    assert.equal(N - failed, sum_of(live, 'genaudit_generations_total{status="completed"'))
    assert.equal(failed, sum_of(live, 'genaudit_generations_total{status="failed"'))
    assert.equal(repairs, sum_of(live, "genaudit_repairs_total{"))
    for k, p in pairs(pico) do
      local t, m = k:match("^(.-)|(.*)$")
      assert.equal(core.usd_from_picousd(string.format("%.0f", p)),
        live['genaudit_cost_usd_total{template="' .. t .. '",model="' .. m .. '"}'], k)
    end
    local calls = 0
    for _, r in ipairs(rows) do
      for _, c in ipairs(json.decode(r.token_metrics).calls or {}) do
        if type(c.prompt_tokens) == "number" then calls = calls + 1 end
      end
    end
    assert.equal(calls, sum_of(live, "gen_ai_client_token_usage_count{"
      .. 'gen_ai_operation_name="chat",gen_ai_provider_name="openai",gen_ai_response_model="gpt-4o-mini-2024-07-18",'
      .. 'gen_ai_token_type="input"'))
    assert.equal(0, live.genaudit_metrics_dropped_total)
  end)

  it("sums both workers' figures in one shared dict", function()
    local live = samples(text)
    local w0 = live['genaudit_writer_rows_written_total{worker="0"}']
    local w1 = live['genaudit_writer_rows_written_total{worker="1"}']
    assert.equal(0, live['genaudit_writer_queue_depth{worker="0"}'])
    assert.equal(0, live['genaudit_writer_queue_depth{worker="1"}'])
    assert.equal(0, sum_of(live, "genaudit_writer_rows_failed_total{"))
    -- both workers wrote rows (curl's parallel connections land on both), and
    -- whichever worker answered the scrape counted them all
    assert.is_true(w0 > 0 and w1 > 0, "rows per worker: " .. tostring(w0) .. ", " .. tostring(w1))
    assert.equal(#rows, w0 + w1)
    assert.equal(#rows, sum_of(live, "genaudit_generations_total{"))
  end)

  it("is scraped by a real Prometheus server whose query API returns the same counters", function()
    local pdir = dir .. "/prometheus"
    assert(os.execute("mkdir -p " .. q(pdir .. "/data")))
    tmp.write(pdir .. "/prometheus.yml", table.concat({
      "global:", "  scrape_interval: 1s", "  evaluation_interval: 1s",
      "scrape_configs:", "  - job_name: genaudit", "    metrics_path: /metrics",
      "    static_configs:", "      - targets: ['127.0.0.1:" .. server.port .. "']", "" }, "\n"))
    local checked, rc = sh("promtool check config " .. q(pdir .. "/prometheus.yml"))
    assert.equal(0, rc, checked)
    local port = free_port()
    assert(os.execute(("env -u LD_PRELOAD prometheus --config.file=%s --storage.tsdb.path=%s"
      .. " --web.listen-address=127.0.0.1:%d > %s 2>&1 & echo $! > %s"):format(q(pdir .. "/prometheus.yml"),
      q(pdir .. "/data"), port, q(pdir .. "/log"), q(pdir .. "/pid"))))
    local pid = tonumber(tmp.read(pdir .. "/pid"))
    finally(function()
      os.execute("kill " .. pid .. " 2>/dev/null")
      for _ = 1, 100 do
        if not alive(pid) then break end
        socket.sleep(0.1)
      end
      if alive(pid) then os.execute("kill -KILL " .. pid .. " 2>/dev/null") end
    end)
    -- query -> array of { metric = labels, value = number } (an instant vector) | nil, why
    local function query(expr)
      local body, code = http.request("http://127.0.0.1:" .. port .. "/api/v1/query?query="
        .. expr:gsub("[^%w_]", function(c) return ("%%%02X"):format(c:byte()) end))
      if code ~= 200 then return nil, tostring(code) .. " " .. tostring(body) end
      local out = {}
      for _, r in ipairs(cjson.decode(body).data.result) do
        out[#out + 1] = { metric = r.metric, value = tonumber(r.value[2]) }
      end
      return out
    end
    local function scalar(expr)
      local r = assert(query(expr))
      assert.equal(1, #r, expr)
      return r[1].value
    end
    local live = samples(text)
    local want = sum_of(live, "genaudit_generations_total{")
    local got, last = poll(30, function()
      local r, why = query("sum(genaudit_generations_total)")
      if r and r[1] and r[1].value == want then return r[1].value end
      return nil, why or cjson.encode(r)
    end)
    assert(got, "Prometheus did not return sum(genaudit_generations_total) = " .. want .. " within 30 s (last: "
      .. tostring(last) .. "); its log:\n" .. tmp.read(pdir .. "/log"))
    assert.equal(#rows, got)
    -- per series, as /metrics had them (nothing was generated since); an
    -- empty label value is no label at all to Prometheus
    local function same_series(family, label_names)
      local r = assert(query(family))
      assert.equal(select(2, text:gsub("\n" .. family .. "{", "")), #r, family)
      for _, e in ipairs(r) do
        local l = {}
        for _, name in ipairs(label_names) do
          l[#l + 1] = name .. '="' .. (e.metric[name] or "") .. '"'
        end
        local k = family .. "{" .. table.concat(l, ",") .. "}"
        assert.equal(live[k], e.value, k)
      end
    end
    same_series("genaudit_generations_total", { "status", "template" })
    same_series("genaudit_cost_usd_total", { "template", "model" })
    same_series("genaudit_repairs_total", { "template" })
    same_series("genaudit_writer_queue_depth", { "worker" })
    assert.equal(sum_of(live, "genaudit_repairs_total{"), scalar("sum(genaudit_repairs_total)"))
    assert.equal(#rows, scalar("sum(genaudit_writer_rows_written_total)"))
    assert.equal(sum_of(live, "gen_ai_client_token_usage_sum{"), scalar("sum(gen_ai_client_token_usage_sum)"))
    assert.equal(sum_of(live, "gen_ai_client_token_usage_count{"), scalar("sum(gen_ai_client_token_usage_count)"))
  end)
end)

describe("genaudit metrics in nginx with a full shared dict #nginx", function()
  it("drops the updates that do not fit, counts them, and fails no request", function()
    local srv = provider_server.start{ api_key = KEY, quiet = true }
    local dir = tmp.dir()
    local server = nginx.start{ port = free_port(), workers = 2, db = dir .. "/audit.db",
      env = { GENAUDIT_API_KEY = KEY, GENAUDIT_BASE_URL = srv.url, GENAUDIT_MODEL = "gpt-4o-mini" },
      prepare = function(prefix) -- the example as shipped, its dict cut to the least that still holds a few series
        local conf = tmp.read(prefix .. "/nginx.conf")
        local small, n = conf:gsub("lua_shared_dict genaudit_metrics 1m;", "lua_shared_dict genaudit_metrics 12k;")
        assert.equal(1, n)
        tmp.write(prefix .. "/nginx.conf", small)
      end }
    finally(function()
      server:stop()
      server:cleanup()
      srv:stop()
      tmp.rm(dir)
    end)
    local ps = {}
    for i = 1, 20 do
      local template = ({ "launch-post", "weekly-tips", "event-invite" })[i % 3 + 1]
      ps[i] = ("/generate?user_id=%d&template_id=%s"):format(i, template)
    end
    for i, r in ipairs(server:load(ps, 4)) do assert.equal(200, r.code, "request " .. i .. ": " .. tostring(r.body)) end
    local status, _, body = get(server.port, "/metrics")
    assert.equal(200, status)
    tmp.write(dir .. "/full.prom", body)
    assert.same({ "", 0 }, { sh("promtool check metrics < " .. q(dir .. "/full.prom")) })
    assert.is_true(samples(body).genaudit_metrics_dropped_total > 0, body)
    assert.falsy(server:error_log():find("[error]", 1, true), server:error_log())
  end)
end)

describe("genaudit metrics in nginx across a reload and a held-up writer #nginx", function()
  local srv, dir, server

  local function start(workers, prepare)
    server = nginx.start{ port = free_port(), workers = workers, db = dir .. "/audit.db", prepare = prepare,
      env = { GENAUDIT_API_KEY = KEY, GENAUDIT_BASE_URL = srv.url, GENAUDIT_MODEL = "gpt-4o-mini" } }
    return server
  end

  -- /metrics' samples once cond(samples) holds (bounded: 30 s, then a clear failure)
  local function metrics_when(what, cond)
    local s, last = poll(30, function()
      local _, _, body = get(server.port, "/metrics")
      local sm = samples(body)
      return cond(sm) and sm, body
    end)
    assert(s, "no /metrics with " .. what .. " within 30 s; the last one:\n" .. tostring(last))
    return s
  end

  local function stored()
    local store = assert(genaudit.open("sqlite:" .. dir .. "/audit.db", { readonly = true }))
    local n = store:query("SELECT count(*) AS n FROM generation_snapshots", {})[1].n
    store:close()
    return n
  end

  before_each(function()
    srv = provider_server.start{ api_key = KEY, quiet = true }
    dir = tmp.dir()
  end)
  after_each(function()
    if server then
      server:stop()
      server:cleanup()
      server = nil
    end
    srv:stop()
    tmp.rm(dir)
  end)

  local function requests(n, offset)
    local ps = {}
    for i = 1, n do ps[i] = "/generate?user_id=" .. (i + (offset or 0)) end
    return ps
  end

  it("keeps counting across nginx -s reload (the dict outlives the workers)", function()
    start(2)
    for _, r in ipairs(server:load(requests(10), 4)) do assert.equal(200, r.code, r.body) end
    metrics_when("10 rows written", function(sm) return sum_of(sm, "genaudit_writer_rows_written_total{") == 10 end)
    server:reload()
    for _, r in ipairs(server:load(requests(10, 10), 4)) do assert.equal(200, r.code, r.body) end
    local sm = metrics_when("20 rows written",
      function(m) return sum_of(m, "genaudit_writer_rows_written_total{") == 20 end)
    assert.equal(20, stored())
    assert.equal(20, sm['genaudit_generations_total{status="completed",template="launch-post"}'])
    local cli = samples((util.cli("--db " .. q(dir .. "/audit.db") .. " metrics")))
    for k, v in pairs(cli) do
      if family_of(k) and not k:find("_seconds_sum{", 1, true) then assert.equal(v, sm[k], k) end
    end
    assert.truthy(server:error_log():find("reconfiguring", 1, true))
  end)

  it("shows a held-up writer's queue depth and counts the snapshots its full queue refused", function()
    start(1, function(prefix) -- the example as shipped, its queue cut to 3 rows
      local conf = tmp.read(prefix .. "/nginx.conf")
      local small, n = conf:gsub("queue = 20000,", "queue = 3,")
      assert.equal(1, n)
      tmp.write(prefix .. "/nginx.conf", small)
    end)
    assert.equal(200, server:load(requests(1), 1)[1].code)
    metrics_when("1 row written", function(sm) return sm['genaudit_writer_rows_written_total{worker="0"}'] == 1 end)
    -- another process holds SQLite's write lock until the fifo is written
    local db, ready, fifo = dir .. "/audit.db", dir .. "/locked", dir .. "/release"
    assert(os.execute("mkfifo " .. q(fifo)))
    assert(os.execute(("(echo 'BEGIN IMMEDIATE;'; echo '.shell touch %s'; cat %s; echo 'COMMIT;') | sqlite3 %s"
      .. " > /dev/null 2>&1 &"):format(q(ready), q(fifo), q(db))))
    assert(poll(30, function()
      local f = io.open(ready)
      if f then f:close() end
      return f ~= nil
    end), "sqlite3 did not take the lock")
    local released = false
    local function release()
      if released then return end
      released = true
      local f = assert(io.open(fifo, "w")) -- cat reads EOF: sqlite3 commits and exits
      f:close()
    end
    finally(release)
    local responses = server:load(requests(10, 1), 1)
    local ok, refused = 0, 0
    for _, r in ipairs(responses) do
      if r.code == 200 then ok = ok + 1
      else
        assert.same({ 500, "INTERNAL" }, { r.code, cjson.decode(r.body).code })
        refused = refused + 1
      end
    end
    assert.same({ 3, 7 }, { ok, refused }) -- the queue holds 3; the writer cannot commit them
    local sm = metrics_when("the queue at 3", function(m) return m['genaudit_writer_queue_depth{worker="0"}'] == 3 end)
    assert.equal(refused, sm['genaudit_persist_failures_total{code="FULL"}'])
    assert.equal(1, sm['genaudit_writer_rows_written_total{worker="0"}'])
    release()
    sm = metrics_when("4 rows written, the queue empty", function(m)
      return m['genaudit_writer_rows_written_total{worker="0"}'] == 4
        and m['genaudit_writer_queue_depth{worker="0"}'] == 0
    end)
    assert.equal(4, stored())
    assert.equal(4, sm['genaudit_generations_total{status="completed",template="launch-post"}']) -- persisted ones only
    assert.equal(0, sm['genaudit_writer_rows_failed_total{worker="0"}'])
    assert.truthy(server:error_log():find("FULL: ", 1, true))
  end)
end)
