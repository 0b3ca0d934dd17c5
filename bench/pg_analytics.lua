-- bench/pg_analytics.lua — issue 16.3 and 16.4 on PostgreSQL: the reports at
-- 1,000,000 snapshots against the bare SQL giving the same answer, as
-- bench/analytics.lua does on SQLite.
--
-- The store: a database created on $GENAUDIT_PG_URL's server and migrated by
-- genaudit.open (genaudit's own schema, triggers and indexes), then filled
-- with the rows of bench/gen_rows.c (realistic, sealed: see its header),
-- written into a SQLite store first (or BENCH_ANALYTICS_DB, the store
-- bench/analytics.lua uses) and streamed over with `sqlite3 -csv | psql COPY`:
-- every stored column as it is (created_at, chain_seq, prev_hash,
-- record_hash...), the chain's row in `chains` too, so the store verifies.
-- The generated columns are computed by PostgreSQL as genaudit's own writes
-- get them. The fill session uses lz4 TOAST compression (faster to write than
-- the default pglz; a setting of the server, not of the schema). Then
-- VACUUM (ANALYZE), as autovacuum does after a bulk insert (so that it does
-- not run during the timings: until the visibility map is set, every
-- index-only scan visits the heap), and, each a
-- median of warm runs through store:query (the same prepared, read-only path
-- the reports take):
--   pg_analytics_cost           report.cost{template=T} against bare SQL
--                               (count, sum, percentile_disc) for T
--   pg_analytics_cost_all       report.cost{} (every template) against the
--                               same bare SQL grouped by template
--   pg_analytics_repairs        report.repairs{top=3, since=7d} against bare
--                               SQL (the top 3, then their repair types)
--   pg_analytics_latency        report.latency{by=model} against bare SQL
--                               (percentile_disc of total, provider,
--                               overhead, time to first token)
-- each with the floor: the same rows aggregated without percentiles (or
-- repair types). Every answer is checked equal to its bare SQL's first.
-- BENCH_PG_ANALYTICS_URL names a store to keep: filled when it is empty,
-- reused as it is when it holds rows (no other database is created then);
-- without it a throwaway database is created and dropped at the end.
-- BENCH_SIZE=small: 2,000 rows, and the store is verified (store:verify()).
local root = (arg and arg[0] or ""):match("^(.*)/bench/[^/]*$") or "."
package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
package.cpath = root .. "/build/" .. (rawget(_G, "jit") and "luajit" or "lua54") .. "/?.so;" .. package.cpath

local common = require("bench.common")
local core = require("genaudit.core")
local genaudit = require("genaudit")
local report = require("genaudit.report")

local N = common.size{ small = 2000, full = 1000000 }
local RUNS = common.size{ small = 3, full = 7 }
local LRUNS = common.size{ small = 3, full = 3 } -- latency: full scans
local TEMPLATE = "template-07"
local now = common.now_us

local BASE = os.getenv("GENAUDIT_PG_URL")
if not BASE or BASE == "" then
  io.stderr:write("bench/pg_analytics.lua: GENAUDIT_PG_URL is not set (sh bench/run.sh starts a throwaway server;"
    .. " or GENAUDIT_PG_URL=$(sh tools/pg-test-server.sh start))\n")
  os.exit(1)
end

-- ---- the bare SQL (PostgreSQL 15's built-ins), the same answers ----
local COUNTED = "status = 'completed' AND replay_of IS NULL"
local PCT = "percentile_disc(ARRAY[0.5, 0.95]::float8[]) WITHIN GROUP (ORDER BY estimated_cost_picousd)"
local BARE_COST = "SELECT count(*) AS posts, count(estimated_cost_picousd) AS priced, CAST(sum(estimated_cost_picousd)"
  .. " AS text) AS total, sum(total_tokens) AS tokens, CAST(" .. PCT .. " AS text) AS pcts"
  .. " FROM generation_snapshots WHERE template_id = ? AND " .. COUNTED
local FLOOR_COST = "SELECT count(*) AS posts, count(estimated_cost_picousd) AS priced, CAST(sum(estimated_cost_picousd)"
  .. " AS text) AS total, sum(total_tokens) AS tokens FROM generation_snapshots WHERE template_id = ? AND " .. COUNTED
local BARE_COST_ALL = "SELECT template_id, count(*) AS posts, count(estimated_cost_picousd) AS priced,"
  .. " CAST(sum(estimated_cost_picousd) AS text) AS total, sum(total_tokens) AS tokens, CAST(" .. PCT .. " AS text)"
  .. " AS pcts FROM generation_snapshots WHERE " .. COUNTED
  .. " GROUP BY template_id ORDER BY sum(estimated_cost_picousd) DESC NULLS LAST, template_id"
local FLOOR_COST_ALL = "SELECT template_id, count(*) AS posts, count(estimated_cost_picousd) AS priced,"
  .. " CAST(sum(estimated_cost_picousd) AS text) AS total, sum(total_tokens) AS tokens FROM generation_snapshots"
  .. " WHERE " .. COUNTED .. " GROUP BY template_id"
local SINCE7 = "created_at >= now() - interval '7 days'"
local TOP3 = "SELECT template_id, sum(repair_count) AS repairs, count(*) AS posts,"
  .. " count(CASE WHEN repair_count > 0 THEN 1 END) AS repaired, avg(initial_validation_score) AS score"
  .. " FROM generation_snapshots WHERE " .. SINCE7 .. " AND " .. COUNTED
  .. " GROUP BY template_id ORDER BY repairs DESC, template_id LIMIT 3"
local BARE_REPAIRS = "WITH top AS MATERIALIZED (" .. TOP3 .. ")"
  .. " SELECT t.template_id, t.repairs, t.posts, t.repaired, t.score, j.slug, count(j.slug) AS n FROM top t"
  .. " LEFT JOIN generation_snapshots b ON b.template_id = t.template_id AND b." .. SINCE7
  .. " AND b.status = 'completed' AND b.replay_of IS NULL AND b.repair_count > 0"
  .. " LEFT JOIN LATERAL json_array_elements_text(b.repair_metrics -> 'repair_types') AS j(slug) ON true"
  .. " GROUP BY t.template_id, t.repairs, t.posts, t.repaired, t.score, j.slug"
local TTFT = "CASE WHEN json_typeof(performance_metrics -> 'time_to_first_token_ms') = 'number'"
  .. " THEN (performance_metrics ->> 'time_to_first_token_ms')::float8 END"
local LAT_ARR = "ARRAY[0.5, 0.95, 0.99]::float8[]"
local BARE_LATENCY = "SELECT model_identifier AS g, count(*) AS posts,"
  .. " CAST(percentile_disc(" .. LAT_ARR .. ") WITHIN GROUP (ORDER BY total_latency_ms) AS text) AS t,"
  .. " CAST(percentile_disc(" .. LAT_ARR .. ") WITHIN GROUP (ORDER BY provider_latency_ms) AS text) AS p,"
  .. " CAST(percentile_disc(" .. LAT_ARR .. ") WITHIN GROUP (ORDER BY total_latency_ms - provider_latency_ms)"
  .. " AS text) AS o, CAST(percentile_disc(" .. LAT_ARR .. ") WITHIN GROUP (ORDER BY " .. TTFT .. ") AS text) AS f"
  .. " FROM generation_snapshots WHERE " .. COUNTED .. " GROUP BY model_identifier ORDER BY model_identifier"
local FLOOR_LATENCY = "SELECT model_identifier AS g, count(*) AS posts, sum(total_latency_ms) AS t,"
  .. " sum(provider_latency_ms) AS p, sum(total_latency_ms - provider_latency_ms) AS o, sum(" .. TTFT .. ") AS f"
  .. " FROM generation_snapshots WHERE " .. COUNTED .. " GROUP BY model_identifier"

-- ---- the store ----

local function url_of(name)
  local u, n = BASE:gsub("/[^/?]*(%??[^/]*)$", "/" .. name .. "%1", 1)
  assert(n == 1, "cannot tell the database in GENAUDIT_PG_URL")
  return u
end

local function psql(url, sql, stdin_cmd)
  local cmd = "psql -X -q -v ON_ERROR_STOP=1 " .. common.quote(url) .. " -c " .. common.quote(sql) .. " 2>&1"
  if stdin_cmd then
    cmd = stdin_cmd .. " | psql -X -q -v ON_ERROR_STOP=1 " .. common.quote(url)
      .. " -c 'SET TimeZone TO ''UTC''' -c \"SET default_toast_compression TO 'lz4'\" -c " .. common.quote(sql)
      .. " 2>&1"
  end
  return common.run(cmd)
end

local function count(store)
  return assert(store:query("SELECT count(*) AS n FROM generation_snapshots", {}))[1].n
end

local made -- the throwaway database's name, dropped at the end

-- A SQLite store of N rows from gen_rows (BENCH_ANALYTICS_DB when it holds
-- them): its path.
local function sqlite_source(dir)
  local db = os.getenv("BENCH_ANALYTICS_DB")
  if db and db ~= "" and common.file_size(db) > 0 then return db end
  db = dir .. "/source.db"
  assert(genaudit.open("sqlite:" .. db)):close()
  common.run(table.concat({ common.tool("gen_rows"), common.quote(db), string.format("%d", N) }, " "))
  return db
end

-- Fills the empty store at url from SQLite store src; returns rows, seconds.
local function fill(url, src)
  local s = assert(genaudit.open(url, { migrate = false }))
  -- the stored (not generated) columns, as the destination names them
  local cols = {}
  for _, r in ipairs(assert(s:query("SELECT attname AS name FROM pg_attribute WHERE attrelid ="
    .. " 'generation_snapshots'::regclass AND attnum > 0 AND NOT attisdropped AND attgenerated = ''"
    .. " ORDER BY attnum", {}))) do
    cols[#cols + 1] = r.name
  end
  s:close()
  local list = table.concat(cols, ", ")
  local function dump(sql) return "sqlite3 -bail -csv " .. common.quote(src) .. " " .. common.quote(sql) end
  local t0 = now()
  psql(url, "COPY chains (chain_id, started_at, host, pid) FROM STDIN (FORMAT csv)",
    dump("SELECT chain_id, started_at, host, pid FROM chains"))
  psql(url, "COPY generation_snapshots (" .. list .. ") FROM STDIN (FORMAT csv)",
    dump("SELECT " .. list .. " FROM generation_snapshots ORDER BY id"))
  local secs = (now() - t0) / 1e6
  psql(url, "VACUUM (ANALYZE) generation_snapshots")
  return secs
end

-- ---- timing ----

local function time_ms(runs, fn)
  fn()
  local t = {}
  for i = 1, runs do
    local t0 = now()
    fn()
    t[i] = (now() - t0) / 1000
  end
  return common.median(t)
end

-- "{a,b}" (a PostgreSQL array as text) -> { "a", "b" } (NULL elements: false)
local function pg_array(s)
  local out = {}
  if s == nil then return out end
  for part in tostring(s):gsub("^{", ""):gsub("}$", ""):gmatch("[^,]+") do
    out[#out + 1] = part ~= "NULL" and part
  end
  return out
end

local function usd(pico) if pico then return core.usd_from_picousd(pico) end end

local function same(a, b, what)
  if a ~= b then error(string.format("report and bare SQL disagree on %s: %s vs %s", what, tostring(a),
    tostring(b)), 2) end
end
local function close_to(a, b, what) -- averages: a sum in another order, the last digit
  if a == b then return end
  if a == nil or b == nil or math.abs(a - b) > 1e-12 * math.max(math.abs(a), math.abs(b)) then
    error(string.format("report and bare SQL disagree on %s: %s vs %s", what, tostring(a), tostring(b)), 2)
  end
end

local function check_cost(rep, bare, label)
  same(#rep.rows, #bare, label .. " row count")
  for i, b in ipairs(bare) do
    local r, pc = rep.rows[i], pg_array(b.pcts)
    local tag = label .. " " .. tostring(b.template_id or TEMPLATE)
    if b.template_id then same(r.template_id, b.template_id, tag .. " template") end
    same(r.posts, b.posts, tag .. " posts")
    same(r.priced_posts, b.priced, tag .. " priced_posts")
    same(r.total_cost, usd(b.total), tag .. " total_cost")
    same(r.p50_cost, usd(pc[1]), tag .. " p50_cost")
    same(r.p95_cost, usd(pc[2]), tag .. " p95_cost")
    same(r.total_tokens, b.tokens, tag .. " total_tokens")
  end
end

local function check_repairs(rep, bare)
  local want, order = {}, {}
  for _, b in ipairs(bare) do
    local t = want[b.template_id]
    if not t then
      t = { b = b, types = {}, list = {} }
      want[b.template_id] = t
      order[#order + 1] = t
    end
    if b.slug then t.list[#t.list + 1] = { b.slug, b.n } end
  end
  table.sort(order, function(x, y)
    if x.b.repairs ~= y.b.repairs then return x.b.repairs > y.b.repairs end
    return x.b.template_id < y.b.template_id
  end)
  same(#rep.rows, #order, "repairs row count")
  for i, t in ipairs(order) do
    local r = rep.rows[i]
    same(r.template_id, t.b.template_id, "repairs template #" .. i)
    same(r.repairs, t.b.repairs, "repairs of " .. r.template_id)
    same(r.posts, t.b.posts, "posts of " .. r.template_id)
    same(r.repaired_posts, t.b.repaired, "repaired_posts of " .. r.template_id)
    close_to(r.avg_initial_score, t.b.score, "avg_initial_score of " .. r.template_id)
    table.sort(t.list, function(x, y) if x[2] ~= y[2] then return x[2] > y[2] end return x[1] < y[1] end)
    local n = 0
    for k = 1, math.min(3, #t.list) do
      same(r.top_repair_types[t.list[k][1]], t.list[k][2], "repair type " .. t.list[k][1] .. " of " .. r.template_id)
      n = n + 1
    end
    for _ in pairs(r.top_repair_types) do n = n - 1 end
    same(n, 0, "the number of repair types of " .. r.template_id)
  end
end

local function check_latency(rep, bare)
  same(#rep.rows, #bare, "latency row count")
  local names = { t = "total", p = "provider", o = "overhead", f = "ttft" }
  for i, b in ipairs(bare) do
    local r = rep.rows[i]
    same(r.model_identifier, b.g, "latency model #" .. i)
    same(r.posts, b.posts, "latency posts of " .. b.g)
    for k, name in pairs(names) do
      local pc = pg_array(b[k])
      for j, p in ipairs({ 50, 95, 99 }) do
        local col = "p" .. p .. "_" .. name .. "_ms"
        same(r[col], pc[j] and tonumber(pc[j]) or nil, col .. " of " .. b.g)
      end
    end
  end
end

-- ---- main ----

local function main()
  common.title(string.format("PostgreSQL analytics at %d snapshots: the reports against bare SQL", N))
  local dir = common.tmpdir("pg_analytics")
  local url = os.getenv("BENCH_PG_ANALYTICS_URL")
  if not url or url == "" then
    math.randomseed(os.time() + math.floor(os.clock() * 1e6))
    made = string.format("gabench_pga_%d_%d", os.time() % 100000, math.random(1, 99999))
    psql(BASE, "CREATE DATABASE " .. made)
    url = url_of(made)
  end
  local store = assert(genaudit.open(url)) -- migrates a new store
  local rows = count(store)
  store:close()
  local filled = false
  if rows == 0 then
    local src = sqlite_source(dir)
    local secs = fill(url, src)
    store = assert(genaudit.open(url))
    rows = count(store)
    store:close()
    local want = assert(genaudit.open("sqlite:" .. src, { readonly = true }))
    local src_rows = count(want)
    want:close()
    assert(rows == src_rows, string.format("COPY wrote %d rows of %d", rows, src_rows))
    common.bench("pg_analytics_fill", "rows/s", { { "genaudit", rows / secs }, { "rows", rows },
      { "baseline", "requested:" .. N }, { "ratio", rows / N }, { "target", "info" } })
    common.say("filled %s: %d rows in %.1f s (sqlite3 -csv | psql COPY, then VACUUM (ANALYZE))",
      (url:gsub("//[^@/]*@", "//")), rows, secs)
    filled = true
  else
    common.say("reusing %s: %d rows", (url:gsub("//[^@/]*@", "//")), rows)
  end
  store = assert(genaudit.open(url))
  if common.small and filled then
    local v = assert(store:verify())
    assert(v.ok and v.rows == rows, "the filled store does not verify: "
      .. tostring(v.problems[1] and v.problems[1].what))
    common.say("store:verify(): ok, %d rows, %d chain(s)", v.rows, v.chains)
  end
  local size = assert(store:query("SELECT pg_total_relation_size('generation_snapshots') AS b", {}))[1].b

  -- the answers agree (before any timing)
  check_cost(assert(report.cost(store, { template = TEMPLATE })), assert(store:query(BARE_COST, { TEMPLATE })),
    "cost")
  check_cost(assert(report.cost(store, {})), assert(store:query(BARE_COST_ALL, {})), "cost (all)")
  check_repairs(assert(report.repairs(store, { top = 3, since = "7d" })), assert(store:query(BARE_REPAIRS, {})))
  check_latency(assert(report.latency(store, { by = "model" })), assert(store:query(BARE_LATENCY, {})))
  common.say("every report's answer equals its bare SQL's")

  local r = {}
  r.cost = time_ms(RUNS, function() assert(report.cost(store, { template = TEMPLATE })) end)
  r.bare_cost = time_ms(RUNS, function() assert(store:query(BARE_COST, { TEMPLATE })) end)
  r.floor_cost = time_ms(RUNS, function() assert(store:query(FLOOR_COST, { TEMPLATE })) end)
  r.cost_all = time_ms(RUNS, function() assert(report.cost(store, {})) end)
  r.bare_cost_all = time_ms(RUNS, function() assert(store:query(BARE_COST_ALL, {})) end)
  r.floor_cost_all = time_ms(RUNS, function() assert(store:query(FLOOR_COST_ALL, {})) end)
  r.repairs = time_ms(RUNS, function() assert(report.repairs(store, { top = 3, since = "7d" })) end)
  r.bare_repairs = time_ms(RUNS, function() assert(store:query(BARE_REPAIRS, {})) end)
  r.floor_repairs = time_ms(RUNS, function() assert(store:query(TOP3, {})) end)
  r.latency = time_ms(LRUNS, function() assert(report.latency(store, { by = "model" })) end)
  r.bare_latency = time_ms(LRUNS, function() assert(store:query(BARE_LATENCY, {})) end)
  r.floor_latency = time_ms(LRUNS, function() assert(store:query(FLOOR_LATENCY, {})) end)
  store:close()

  local function line(name, key, floor_label)
    common.bench(name, "ms", {
      { "genaudit", r[key] }, { "baseline", "bare_sql_same_answer:" .. common.num(r["bare_" .. key]) },
      { "ratio", string.format("%.3f", r[key] / r["bare_" .. key]) }, { floor_label, r["floor_" .. key] },
      { "ratio_to_floor", string.format("%.3f", r[key] / r["floor_" .. key]) }, { "rows", rows }, { "target", "<=2" },
    })
  end
  line("pg_analytics_cost", "cost", "floor_no_percentiles")
  line("pg_analytics_cost_all", "cost_all", "floor_no_percentiles")
  line("pg_analytics_repairs", "repairs", "floor_no_types")
  line("pg_analytics_latency", "latency", "floor_no_percentiles")
  common.say("%d rows, generation_snapshots %.2f GB with its TOAST and indexes; ms, median of warm runs (%d, latency"
    .. " %d)", rows, size / 1e9, RUNS, LRUNS)
  common.say("%-36s %10s %10s %10s", "", "report", "bare SQL", "floor")
  for _, k in ipairs({ { "cost, template " .. TEMPLATE, "cost" }, { "cost, every template", "cost_all" },
                       { "repairs top 3, 7 days", "repairs" }, { "latency by model", "latency" } }) do
    common.say("%-36s %10.2f %10.2f %10.2f", k[1], r[k[2]], r["bare_" .. k[2]], r["floor_" .. k[2]])
  end
  common.rm(dir)
end

local ok, err = pcall(main)
if made then pcall(psql, BASE, "DROP DATABASE IF EXISTS " .. made .. " WITH (FORCE)") end
if not ok then
  io.stderr:write("bench/pg_analytics.lua: " .. tostring(err) .. "\n")
  os.exit(1)
end
